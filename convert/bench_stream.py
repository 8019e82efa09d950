"""Benchmark: per-hop time of the streaming TFLite model for each size tier and hop.

    python -m convert.bench_stream [--tiers nano small standard] [--hops 64 128]

Each (tier, hop) model (random weights: speed does not depend on them) goes through the real
conversion into a bundle; the device environment then times it with one thread, feeding the
state back each hop (python -m device.bench_step). Reported as a fraction of real time at 48 kHz
beside the multiply-adds per second of audio, which do not depend on the machine. Every model is
timed in the same run, so the ratios between rows hold even on a noisy machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from training.effects import get_effect
from training.model import SignalTrainPi, macs_per_second, tier_config

from .pipeline import convert

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", nargs="+", default=["nano", "small", "standard"])
    ap.add_argument("--hops", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--data", type=Path, default=REPO / "build/testkit/data", help="any comp4 dataset (golden vectors)")
    ap.add_argument("--out", type=Path, default=REPO / "build/bench_stream")
    ap.add_argument("--device-python", default=str(REPO / ".venv-device/bin/python"))
    ap.add_argument("--precision", default="float32", help="which of each bundle's models to time")
    a = ap.parse_args(argv)
    effect = get_effect("comp4")
    rows = []
    for tier in a.tiers:
        for hop in a.hops:
            torch.manual_seed(0)
            cfg = tier_config(tier, hop=hop)
            model = SignalTrainPi(cfg)
            name = f"{tier}_h{hop}"
            ck = a.out / f"{name}.pt"
            ck.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model_config": cfg.to_dict(), "state_dict": model.state_dict(), "effect": "comp4",
                        "knobs": [k.to_dict() for k in effect.knobs], "metrics": {}, "train_config": {}}, ck)
            convert(ck, a.data, a.out / name, log=lambda *m: None)
            r = subprocess.run([a.device_python, "-m", "device.bench_step", "--bundle", str(a.out / f"{name}.pedal"),
                                "--precision", a.precision],
                               capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
            if r.returncode:
                sys.exit(f"bench_step failed for {name}: {r.stderr[-2000:]}")
            t = json.loads(r.stdout.strip().splitlines()[-1])
            t.update(tier=tier, params=sum(p.numel() for p in model.parameters()), mmacs_per_s=macs_per_second(cfg) / 1e6)
            rows.append(t)
            print(f"{tier:<9} hop {hop:>3} {t['precision']}: {t['params'] / 1e3:6.1f} k params, {t['mmacs_per_s']:6.1f} M MAC/s, "
                  f"per hop {t['hop_ms_median']:.4f} ms median / {t['hop_ms_p99']:.4f} ms p99 = "
                  f"{100 * t['realtime_fraction_median']:.2f}% / {100 * t['realtime_fraction_p99']:.2f}% of real time", flush=True)
    (a.out / "bench_stream.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
