"""Checkpoint -> ONNX -> onnx2tf -> TFLite in four precisions -> verified bundle.

    python -m convert --checkpoint runs/comp4/best.pt --data data/comp4-demo --out build/comp4

Each step is checked before the next: the ONNX model against PyTorch in onnxruntime; every TFLite
file for builtin ops only (a Flex or custom op is refused by name) and for its input and output
tensors (names, shapes, float32, the state found by name); then every precision against PyTorch
on golden vectors (held-out Test audio: a knob sweep where the catalogue rendered the dataset, else
a recorded pair at its recorded knobs, against the recording) in the device environment, through the
device's own bundle loader and step runner, one process per model (a model that aborts the
runtime is reported, not shipped), and its per-hop time with one thread.

Precisions: float32 and float16 (onnx2tf), dynamic_int8 and int8 (convert/quantize.py:
calibrated on (audio, knobs, state) tuples that the PyTorch step model produced streaming
training audio at knob settings across the whole knob space; see docs/conversion.md for where
int8 error comes from and how the int8 plan keeps it out of the sound).

The precision a box runs by default is chosen by a stated rule (``choose_default``): among the
precisions that load, meet their SNR floor and keep the ESR against the target within 10% of
float32's, the fastest; a less precise one wins only if it is at least 10% faster.
The bundle is written atomically, as a directory and as one .pedal archive.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from device.bundle import Manifest, ModelEntry, TensorInfo, load_bundle, write_bundle
from device.knobspec import KnobSpec
from device.selftest import esr, snr_db
from training.data import PairSet
from training.demo import dataset_description, dataset_renderer, held_out
from training.model import SignalTrainPi, StepModel
from training.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]

# what the on-device self-test must meet, per precision (SNR of the TFLite output vs PyTorch on the
# golden vectors). float32/float16: DESIGN.md's floors. int8 kinds: 40 dB, DESIGN.md's aim; the
# shipped plans measure 50-60 dB on the default model (docs/conversion.md), so 40 dB leaves
# 10-20 dB for runtime and CPU differences (ARM kernels round differently) and still keeps the
# quantization error 40 dB under the signal, where it moves the ESR vs the target by <= 1e-4.
TOLERANCES = {"float32": {"snr_db_min": 90.0}, "float16": {"snr_db_min": 55.0},
              "dynamic_int8": {"snr_db_min": 40.0}, "int8": {"snr_db_min": 40.0}}
ESR_RATIO_MAX = 1.10  # a shipped default's ESR vs the target may be at most 10% above float32's
FASTER = 0.90  # a less precise model becomes the default only if at least 10% faster (timing noise is +-5%)
ONNX2TF_TIMEOUT_S = 600
DEVICE_CHECK_TIMEOUT_S = 300
DEFAULT_RULE = (f"fastest precision (per-hop time, 1 thread, device runtime) among those that load, meet their SNR "
                f"floor vs PyTorch and keep the ESR vs the target within {100 * (ESR_RATIO_MAX - 1):.0f}% of "
                f"float32's; a less precise one replaces a more precise one only if >= {100 * (1 - FASTER):.0f}% faster")
IO_LAYOUT = {"audio": "(1, hop) float32: the hop's samples in time order, mono, full scale +-1",
             "knobs": "(1, n_knobs) float32: knob positions 0..1 after the taper, manifest knob order",
             "state": "(1, state_size) float32: flat, manifest state.layout; zeros = silence before the start; "
                      "feed state_out back as state"}


class ConversionError(Exception):
    pass


def golden_vectors(model: SignalTrainPi, knobs: list[KnobSpec], data: Path, seconds: float = 3.0, seed: int = 7) -> dict:
    """Held-out test audio (the loudest Test-split item, never trained on) and what the effect made
    of it. Where the catalogue rendered the dataset (``training.demo.dataset_renderer``: a built,
    forward dataset) every knob moves through its range at its own rate and the target is the
    effect rendered again with those per-hop knobs. Where it cannot be rendered (recordings, an
    effect not in the catalogue, an inverse dataset ``*_inv``) it is the recorded Test pair at the
    knob setting it was recorded at, and the target is the recording. The reference is the PyTorch
    offline model with per-hop knobs, which equals the streaming form to float precision."""
    cfg = model.cfg
    test = PairSet(data, "Test", log=lambda *_: None)
    i, n = held_out(test, seconds, cfg.hop)
    x = np.asarray(test.x[i][:n], np.float32)
    n_hops = n // cfg.hop
    effect = dataset_renderer(data)
    if effect is None:
        values = np.tile(np.asarray(test.pairs[i].knobs, np.float64), (n_hops, 1))
        pos = np.tile(test.knobs[i], (n_hops, 1)).astype(np.float32)
        kind = "recorded Test pair at the knob setting it was recorded at; target = the recording"
        source = test.pairs[i].target.name
    else:
        t = np.linspace(0, 1, n_hops)
        rng = np.random.default_rng(seed)
        pos = np.stack([0.5 + 0.45 * np.sin(2 * np.pi * (j + 1) * 0.5 * t + rng.uniform(0, 6.28)) for j in range(len(knobs))], 1)
        values = np.array([[k.from_normalized(p) for k, p in zip(knobs, row)] for row in pos])
        pos = np.array([[k.to_normalized(v) for k, v in zip(knobs, row)] for row in values], np.float32)
        kind = f"knob sweep (every knob through its range); target = {effect.name} rendered with the same per-hop knobs"
        source = test.pairs[i].input.name
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None], torch.from_numpy(pos)[None])[0].numpy()
    target = np.asarray(test.y[i][:n], np.float32) if effect is None else \
        effect.render_automation(x, cfg.sample_rate, values, cfg.hop)
    return {"input": x, "knob_values": values.astype(np.float32), "knob_positions": pos, "expected": ref.astype(np.float32),
            "target": target.astype(np.float32), "source": np.array(str(source)), "kind": np.array(kind)}


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


def run_onnx2tf(onnx_path: Path, out_dir: Path, log=print, calibration: dict[str, Path] | None = None) -> dict[str, Path]:
    """onnx2tf in a subprocess (it can abort or hang): -> {"float32": path, "float16": path}; the
    TF saved model lies beside them. With ``calibration`` ({input name: .npy of calibration
    tuples}) also onnx2tf's own quantized models (-odrqt -oiqt -cind NAME FILE 0 1): "naive_dynamic"
    and "naive_int8" (int8 inside, float I/O), kept for comparison, never shipped."""
    work = out_dir / "onnx2tf"
    shutil.rmtree(work, ignore_errors=True)
    src = work / "model.onnx"  # onnx2tf overwrites its input with a simplified model: give it a copy
    work.mkdir(parents=True)
    shutil.copyfile(onnx_path, src)
    exe = Path(sys.executable).with_name("onnx2tf")
    cmd = [str(exe) if exe.exists() else "onnx2tf", "-i", str(src), "-o", str(work / "tf"), "-n"]
    files = {"float32": work / "tf" / "model_float32.tflite", "float16": work / "tf" / "model_float16.tflite"}
    if calibration:
        cmd += ["-odrqt", "-oiqt"]
        for name, npy in calibration.items():
            cmd += ["-cind", name, str(npy), "0", "1"]  # mean 0, std 1: onnx2tf feeds (x - mean) / std
        files.update({"naive_dynamic": work / "tf" / "model_dynamic_range_quant.tflite",
                      "naive_int8": work / "tf" / "model_integer_quant.tflite"})
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=ONNX2TF_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"onnx2tf did not finish within {ONNX2TF_TIMEOUT_S} s on {onnx_path}") from None
    (work / "onnx2tf.log").write_text(p.stdout + p.stderr)
    missing = [str(f) for f in files.values() if not f.exists()]
    if p.returncode != 0 or missing:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
        raise ConversionError(f"onnx2tf failed (exit {p.returncode}, missing {missing}); log {work / 'onnx2tf.log'}:\n{tail}")
    log(f"onnx2tf: {' + '.join(files)} in {time.time() - t0:.0f} s")
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


# signature names of the step model's outputs, as onnx2tf writes them (ONNX names) and as
# TFLiteConverter writes them from onnx2tf's saved model (positional, ONNX output order)
OUTPUT_ROLES = {"audio_out": "audio", "state_out": "state", "output_0": "audio", "output_1": "state"}
INPUT_ROLES = ("audio", "knobs", "state")


def io_tensors(path: Path, hop: int, n_knobs: int, state_size: int) -> tuple[dict, dict]:
    """The step model's input and output tensors by role, read from the flatbuffer (no runtime:
    an unverified model is never loaded in this process). Inputs and outputs are found by their
    signature names (audio, knobs, state -> audio_out, state_out); a model without a signature
    by input tensor name and output position. Refuses a model whose tensors are missing, not
    float32, or not of the shapes (1, hop), (1, n_knobs), (1, state_size): a transposed layout
    or a quantized interface would feed the box garbage."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu
    from tensorflow.lite.python import schema_py_generated as schema
    m = fbu.read_model(str(path))
    sg = m.subgraphs[0]
    tname = lambda i: sg.tensors[i].name.decode()  # noqa: E731
    ins, outs = {}, {}
    sig = m.signatureDefs[0] if m.signatureDefs else None
    if sig is not None:
        for t in sig.inputs:
            role = t.name.decode()
            if role not in INPUT_ROLES:
                raise ConversionError(f"{path}: unexpected input {role!r} (the step model takes {INPUT_ROLES})")
            ins[role] = t.tensorIndex
        for t in sig.outputs:
            role = OUTPUT_ROLES.get(t.name.decode())
            if role is None or role in outs:
                raise ConversionError(f"{path}: cannot tell which output {t.name.decode()!r} is (expected {sorted(OUTPUT_ROLES)})")
            outs[role] = t.tensorIndex
    else:
        for i in sg.inputs:
            role = next((r for r in INPUT_ROLES if tname(i) in (r, f"serving_default_{r}:0")), None)
            if role is None:
                raise ConversionError(f"{path}: unexpected input tensor {tname(i)!r}")
            ins[role] = int(i)
        if len(sg.outputs) != 2:
            raise ConversionError(f"{path}: {len(sg.outputs)} outputs, the step model has 2 (audio_out, state_out)")
        outs = {"audio": int(sg.outputs[0]), "state": int(sg.outputs[1])}
    want = {"audio": [1, hop], "knobs": [1, n_knobs], "state": [1, state_size]}
    infos = []
    for side, table, roles in (("input", ins, INPUT_ROLES), ("output", outs, ("audio", "state"))):
        for role in roles:
            if role not in table:
                raise ConversionError(f"{path}: no {side} for {role!r} (have {sorted(table)})")
            t = sg.tensors[table[role]]
            shape = [int(s) for s in t.shape]
            if shape != want[role]:
                raise ConversionError(f"{path}: {side} {role} tensor {tname(table[role])!r} has shape {shape}, expected "
                                      f"{want[role]} (layout changed in conversion?)")
            if t.type != schema.TensorType.FLOAT32:
                raise ConversionError(f"{path}: {side} {role} tensor {tname(table[role])!r} is not float32 "
                                      "(the box feeds float audio, knobs and state)")
            infos.append((side, role, TensorInfo(tname(table[role]), shape, "float32")))
    return ({r: t for s, r, t in infos if s == "input"}, {r: t for s, r, t in infos if s == "output"})


