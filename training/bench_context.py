"""Benchmark: cost of long context, sparse vs dense attention.

    python -m training.bench_context [--seconds 0.25 1 5 10] [--tier small]

One training step (forward + backward, batch 1) on chunks of each length, for sparse windowed
attention (the product) and dense causal attention (the comparison): wall time and activation
memory saved for backward, both per second of audio. The goal is sparse staying flat (<= 1.3x
from 1 s to 10 s) while dense grows. Times are the median of several repeats in one run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .model import SignalTrainPi, tier_config


def step_cost(model, seconds: float, repeats: int) -> tuple[float, float]:
    cfg = model.cfg
    n = int(seconds * cfg.sample_rate) // cfg.hop * cfg.hop
    x, k = 0.1 * torch.randn(1, n), torch.rand(1, cfg.n_knobs)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    times = []
    for r in range(repeats + 1):
        saved.clear()
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x, k).square().mean()
        loss.backward()
        if r:  # the first run warms up
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) / (n / cfg.sample_rate), sum(saved) / (n / cfg.sample_rate)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", nargs="+", type=float, default=[0.25, 1, 5, 10])
    ap.add_argument("--tier", default="small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("build/bench_context.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for att in ("sparse", "dense"):
        torch.manual_seed(0)
        model = SignalTrainPi(tier_config(a.tier, attention=att))
        for s in a.seconds:
            t, mem = step_cost(model, s, a.repeats)
            rows.append({"attention": att, "context_s": s, "train_ms_per_audio_s": 1000 * t, "saved_mb_per_audio_s": mem / 2 ** 20})
            print(f"{att:<6} {s:5.2f} s context: {1000 * t:7.1f} ms of training step per second of audio, "
                  f"{mem / 2 ** 20:7.1f} MB activations per second of audio", flush=True)
    for att in ("sparse", "dense"):
        r = {row["context_s"]: row for row in rows if row["attention"] == att}
        if 1 in r and 10 in r:
            print(f"{att}: 10 s vs 1 s context, time per audio second x{r[10]['train_ms_per_audio_s'] / r[1]['train_ms_per_audio_s']:.2f}, "
                  f"memory per audio second x{r[10]['saved_mb_per_audio_s'] / r[1]['saved_mb_per_audio_s']:.2f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
