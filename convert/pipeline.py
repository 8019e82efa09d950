"""Checkpoint -> ONNX -> onnx2tf -> TFLite -> verified bundle.

    python -m convert --checkpoint runs/comp4/best.pt --data data/comp4-demo --out build/comp4

Each step is checked before the next: the ONNX model against PyTorch in onnxruntime, every
TFLite file for builtin ops only (a Flex or custom op is refused by name), then each precision
against PyTorch on golden vectors (held-out audio with a knob sweep) through the device's own
runner. onnx2tf runs in a subprocess with a time limit. The bundle is written atomically.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from device.bundle import Manifest, ModelEntry, TensorInfo, load_bundle, write_bundle
from device.engine import StepRunner
from device.knobspec import KnobSpec
from training.data import PairSet
from training.effects import get_effect
from training.model import SignalTrainPi, StepModel
from training.train import load_checkpoint

# what the on-device self-test must meet, per precision (SNR of the TFLite output vs PyTorch)
TOLERANCES = {"float32": {"snr_db_min": 90.0}, "float16": {"snr_db_min": 55.0}}
ONNX2TF_TIMEOUT_S = 600


class ConversionError(Exception):
    pass


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    err = float(np.sum((out.astype(np.float64) - ref) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)


def esr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.sum((out.astype(np.float64) - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-12))


def golden_vectors(model: SignalTrainPi, knobs: list[KnobSpec], effect_name: str, data: Path, seconds: float = 3.0,
                   seed: int = 7) -> dict:
    """Held-out test audio (a Test-split source, never trained on) with a knob sweep: every knob
    moves through its range at its own rate. The reference is the PyTorch offline model with
    per-hop knobs, which equals the streaming form to float precision."""
    cfg = model.cfg
    test = PairSet(data, "Test")
    longest = int(np.argmax([np.mean(x ** 2) for x in test.x]))  # the loudest test item: the effect is audible
    n = min(int(seconds * cfg.sample_rate), int(test.lengths[longest])) // cfg.hop * cfg.hop
    x = test.x[longest][:n].astype(np.float32)
    n_hops = n // cfg.hop
    t = np.linspace(0, 1, n_hops)
    rng = np.random.default_rng(seed)
    pos = np.stack([0.5 + 0.45 * np.sin(2 * np.pi * (j + 1) * 0.5 * t + rng.uniform(0, 6.28)) for j in range(len(knobs))], 1)
    values = np.array([[k.from_normalized(p) for k, p in zip(knobs, row)] for row in pos])
    pos = np.array([[k.to_normalized(v) for k, v in zip(knobs, row)] for row in values], np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None], torch.from_numpy(pos)[None])[0].numpy()
    target = get_effect(effect_name).render_automation(x, cfg.sample_rate, values, cfg.hop)
    return {"input": x, "knob_values": values.astype(np.float32), "knob_positions": pos, "expected": ref.astype(np.float32),
            "target": target.astype(np.float32), "source": np.array(str(test.pairs[longest].input.name))}


def export_onnx(step: StepModel, path: Path, n_knobs: int) -> None:
    cfg = step.m.cfg
    args = (torch.zeros(1, cfg.hop), torch.full((1, n_knobs), 0.5), step.initial_state())
    torch.onnx.export(step, args, str(path), input_names=["audio", "knobs", "state"], output_names=["audio_out", "state_out"],
                      opset_version=17, dynamo=False)


def check_onnx(step: StepModel, path: Path, golden: dict, hops: int = 200) -> float:
    """Run the ONNX step model in onnxruntime over the first hops of the golden input; -> SNR vs PyTorch."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    H = step.m.cfg.hop
    state = np.zeros((1, step.state_size), np.float32)
    outs = []
    for t in range(min(hops, len(golden["knob_positions"]))):
        y, state = sess.run(None, {"audio": golden["input"][None, t * H:(t + 1) * H], "knobs": golden["knob_positions"][None, t],
                                   "state": state})
        outs.append(y[0])
    out = np.concatenate(outs)
    return snr_db(golden["expected"][: len(out)], out)


