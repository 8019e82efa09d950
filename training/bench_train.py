"""Benchmark: does attention learn faster? Same data, seed, threads and time budget per variant.

    python -m training.bench_train --data data/comp4-demo --minutes 5 [--variants sparse none dense]

For each variant: the validation curve over its training time (by default its own CPU time /
threads, ``--clock cpu``, which other work on a shared machine does not eat). Reported: the
no-attention model's best validation ESR, and how much sooner the attention model first reached it
(the SignalTrain paper saw about 3x). The ratio is what to read, not the absolute times.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .train import TrainConfig, train


def time_to_reach(history: dict, target: float) -> float | None:
    for t, v in zip(history["time_s"], history["val_esr"]):
        if v <= target:
            return t
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/comp4-demo")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--variants", nargs="+", default=["sparse", "none"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    ap.add_argument("--val-every-s", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu (default): each variant's own CPU time / threads, so other work on the machine "
                         "shrinks neither budget; wall: wall-clock time (then run on an idle machine)")
    a = ap.parse_args(argv)
    results = {}
    for v in a.variants:
        s = train(TrainConfig(data=a.data, out=str(a.out / v), minutes=a.minutes, attention=v,
                              val_every_s=a.val_every_s, threads=a.threads, clock=a.clock))
        results[v] = {"best_val_esr": s["best_val_esr"], "steps": s["steps"], "history": s["history"]}
    if "none" in results:
        target = results["none"]["best_val_esr"]
        t_none = time_to_reach(results["none"]["history"], target)
        for v, r in results.items():
            t = time_to_reach(r["history"], target)
            r["time_to_no_attention_best_s"] = t
            speed = f"{t_none / t:.1f}x sooner" if t else "never within the budget"
            print(f"{v:<7} best val ESR {r['best_val_esr']:.4f} ({r['steps']} steps); reached no-attention's best "
                  f"{target:.4f} at {t if t is not None else float('nan'):.0f} s: {speed}")
    (a.out / "bench_train.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
