"""Benchmark: does training ever wait on data? Loader throughput against the training step's use.

    python -m training.bench_loader [--data data/comp4-demo] [--batch 8] [--chunk-s 1.0]

Draws batches of random chunks from the Train split (``PairSet.batch``, what training/train.py
calls once per step), preloaded and memory-mapped, and compares chunks per second with what a
training run consumed (``chunks_per_second`` in the newest runs/*/train.json; without one, the demo
run's 10 steps/s x batch 8 = 80 chunks/s). The loader runs in the training process between
steps, so the ratio says how small a share of each step it takes: at ratio R, 1/R of the time.
Numbers are ratios in one run, as DESIGN.md asks: this machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .data import PairSet, build_dataset
from .effects import get_effect

DEMO_CONSUMPTION = 80.0  # chunks/s: the demo run, about 10 steps/s x batch 8


def training_consumption(runs: Path) -> tuple[float, str]:
    """(chunks per second, where it comes from): the newest train.json under ``runs``."""
    found = sorted(Path(runs).glob("*/train.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        try:
            cps = float(json.loads(path.read_text())["chunks_per_second"])
        except (KeyError, ValueError, json.JSONDecodeError):
            continue
        return cps, str(path)
    return DEMO_CONSUMPTION, "the demo run's 10 steps/s x batch 8 (no runs/*/train.json found)"


def loader_rate(data: PairSet, batch: int, chunk: int, seconds: float, seed: int = 0) -> float:
    """Chunks per second that ``data.batch`` delivers, over about ``seconds`` of wall time."""
    rng = np.random.default_rng(seed)
    data.batch(rng, batch, chunk)  # warm: page cache, allocator
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        data.batch(rng, batch, chunk)
        n += 1
    return n * batch / elapsed


def bench(root: Path, batch: int, chunk_s: float, seconds: float, runs: Path, log=print) -> dict:
    out = {}
    consumption, source = training_consumption(runs)
    for mode, mmap in (("preloaded", False), ("memory-mapped", True)):
        t0 = time.perf_counter()
        data = PairSet(root, "Train", mmap=mmap)
        load_s = time.perf_counter() - t0
        chunk = int(chunk_s * data.sample_rate)
        rate = loader_rate(data, batch, chunk, seconds)
        out[mode] = {"chunks_per_second": round(rate, 1), "load_seconds": round(load_s, 2),
                     "ratio": round(rate / consumption, 1)}
        log(f"loader {mode:13s}: {rate:9.0f} chunks/s (batch {batch} x {chunk_s:.2f} s chunks, "
            f"{len(data.pairs)} train pairs, loaded and checked in {load_s:.2f} s)")
    log(f"training consumes  : {consumption:9.1f} chunks/s ({source})")
    for mode, r in out.items():
        log(f"ratio {mode:13s}: {r['ratio']:.0f}x: the loader takes {100 / r['ratio']:.2f}% of a training step")
    out["training_chunks_per_second"] = consumption
    out["training_source"] = source
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/comp4-demo"),
                    help="a dataset directory (built as a small demo set in a temporary folder if missing)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chunk-s", type=float, default=1.0, help="look-back + scored tail (train.py: 0.5 + 0.5 s)")
    ap.add_argument("--seconds", type=float, default=2.0, help="wall time per measurement")
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.data
        if not (root / "dataset.json").exists() and not (root / "Train").is_dir():
            root = Path(tmp) / "comp4-demo"
            print(f"{a.data} not found: building a demo dataset in {root}", file=sys.stderr)
            build_dataset(get_effect("comp4"), root, log=lambda m: print(m, file=sys.stderr))
        result = bench(root, a.batch, a.chunk_s, a.seconds, a.runs)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