def run_onnx2tf(onnx_path: Path, out_dir: Path, log=print) -> dict[str, Path]:
    """onnx2tf in a subprocess (it can abort or hang): -> {"float32": path, "float16": path}."""
    work = out_dir / "onnx2tf"
    shutil.rmtree(work, ignore_errors=True)
    src = work / "model.onnx"  # onnx2tf overwrites its input with a simplified model: give it a copy
    work.mkdir(parents=True)
    shutil.copyfile(onnx_path, src)
    exe = Path(sys.executable).with_name("onnx2tf")
    cmd = [str(exe) if exe.exists() else "onnx2tf", "-i", str(src), "-o", str(work / "tf"), "-n"]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=ONNX2TF_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"onnx2tf did not finish within {ONNX2TF_TIMEOUT_S} s on {onnx_path}") from None
    (work / "onnx2tf.log").write_text(p.stdout + p.stderr)
    files = {"float32": work / "tf" / "model_float32.tflite", "float16": work / "tf" / "model_float16.tflite"}
    missing = [str(f) for f in files.values() if not f.exists()]
    if p.returncode != 0 or missing:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
        raise ConversionError(f"onnx2tf failed (exit {p.returncode}, missing {missing}); log {work / 'onnx2tf.log'}:\n{tail}")
    log(f"onnx2tf: float32 + float16 in {time.time() - t0:.0f} s")
    return files


def tflite_ops(path: Path) -> list[tuple[str, bool]]:
    """(op name, is builtin) for every operator code in a .tflite flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            ops.append(((oc.CustomCode() or b"?").decode(), False))
        else:
            ops.append((names.get(code, str(code)), True))
    return ops


def check_builtin_only(path: Path) -> None:
    bad = [name for name, builtin in tflite_ops(path) if not builtin]
    if bad:
        raise ConversionError(f"{path}: non-builtin op(s) {bad} (Flex/custom ops cannot run on the box); "
                              "replace the PyTorch op that produced them")


def io_tensors(path: Path, hop: int, n_knobs: int, state_size: int) -> tuple[dict, dict]:
    """Find the step model's tensors by name (inputs) and shape (outputs) in a converted file."""
    from device.engine import make_interpreter
    it = make_interpreter(path)
    ins, outs = {}, {}
    for d in it.get_input_details():
        role = next((r for r in ("audio", "knobs", "state") if d["name"] in (r, f"serving_default_{r}:0")), None)
        if role is None:
            raise ConversionError(f"{path}: unexpected input tensor {d['name']!r}")
        ins[role] = TensorInfo(d["name"], [int(s) for s in d["shape"]], np.dtype(d["dtype"]).name)
    for d in it.get_output_details():
        shape = [int(s) for s in d["shape"]]
        role = "audio" if shape == [1, hop] else "state" if shape == [1, state_size] else None
        if role is None or role in outs:
            raise ConversionError(f"{path}: cannot tell which output {d['name']!r} {shape} is")
        outs[role] = TensorInfo(d["name"], shape, np.dtype(d["dtype"]).name)
    return ins, outs


