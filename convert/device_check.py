"""Verify converted models the way the box runs them: in the device environment, through the
device's own bundle loader and step runner, one model per process.

    .venv-device/bin/python -m convert.device_check verify --bundle STAGED_DIR --precision int8
    .venv-device/bin/python -m convert.device_check time --bundle STAGED_DIR --precisions float32 int8
    .venv-device/bin/python -m convert.device_check tensors --float-model F --quant-model Q --io JSON --golden G

This module imports only numpy and ``device`` (no torch, no tensorflow), so it runs under the
device's runtime (ai-edge-litert 2.3 with numpy 2), which is the one that matters: ai-edge-litert
2.1 (onnx2tf's pin on the host) computes int8 activation x activation matmuls wrongly, and some
int8/int16 models abort the whole process (SIGABRT) when the runtime prepares them. The host calls
``verify`` once per precision in a subprocess, so a model that cannot load or aborts is reported
as such and is not shipped. Prints one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from device.selftest import esr, snr_db


def runtime_name() -> str:
    try:
        import ai_edge_litert
        return f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        import tflite_runtime
        return f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"


def verify(bundle_dir: Path, precision: str, threads: int = 1) -> dict:
    """Golden input + knob automation through the device's StepRunner: SNR and max error against
    PyTorch, ESR against the target effect, median per-hop time."""
    from device.bundle import load_bundle
    from device.selftest import run_golden
    out, times, g = run_golden(load_bundle(bundle_dir), precision, threads)
    ref = g["expected"][: len(out)]
    finite = bool(np.isfinite(out).all())
    return {"precision": precision, "runtime": runtime_name(), "loaded": True, "finite": finite,
            "snr_db_vs_pytorch": round(snr_db(ref, out), 2) if finite else None,
            "max_abs_err": float(np.abs(out - ref).max()) if finite else None,
            "esr_vs_target": round(esr(g["target"][: len(out)], out), 5) if finite else None,
            "per_hop_ms": round(1000 * float(np.median(times)), 4)}


def time_models(bundle_dir: Path, precisions: list[str], hops: int = 1000, rounds: int = 21, threads: int = 1) -> dict:
    """Per-hop time of each precision, measured interleaved in one process: round after round of
    ``hops`` hops per model, so that load from other processes hits every model alike.
    -> {precision: best round's mean per-hop ms, precision + ":median": the median round's}.
    The best round is the cost of the model itself: on a shared machine noise only adds time."""
    from device.bundle import load_bundle
    from device.engine import StepRunner
    bundle = load_bundle(bundle_dir)
    g = bundle.golden()
    H = bundle.manifest.hop
    n = len(g["knob_positions"])
    runners = {p: StepRunner(bundle, p, threads) for p in precisions}
    res = {p: [] for p in precisions}
    for r in range(rounds + 1):
        for p, run in runners.items():
            run.reset()
            t0 = time.perf_counter()
            for t in range(hops):
                i = t % n
                run.step(g["input"][i * H:(i + 1) * H], g["knob_positions"][i])
            if r:  # round 0 warms caches up
                res[p].append(1000 * (time.perf_counter() - t0) / hops)
    out = {p: round(float(np.min(v)), 4) for p, v in res.items()}
    out.update({f"{p}:median": round(float(np.median(v)), 4) for p, v in res.items()})
    return out


def tensor_errors(float_model: Path, quant_model: Path, io: dict, golden: Path, every: int = 8, skip: int = 200) -> list[dict]:
    """Where the error of a quantized model comes from: both models run on the same inputs (the
    float model's own state trajectory, so every number is the error one hop adds), and every
    tensor the quantized model computes is compared (dequantized) with the float tensor of the
    same name. ``io``: {"float"|"quant": {"audio", "knobs", "state", "state_out": tensor name}}.
    -> [{"op", "kind", "tensor", "dtype", "snr_db"}] in execution order."""
    from ai_edge_litert.interpreter import Interpreter
    g = dict(np.load(golden))

    def load(path, names):
        it = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True)
        it.allocate_tensors()
        idx = {d["name"]: d["index"] for d in it.get_tensor_details()}
        return it, {k: idx[v] for k, v in names.items()}

    fi, fio = load(float_model, io["float"])
    qi, qio = load(quant_model, io["quant"])
    ftensors = {d["name"]: d["index"] for d in fi.get_tensor_details()}
    qdetails = {d["index"]: d for d in qi.get_tensor_details()}
    order = []
    for op in qi._get_ops_details():  # noqa: SLF001 (the runtime's own op list; no public equivalent)
        for o in op["outputs"]:
            d = qdetails.get(o)
            if d is not None and d["name"] in ftensors and op["op_name"] != "DELEGATE":
                order.append((op["index"], op["op_name"], o, d))
    H = len(g["input"]) // len(g["knob_positions"])
    acc = {}
    state = np.zeros(fi.get_tensor(fio["state"]).shape, np.float32)
    for t in range(len(g["knob_positions"])):
        for it, io_ in ((fi, fio), (qi, qio)):
            it.set_tensor(io_["audio"], g["input"][None, t * H:(t + 1) * H])
            it.set_tensor(io_["knobs"], g["knob_positions"][None, t])
            it.set_tensor(io_["state"], state)
            it.invoke()
        if t >= skip and t % every == 0:
            for opi, kind, ti, d in order:
                ref = fi.get_tensor(ftensors[d["name"]]).astype(np.float64)
                q = qi.get_tensor(ti)
                if d["dtype"] != np.float32:
                    s, z = d["quantization"]
                    q = (q.astype(np.float64) - z) * s
                if q.shape != ref.shape:
                    continue
                e = acc.setdefault(ti, [0.0, 0.0, opi, kind, d["name"], np.dtype(d["dtype"]).name])
                e[0] += float(np.sum(ref ** 2))
                e[1] += float(np.sum((ref - q) ** 2))
        state = fi.get_tensor(fio["state_out"]).copy()
    rows = []
    for p, e, opi, kind, name, dt in sorted(acc.values(), key=lambda v: v[2]):
        snr = float("inf") if e == 0 else (10 * np.log10(p / e) if p > 0 else float("-inf"))
        rows.append({"op": opi, "kind": kind, "tensor": name, "dtype": dt, "snr_db": round(snr, 1)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify")
    v.add_argument("--bundle", type=Path, required=True)
    v.add_argument("--precision", required=True)
    t = sub.add_parser("time")
    t.add_argument("--bundle", type=Path, required=True)
    t.add_argument("--precisions", nargs="+", required=True)
    t.add_argument("--hops", type=int, default=1000)
    t.add_argument("--rounds", type=int, default=21)
    e = sub.add_parser("tensors")
    e.add_argument("--float-model", type=Path, required=True)
    e.add_argument("--quant-model", type=Path, required=True)
    e.add_argument("--io", required=True, help='JSON {"float": {role: tensor name}, "quant": {...}}')
    e.add_argument("--golden", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "verify":
        res = verify(a.bundle, a.precision)
    elif a.cmd == "time":
        res = time_models(a.bundle, a.precisions, a.hops, a.rounds)
    else:
        res = {"tensors": tensor_errors(a.float_model, a.quant_model, json.loads(a.io), a.golden)}
    sys.stdout.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
