"""Benchmark: how many captured knob settings does a model need, and does the plan matter?

    python -m training.bench_capture [--effects comp4 drive] [--settings 8 16 32 64]
                                     [--plans lhs random] [--minutes 3] [--seconds 60]

For each effect, captures are made the way ``python -m device capture`` makes them (the same
signal, checks and writer, device/capture), with the catalogue effect standing in for the pedal
and the audio made offline (a chain latency of ``LATENCY`` samples and a -90 dBFS noise floor in
place of the box and its cables): one capture per number of settings and plan (Latin hypercube,
or uniform random draws), each trained for ``--minutes``; every model is then tested on one more
capture at ``--test-settings`` random settings none of them saw (seeded apart), on its Test part
(audio no model trained on). Results: out/bench/capture.json and a markdown table
(out/bench/capture.md). Ratios within one run are what to read: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from device.capture.checks import Limits, check_pass, check_reference
from device.capture.plan import make_plan
from device.capture.session import Capture

from .effects import get_effect
from .evaluate import evaluate
from .train import TrainConfig, train

LATENCY = 301  # samples: a box's buffers and converters
NOISE_DBFS = -90.0


def simulate_capture(effect, root: Path, plan: list, seconds: float = 60.0, latency: int = LATENCY,
                     noise_dbfs: float | None = NOISE_DBFS, seed: int = 0, name: str | None = None,
                     log=print) -> Capture:
    """A capture folder of ``effect`` (a catalogue Effect) at the settings of ``plan``, made offline
    through device/capture's checks and writer: a reference pass (the signal looped back), then one
    pass per setting. Every pass must pass the checks."""
    rng = np.random.default_rng(seed)

    def back(x: np.ndarray) -> np.ndarray:
        rec = np.zeros(len(x) + int(Limits().max_latency_ms * 48) + latency, np.float32)
        rec[latency:latency + len(x)] = x
        if noise_dbfs is not None:
            rec += (10 ** (noise_dbfs / 20) * rng.standard_normal(len(rec))).astype(np.float32)
        return rec

    root.mkdir(parents=True, exist_ok=True)
    name = name or effect.name
    cap = Capture.create(root, name, f"{name}: {effect.name} captured offline", list(effect.knobs), plan,
                         {"kind": "offline"}, seconds, 0, -10.0, Limits(), 48000)
    ref = check_reference(cap.signal, back(cap.signal.reference() * cap.level), cap.level, Limits())
    if not ref.ok:
        raise RuntimeError(f"{root}: reference refused: {ref.problems}")
    cap.record_reference(ref)
    played = cap.signal.audio * cap.level
    for i in cap.pending:
        rec = back(effect.render(played, 48000, plan[i]))
        check = check_pass(cap.signal, rec, cap.level, Limits(), cap.state["latency_samples"])
        if not check.ok:
            raise RuntimeError(f"{root}: pass {i + 1} at {plan[i]} refused: {check.problems}")
        cap.record_attempt(i, check, rec, keep_raw=False)
    log(f"{root}: {len(plan)} settings captured offline")
    return cap


def run_one(effect, n: int, plan_kind: str, a, test_dir: Path, log=print) -> dict:
    data = a.out / "data" / f"{effect.name}-{plan_kind}-{n}"
    if data.exists():
        shutil.rmtree(data)
    plan = make_plan(list(effect.knobs), n, seed=a.seed, kind=plan_kind)
    simulate_capture(effect, data, plan, a.seconds, log=log)
    run = a.out / "runs" / f"capture-{effect.name}-{plan_kind}-{n}"
    t0 = time.time()
    s = train(TrainConfig(data=str(data), out=str(run), minutes=a.minutes, threads=a.threads, seed=a.seed,
                          val_every_s=max(10.0, a.minutes * 60 / 15)), log=log)
    rep = evaluate(run / "best.pt", test_dir, run, log=log)["summary"]
    if not a.keep_data:
        shutil.rmtree(data)
    row = {"effect": effect.name, "plan": plan_kind, "settings": n, "minutes": a.minutes, "seconds": a.seconds,
           "steps": s["steps"], "wall_s": round(time.time() - t0, 1),
           **{k: rep[k] for k in ("esr_mean", "esr_median", "esr_worst", "dry_esr_mean", "test_settings")}}
    log(json.dumps(row))
    return row


def table(rows: list[dict]) -> str:
    lines = ["| effect | plan | settings | held-out ESR mean | median | worst | dry ESR mean | steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["effect"], r["plan"], r["settings"])):
        lines.append(f"| {r['effect']} | {r['plan']} | {r['settings']} | {r['esr_mean']:.3g} | {r['esr_median']:.3g} | "
                     f"{r['esr_worst']:.3g} | {r['dry_esr_mean']:.3g} | {r['steps']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--effects", nargs="+", default=["comp4", "drive"])
    ap.add_argument("--settings", nargs="+", type=int, default=[8, 16, 32, 64])
    ap.add_argument("--plans", nargs="+", choices=("lhs", "random"), default=["lhs", "random"])
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    ap.add_argument("--seconds", type=float, default=60.0, help="capture signal length per setting")
    ap.add_argument("--test-settings", type=int, default=16, help="held-out random settings of the test capture")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-data", action="store_true", help="keep each training capture (~11 MB per setting-minute)")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    res_path = a.out / "capture.json"
    rows = json.loads(res_path.read_text())["rows"] if res_path.exists() else []
    for name in a.effects:
        effect = get_effect(name)
        test_dir = a.out / "data" / f"{name}-heldout-{a.test_settings}x{a.seconds:g}s"
        if not (test_dir / "capture.json").exists():
            plan = make_plan(list(effect.knobs), a.test_settings, seed=10_000 + a.seed, kind="random")
            simulate_capture(effect, test_dir, plan, a.seconds, seed=1)
        for n in a.settings:
            for kind in a.plans:
                rows = [r for r in rows if (r["effect"], r["plan"], r["settings"], r["minutes"], r["seconds"])
                        != (name, kind, n, a.minutes, a.seconds)]
                rows.append(run_one(effect, n, kind, a, test_dir))
                res_path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
                (a.out / "capture.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
