"""Where does int8 error come from? Quantize one part at a time and measure, in the device runtime.

    python -m convert.analyze --checkpoint runs/comp4/best.pt --work build/comp4.work

Reuses what ``python -m convert`` left in OUT.work (golden vectors, calibration tuples, onnx2tf's
saved model). Three views, each verified on the golden vectors in the device environment:

1. one matmul at a time: SNR vs PyTorch with only that ``nn.Linear`` static int8 (everything else
   float32), and with only that one dynamic-range;
2. a ladder of plans, from every matmul int8 to the shipped plans, each step one design decision;
3. per tensor: the error one hop adds at every tensor of a plan, float model vs quantized model
   on the same inputs (``convert.device_check tensors``).

Writes OUT.work/int8_analysis.json and prints markdown tables (docs/conversion.md quotes them).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from device.bundle import Manifest, ModelEntry, write_bundle
from device.knobspec import KnobSpec
from training.model import StepModel
from training.train import load_checkpoint

from .pipeline import TOLERANCES, device_check, io_tensors
from .quantize import PLANS, calibrated_model, linear_names, quantize

_BASE = [("gain_head", "float"), ("fir_head", "float"), ("analysis", "dynamic")]
LADDER = [
    ("every matmul int8 (static), all else float", [("*", "int8")]),
    ("+ analysis dynamic-range", [("analysis", "dynamic"), ("*", "int8")]),
    ("+ gain head (and FIR head) float", _BASE + [("*", "int8")]),
    ("+ knob input layer (film.0) float", _BASE + [("film.0", "float"), ("*", "int8")]),
    ("+ residual writers (attn.out, ffn.2) dynamic", _BASE + [("film.0", "float"), ("blocks.*.attn.out", "dynamic"),
                                                              ("blocks.*.ffn.2", "dynamic"), ("*", "int8")]),
    ("+ in_proj dynamic = int8 plan 'analysis dynamic'", PLANS["int8"][0][1]),
    ("int8 plan 'analysis float'", PLANS["int8"][1][1]),
    ("dynamic_int8 plan 'analysis dynamic'", PLANS["dynamic_int8"][0][1]),
    ("dynamic_int8 plan 'analysis float'", PLANS["dynamic_int8"][1][1]),
]


class Verifier:
    """Stages one model at a time as the ``int8`` precision of a throwaway bundle and verifies it
    with convert.device_check (the device runtime, its own process)."""

    def __init__(self, work: Path, model, ck, step: StepModel):
        cfg = model.cfg
        self.work, self.hop, self.k, self.s = work, cfg.hop, len(ck["knobs"]), step.state_size
        self.f32 = work / "onnx2tf" / "tf" / "model_float32.tflite"
        ins, outs = io_tensors(self.f32, cfg.hop, self.k, self.s)
        self.man = Manifest(effect=ck["effect"], knobs=[KnobSpec.from_dict(k) for k in ck["knobs"]],
                            sample_rate=cfg.sample_rate, hop=cfg.hop, latency_samples=cfg.latency_samples,
                            state_size=step.state_size, state_layout=step.layout,
                            models={"float32": ModelEntry("float32", "f.tflite", ins, outs)}, default_precision="float32",
                            files={}, tolerances=TOLERANCES, golden={"file": "golden.npz"})
        self.n = 0

    def __call__(self, model_bytes: bytes) -> dict:
        path = self.work / "analysis" / f"m{self.n}.tflite"
        self.n += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(model_bytes)
        ins, outs = io_tensors(path, self.hop, self.k, self.s)
        man = Manifest(**{**vars(self.man), "models": {**self.man.models, "int8": ModelEntry("int8", "q.tflite", ins, outs)}})
        staged = write_bundle(self.work / "analysis" / "staged", man, {"golden.npz": self.work / "golden.npz",
                                                                      "f.tflite": self.f32, "q.tflite": path}, archive=False)
        r = device_check(["verify", "--bundle", str(staged), "--precision", "int8"])
        r["path"] = str(path)
        return r


def tensor_table(v: Verifier, quant_path: Path) -> tuple[list[dict], str]:
    f_in, f_out = io_tensors(v.f32, v.hop, v.k, v.s)
    q_in, q_out = io_tensors(quant_path, v.hop, v.k, v.s)
    io = {"float": {**{r: t.name for r, t in f_in.items()}, "state_out": f_out["state"].name},
          "quant": {**{r: t.name for r, t in q_in.items()}, "state_out": q_out["state"].name}}
    r = device_check(["tensors", "--float-model", str(v.f32), "--quant-model", str(quant_path), "--io", json.dumps(io),
                      "--golden", str(v.work / "golden.npz")])
    return r.get("tensors", []), q_out["audio"].name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="OUT.work of a `python -m convert` run")
    ap.add_argument("--no-single", dest="single", action="store_false", help="skip the one-matmul-at-a-time view")
    a = ap.parse_args(argv)
    model, ck = load_checkpoint(a.checkpoint)
    step = StepModel(model).eval()
    calib = {k: np.load(a.work / f"calib_{k}.npy") for k in ("audio", "knobs", "state")}
    calibrated = calibrated_model(a.work / "onnx2tf" / "tf", calib)
    names = linear_names(calibrated, model)
    verify = Verifier(a.work, model, ck, step)
    out = {"modules": list(names.values()), "single": {}, "ladder": [], "tensors": {}}
    if a.single:
        print("| matmul (nn.Linear) | weights | only this one int8 (static) | only this one dynamic-range |\n|---|---|---|---|")
        for name in names.values():
            row = {}
            for mode in ("int8", "dynamic"):
                q, _ = quantize(calibrated, names, [(name, mode), ("*", "float")])
                row[mode] = verify(q).get("snr_db_vs_pytorch")
            shape = list(dict(model.named_modules())[name].weight.shape)
            out["single"][name] = row
            print(f"| {name} | {shape[0]}x{shape[1]} | {row['int8']:.1f} dB | {row['dynamic']:.1f} dB |")
    print("\n| plan | SNR vs PyTorch | ESR vs target |\n|---|---|---|")
    for label, plan in LADDER:
        q, modes = quantize(calibrated, names, plan)
        r = verify(q)
        out["ladder"].append({"plan": label, "rules": plan, "modes": modes, **{k: r.get(k) for k in (
            "snr_db_vs_pytorch", "esr_vs_target", "max_abs_err", "path")}})
        print(f"| {label} | {r.get('snr_db_vs_pytorch', float('nan')):.1f} dB | {r.get('esr_vs_target', float('nan')):.5f} |")
    for step_i in (0, 3, 5):
        entry = out["ladder"][step_i]
        rows, audio_out = tensor_table(verify, Path(entry["path"]))
        out["tensors"][entry["plan"]] = rows
        mm = [r for r in rows if r["kind"] in ("FULLY_CONNECTED", "LOG", "EXP", "SOFTMAX") or r["tensor"] == audio_out]
        print(f"\nper tensor, one hop, plan '{entry['plan']}': matmuls and the functions that follow them\n")
        print("| op | kind | dtype | SNR of this tensor | tensor |\n|---|---|---|---|---|")
        for r in mm:
            print(f"| {r['op']} | {r['kind']} | {r['dtype']} | {r['snr_db']:.1f} dB | `{r['tensor'][:60]}` |")
    (a.work / "int8_analysis.json").write_text(json.dumps(out, indent=1))
    shutil.rmtree(a.work / "analysis" / "staged", ignore_errors=True)
    print(f"\nwritten {a.work / 'int8_analysis.json'}")


if __name__ == "__main__":
    main()