def convert(checkpoint: Path, data: Path, out: Path, report: Path | None = None, log=print) -> Path:
    t0 = time.time()
    model, ck = load_checkpoint(checkpoint)
    cfg = model.cfg
    knobs = [KnobSpec.from_dict(k) for k in ck["knobs"]]
    step = StepModel(model).eval()
    work = out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    golden = golden_vectors(model, knobs, ck["effect"], data)
    np.savez(work / "golden.npz", **golden)
    onnx_path = work / "step.onnx"
    export_onnx(step, onnx_path, len(knobs))
    onnx_snr = check_onnx(step, onnx_path, golden)
    log(f"ONNX (onnxruntime) vs PyTorch: {onnx_snr:.1f} dB SNR")
    if onnx_snr < 90:
        raise ConversionError(f"{onnx_path}: ONNX output differs from PyTorch ({onnx_snr:.1f} dB < 90 dB)")
    tfl = run_onnx2tf(onnx_path, work, log)
    models, files, card = {}, {"golden.npz": work / "golden.npz"}, []
    for prec, path in tfl.items():
        check_builtin_only(path)
        ins, outs = io_tensors(path, cfg.hop, len(knobs), step.state_size)
        name = f"step_{prec}.tflite"
        files[name] = path
        models[prec] = ModelEntry(prec, name, ins, outs, quantization={"weights": prec, "activations": "float32", "io": "float32"})
    manifest = Manifest(
        effect=ck["effect"], description=get_effect(ck["effect"]).description, knobs=knobs, sample_rate=cfg.sample_rate,
        hop=cfg.hop, latency_samples=cfg.latency_samples, state_size=step.state_size, state_layout=step.layout,
        models=models, default_precision="float32", files={}, tolerances={p: TOLERANCES[p] for p in models},
        golden={"file": "golden.npz", "seconds": len(golden["input"]) / cfg.sample_rate, "source": str(golden["source"])},
        training={"model_config": cfg.to_dict(), "metrics": ck.get("metrics", {}), "checkpoint": str(checkpoint)})
    if report and Path(report).exists():
        manifest.training["evaluation"] = json.loads(Path(report).read_text()).get("summary", {})
    # verify every precision through the device's runner before the bundle is written for real
    staged = write_bundle(work / "staged", manifest, files, archive=False)
    bundle = load_bundle(staged)
    results = {}
    for prec in models:
        runner = StepRunner(bundle, prec)
        t1 = time.perf_counter()
        outs = [runner.step(golden["input"][t * cfg.hop:(t + 1) * cfg.hop], golden["knob_positions"][t]).copy()
                for t in range(len(golden["knob_positions"]))]
        per_hop_ms = 1000 * (time.perf_counter() - t1) / len(outs)
        y = np.concatenate(outs)
        results[prec] = {"snr_db_vs_pytorch": round(snr_db(golden["expected"], y), 2),
                         "max_abs_err": float(np.abs(y - golden["expected"]).max()),
                         "esr_vs_target": round(esr(golden["target"], y), 5),
                         "size_kib": round(path_size(files[models[prec].file]) / 1024, 1),
                         "per_hop_ms_host": round(per_hop_ms, 4)}
        models[prec].verified = results[prec]
        floor = TOLERANCES[prec]["snr_db_min"]
        log(f"TFLite {prec:<8} vs PyTorch: {results[prec]['snr_db_vs_pytorch']:.1f} dB SNR (need {floor:g}), "
            f"ESR vs target {results[prec]['esr_vs_target']:.4f}, {results[prec]['size_kib']:.0f} KiB, "
            f"{per_hop_ms:.3f} ms/hop")
        if results[prec]["snr_db_vs_pytorch"] < floor:
            raise ConversionError(f"{files[models[prec].file]}: {prec} SNR {results[prec]['snr_db_vs_pytorch']:.1f} dB "
                                  f"is below the {floor:g} dB this precision must meet")
    manifest.training["pytorch_esr_vs_target_golden"] = round(esr(golden["target"], golden["expected"]), 5)
    manifest.training["onnx_snr_db"] = round(onnx_snr, 1)
    dest = write_bundle(out, manifest, files, archive=True)
    shutil.rmtree(staged, ignore_errors=True)
    (out.parent / f"{out.name}.conversion.json").write_text(json.dumps({"onnx_snr_db": onnx_snr, "precisions": results}, indent=1))
    log(f"bundle {dest} and {dest.with_suffix('.pedal')} written in {time.time() - t0:.0f} s")
    return dest


def path_size(p: Path) -> int:
    return Path(p).stat().st_size


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="dataset dir (golden vectors come from its Test split)")
    ap.add_argument("--out", type=Path, required=True, help="bundle directory to write (and OUT.pedal)")
    ap.add_argument("--report", type=Path, default=None, help="evaluation report (JSON) whose summary goes into the manifest")
    a = ap.parse_args(argv)
    try:
        convert(a.checkpoint, a.data, a.out, a.report)
    except ConversionError as e:
        sys.exit(f"convert: {e}")


if __name__ == "__main__":
    main()