# --- verification in the device environment ------------------------------------------------------------
def device_python() -> tuple[str, bool]:
    """(interpreter, is it the device environment) that verifies models: $PEDAL_DEVICE_PYTHON, the
    repository's .venv-device, or else this interpreter (host runtime: int8 results unreliable)."""
    env = os.environ.get("PEDAL_DEVICE_PYTHON")
    if env:
        return env, True
    venv = REPO / ".venv-device" / "bin" / "python"
    if venv.exists():
        return str(venv), True
    return sys.executable, False


def device_check(args: list[str], timeout: float = DEVICE_CHECK_TIMEOUT_S) -> dict:
    """Run ``python -m convert.device_check ARGS`` in the device environment; -> its JSON, or
    {"loaded": False, "error": why} when the process aborts, fails or hangs."""
    exe, _ = device_python()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        p = subprocess.run([exe, "-m", "convert.device_check", *args], capture_output=True, text=True, timeout=timeout,
                           env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"loaded": False, "error": f"did not finish within {timeout:g} s"}
    if p.returncode < 0:
        return {"loaded": False, "error": f"the runtime aborted the process (signal {-p.returncode})"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
        return {"loaded": False, "error": f"exit {p.returncode}: {tail}"}
    return json.loads(lines[-1])


def left_out_reasons(results: dict[str, dict]) -> dict[str, str]:
    """{precision: why it is not shipped} for verified results that cannot run (load failure, an
    aborted or hung runtime, non-finite output) or miss their SNR floor."""
    left_out = {}
    for prec, r in results.items():
        floor = TOLERANCES[prec]["snr_db_min"]
        if not r.get("loaded"):
            left_out[prec] = f"cannot run: {r.get('error')}"
        elif not r.get("finite"):
            left_out[prec] = "output not finite"
        elif r["snr_db_vs_pytorch"] < floor:
            left_out[prec] = f"{r['snr_db_vs_pytorch']:.1f} dB SNR is below its {floor:g} dB floor"
    return left_out


def choose_default(results: dict[str, dict]) -> tuple[str, str]:
    """The rule (``DEFAULT_RULE``) applied to verified results -> (precision, reason)."""
    ref = results["float32"]["esr_vs_target"]
    ok = {p: r for p, r in results.items() if r.get("meets_floor") and r["esr_vs_target"] <= ESR_RATIO_MAX * ref + 1e-9}
    order = sorted(ok, key=lambda p: -ok[p]["snr_db_vs_pytorch"])  # most precise first
    choice = order[0]
    for p in order[1:]:
        if ok[p]["per_hop_ms_host"] < FASTER * ok[choice]["per_hop_ms_host"]:
            choice = p
    r = ok[choice]
    why = (f"{r['per_hop_ms_host']:.4f} ms/hop vs float32 {results['float32']['per_hop_ms_host']:.4f}; SNR "
           f"{r['snr_db_vs_pytorch']:.1f} dB (floor {TOLERANCES[choice]['snr_db_min']:g}); ESR {r['esr_vs_target']:.5f} "
           f"vs float32 {ref:.5f} (limit x{ESR_RATIO_MAX:g})")
    close = [p for p in order if ok[p]["per_hop_ms_host"] < r["per_hop_ms_host"]]
    if close:
        why += f"; {', '.join(close)} faster by under {100 * (1 - FASTER):.0f}%, less precise"
    return choice, why


def markdown_table(results: dict[str, dict], hop: int, sample_rate: int) -> str:
    hop_ms = 1000 * hop / sample_rate
    rows = ["| precision | SNR vs PyTorch | max error | ESR vs target | size | per-hop time, 1 thread: best round "
            "(median) | shipped |", "|---|---|---|---|---|---|---|"]
    for p, r in results.items():
        if not r.get("loaded"):
            rows.append(f"| {p} | cannot run: {r.get('error')} | | | {r.get('size_kib', 0):.0f} KiB | | no |")
            continue
        t, med = r.get("per_hop_ms_host"), r.get("per_hop_ms_host_median")
        time_s = f"{t:.4f} ms ({med:.4f}), {100 * t / hop_ms:.1f}% of real time" if t is not None else "-"
        rows.append(f"| {p} | {r['snr_db_vs_pytorch']:.1f} dB | {r['max_abs_err']:.2e} | {r['esr_vs_target']:.5f} | "
                    f"{r['size_kib']:.0f} KiB | {time_s} | {'yes' if r.get('shipped') else 'no: ' + r.get('why_not', '')} |")
    return "\n".join(rows)


def _stage(work: Path, name: str, manifest: Manifest, files: dict[str, Path]) -> Path:
    return write_bundle(work / name, manifest, files, archive=False)


def verify_candidate(work: Path, manifest: Manifest, entry: ModelEntry, path: Path) -> dict:
    """Verify one model file in the device environment: staged as ``entry.precision`` in a
    throwaway bundle beside the float32 model, through the device's own loader and runner."""
    e = ModelEntry(entry.precision, "candidate.tflite", entry.inputs, entry.outputs, entry.quantization)
    man = Manifest(**{**vars(manifest), "models": {"float32": manifest.models["float32"], e.precision: e},
                      "default_precision": "float32", "tolerances": {}})
    staged = _stage(work, f"staged_{e.precision}", man, {
        "golden.npz": work / "golden.npz", manifest.models["float32"].file: work / "onnx2tf" / "tf" / "model_float32.tflite",
        "candidate.tflite": path})
    try:
        return device_check(["verify", "--bundle", str(staged), "--precision", e.precision])
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def convert(checkpoint: Path, data: Path, out: Path, report: Path | None = None, log=print, quantize: bool = True,
            naive: bool = False, calib_clips: int = 16, calib_seconds: float = 1.5, calib_per_clip: int = 32,
            timing_hops: int = 1000) -> Path:
    """Checkpoint -> verified bundle at ``out`` (directory) and ``out.pedal``; report at
    ``out.conversion.json``. ``quantize``: also dynamic_int8 and int8; ``naive``: also verify
    onnx2tf's own quantized models for comparison (report only)."""
    t0 = time.time()
    model, ck = load_checkpoint(checkpoint)
    cfg = model.cfg
    knobs = [KnobSpec.from_dict(k) for k in ck["knobs"]]
    step = StepModel(model).eval()
    work = out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    golden = golden_vectors(model, knobs, data)
    np.savez(work / "golden.npz", **golden)
    onnx_path = work / "step.onnx"
    export_onnx(step, onnx_path, len(knobs))
    onnx_snr = check_onnx(step, onnx_path, golden)
    log(f"ONNX (onnxruntime) vs PyTorch: {onnx_snr:.1f} dB SNR")
    if onnx_snr < 90:
        raise ConversionError(f"{onnx_path}: ONNX output differs from PyTorch ({onnx_snr:.1f} dB < 90 dB)")

    calib_files, calib_info = None, {}
    if quantize or naive:
        from .calibrate import calibration_set
        calib = calibration_set(step, data, calib_clips, calib_seconds, calib_per_clip, log=log)
        calib_files = {}
        for k, v in calib.items():
            np.save(work / f"calib_{k}.npy", v)
            calib_files[k] = work / f"calib_{k}.npy"
        calib_info = {"tuples": int(len(calib["audio"])), "clips": calib_clips, "seconds_per_clip": calib_seconds,
                      "source": "Train split", "knobs": f"Latin hypercube, {2 * calib_clips} settings, a change mid-clip",
                      "state": "streamed by the PyTorch step model from zero"}
    tfl = run_onnx2tf(onnx_path, work, log, calibration=calib_files if naive else None)

    # guards: builtin ops only, I/O tensors by name with the shapes and types the box feeds
    def entry(prec: str, path: Path, quantization: dict) -> ModelEntry:
        check_builtin_only(path)
        ins, outs = io_tensors(path, cfg.hop, len(knobs), step.state_size)
        return ModelEntry(prec, f"step_{prec}.tflite", ins, outs, quantization=quantization)

    cand = {p: tfl[p] for p in ("float32", "float16")}
    models = {"float32": entry("float32", cand["float32"], {"weights": "float32", "activations": "float32", "io": "float32"}),
              "float16": entry("float16", cand["float16"], {"weights": "float16 (dequantized to float32 at load)",
                                                           "activations": "float32", "io": "float32"})}
    manifest = Manifest(
        effect=ck["effect"], description=dataset_description(data, ck["effect"], knobs), knobs=knobs, sample_rate=cfg.sample_rate,
        hop=cfg.hop, latency_samples=cfg.latency_samples, state_size=step.state_size, state_layout=step.layout,
        models=models, default_precision="float32", files={}, tolerances={},
        golden={"file": "golden.npz", "seconds": len(golden["input"]) / cfg.sample_rate, "source": str(golden["source"]),
                "kind": str(golden["kind"])},
        training={"model_config": cfg.to_dict(), "parts": cfg.parts, "parts_measured": (ck.get("parts") or {}).get("measures"),
                  "metrics": ck.get("metrics", {}), "checkpoint": str(checkpoint)})
    if report and Path(report).exists():
        manifest.training["evaluation"] = json.loads(Path(report).read_text()).get("summary", {})
    _, is_device = device_python()
    results, plans_tried, naive_results = {}, {}, {}
    if quantize:
        # each precision: its candidate plans, fastest first; the first that clears its floor by a margin
        from .quantize import PLAN_MARGIN_DB, PLANS, calibrated_model, linear_names
        from .quantize import quantize as apply_plan
        t1 = time.time()
        calibrated = calibrated_model(tfl["float32"].parent, calib)
        names = linear_names(calibrated, model)
        for prec, plans in PLANS.items():
            floor = TOLERANCES[prec]["snr_db_min"]
            tried = []
            for label, rules in plans:
                data_q, modes = apply_plan(calibrated, names, rules)
                path = work / f"{prec} {label}.tflite".replace(" ", "_")
                path.write_bytes(data_q)
                info = {"plan": label, "weights": "int8, per output channel, symmetric (float where a matmul is float)",
                        "activations": ("int8 at matmuls marked int8 (static scales from calibration), quantized per "
                                        "call at matmuls marked dynamic, float32 everywhere else"),
                        "io": "float32", "state": "float32", "matmuls": modes}
                if "int8" in modes.values():
                    info["calibration"] = calib_info
                e = entry(prec, path, info)
                r = verify_candidate(work, manifest, e, path)
                r["size_kib"] = round(path.stat().st_size / 1024, 1)
                tried.append((label, e, path, r))
                snr = r.get("snr_db_vs_pytorch") if r.get("loaded") and r.get("finite") else None
                log(f"{prec} plan '{label}': " + (f"{snr:.1f} dB SNR" if snr is not None else f"cannot run: {r.get('error')}"))
                if snr is not None and snr >= floor + PLAN_MARGIN_DB:
                    break
            runs = [t for t in tried if t[3].get("loaded") and t[3].get("finite")]
            good = [t for t in runs if t[3]["snr_db_vs_pytorch"] >= floor + PLAN_MARGIN_DB]
            # the first plan with margin; else the most precise one that runs (verified against its floor below)
            label, e, path, r = good[0] if good else max(runs, key=lambda t: t[3]["snr_db_vs_pytorch"]) if runs else tried[-1]
            models[prec], cand[prec], results[prec] = e, path, r
            plans_tried[prec] = [{"plan": t[0], "snr_db_vs_pytorch": t[3].get("snr_db_vs_pytorch"),
                                  "error": t[3].get("error")} for t in tried]
        log(f"quantized: {', '.join(PLANS)} from {len(names)} matched matmuls in {time.time() - t1:.0f} s")
    manifest.tolerances = {p: TOLERANCES[p] for p in models}
    files = {"golden.npz": work / "golden.npz", **{models[p].file: cand[p] for p in models}}

    # verify every precision in the device environment, one process each, then time them together
    staged = _stage(work, "staged", manifest, files)
    for prec in models:
        if prec not in results:
            results[prec] = device_check(["verify", "--bundle", str(staged), "--precision", prec])
            results[prec]["size_kib"] = round(Path(cand[prec]).stat().st_size / 1024, 1)
    if naive:
        for key, prec in (("naive_dynamic", "dynamic_int8"), ("naive_int8", "int8")):
            try:
                e = ModelEntry(prec, "x", *io_tensors(tfl[key], cfg.hop, len(knobs), step.state_size))
            except ConversionError as err:
                naive_results[key] = {"loaded": False, "error": str(err)}
                continue
            naive_results[key] = verify_candidate(work, manifest, e, tfl[key])
            naive_results[key]["size_kib"] = round(tfl[key].stat().st_size / 1024, 1)
    results = {p: results[p] for p in models}  # float32, float16, dynamic_int8, int8
    loaded = [p for p, r in results.items() if r.get("loaded") and r.get("finite")]
    if "float32" not in loaded:
        raise ConversionError(f"{cand['float32']}: float32 model does not run in the device runtime: {results['float32']}")
    timing = device_check(["time", "--bundle", str(staged), "--precisions", *loaded, "--hops", str(timing_hops)])
    for p in loaded:
        results[p]["per_hop_ms_host"] = timing.get(p, results[p]["per_hop_ms"])
        results[p]["per_hop_ms_host_median"] = timing.get(f"{p}:median", results[p]["per_hop_ms"])
    for prec, r in results.items():
        floor = TOLERANCES[prec]["snr_db_min"]
        r["meets_floor"] = bool(r.get("loaded") and r.get("finite") and r["snr_db_vs_pytorch"] >= floor)
        if r.get("loaded") and r.get("finite"):
            log(f"TFLite {prec:<12} vs PyTorch: {r['snr_db_vs_pytorch']:6.1f} dB SNR (floor {floor:g}), max error "
                f"{r['max_abs_err']:.2e}, ESR vs target {r['esr_vs_target']:.5f}, {r['size_kib']:.0f} KiB, "
                f"{r['per_hop_ms_host']:.4f} ms/hop")
        else:
            log(f"TFLite {prec:<12} cannot run: {r.get('error', 'output not finite')}")
    for key, r in naive_results.items():
        if r.get("loaded"):
            log(f"(onnx2tf {key} for comparison: {r['snr_db_vs_pytorch']:.1f} dB SNR, ESR {r['esr_vs_target']:.5f})")
        else:
            log(f"(onnx2tf {key} for comparison: cannot run: {r.get('error')})")
    for prec in ("float32", "float16"):
        if prec in results and not results[prec]["meets_floor"]:
            raise ConversionError(f"{cand[prec]}: {prec} SNR {results[prec].get('snr_db_vs_pytorch')} dB is below the "
                                  f"{TOLERANCES[prec]['snr_db_min']:g} dB this precision must meet")
    left_out = left_out_reasons(results)
    for prec, r in results.items():
        r["shipped"] = prec not in left_out
        if prec in left_out:
            r["why_not"] = left_out[prec]
    default, why = choose_default({p: r for p, r in results.items() if r["shipped"]})
    log(f"default precision: {default} ({why})")

    shipped = {p: m for p, m in models.items() if p not in left_out}
    for p, m in shipped.items():
        r = results[p]
        m.verified = {k: r[k] for k in ("snr_db_vs_pytorch", "max_abs_err", "esr_vs_target", "size_kib", "per_hop_ms_host")}
        m.verified["runtime"] = r.get("runtime", "?")
    manifest.models = shipped
    manifest.tolerances = {p: TOLERANCES[p] for p in shipped}
    manifest.default_precision = default
    manifest.conversion = {"default_rule": DEFAULT_RULE, "default_reason": why, "left_out": left_out,
                           "verified_in": results["float32"].get("runtime", "?") + ("" if is_device else " (host env)"),
                           "io_layout": IO_LAYOUT, "state_tensor": {"input": "state", "output": "state_out"},
                           "calibration": calib_info, "onnx_snr_db": round(onnx_snr, 1)}
    manifest.training["pytorch_esr_vs_target_golden"] = round(esr(golden["target"], golden["expected"]), 5)
    manifest.training["bundle_esr_vs_target_golden"] = results[default]["esr_vs_target"]  # the default precision's
    manifest.training["golden_target"] = "recorded" if dataset_renderer(data) is None else "rendered"
    manifest.training["onnx_snr_db"] = round(onnx_snr, 1)
    dest = write_bundle(out, manifest, {"golden.npz": files["golden.npz"], **{m.file: files[m.file] for m in shipped.values()}},
                        archive=True)
    load_bundle(dest.with_suffix(".pedal"))  # what we wrote, a box can read
    shutil.rmtree(staged, ignore_errors=True)
    rep = {"checkpoint": str(checkpoint), "onnx_snr_db": onnx_snr, "pytorch_esr_vs_target": manifest.training[
        "pytorch_esr_vs_target_golden"], "verified_in": manifest.conversion["verified_in"], "default_precision": default,
        "default_rule": DEFAULT_RULE, "default_reason": why, "precisions": results, "plans_tried": plans_tried,
        "naive": naive_results,
        "calibration": calib_info, "table": markdown_table(results, cfg.hop, cfg.sample_rate)}
    (out.parent / f"{out.name}.conversion.json").write_text(json.dumps(rep, indent=1))
    log(rep["table"])
    log(f"bundle {dest} and {dest.with_suffix('.pedal')} written in {time.time() - t0:.0f} s")
    return dest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="dataset dir (golden vectors from Test, calibration from Train)")
    ap.add_argument("--out", type=Path, required=True, help="bundle directory to write (and OUT.pedal, OUT.conversion.json)")
    ap.add_argument("--report", type=Path, default=None, help="evaluation report (JSON) whose summary goes into the manifest")
    ap.add_argument("--no-quantize", dest="quantize", action="store_false", help="float32 and float16 only")
    ap.add_argument("--naive", action="store_true", help="also verify onnx2tf's own -odrqt/-oiqt models (report only)")
    ap.add_argument("--calib-clips", type=int, default=16, help="Train clips streamed for calibration")
    ap.add_argument("--calib-seconds", type=float, default=1.5, help="seconds per calibration clip")
    a = ap.parse_args(argv)
    try:
        convert(a.checkpoint, a.data, a.out, a.report, quantize=a.quantize, naive=a.naive, calib_clips=a.calib_clips,
                calib_seconds=a.calib_seconds)
    except ConversionError as e:
        sys.exit(f"convert: {e}")


if __name__ == "__main__":
    main()
