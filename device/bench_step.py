"""Per-hop time of a bundle's streaming step model on this machine: one thread, state fed back.

    python -m device.bench_step --bundle build/comp4.pedal [--precision float32] [--hops 5000]

Prints JSON: median/p99 per-hop time and the fraction of real time it is (hop / sample rate).
Run it on the box itself for the numbers that matter; on x86 a Pi 4 core is about 8x slower.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .bundle import load_bundle
from .engine import StepRunner


def time_steps(bundle_path, precision: str | None = None, hops: int = 5000, threads: int = 1, seed: int = 0) -> dict:
    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    runner = StepRunner(bundle, precision, threads)
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.standard_normal((hops, m.hop))).astype(np.float32)
    k = rng.uniform(0, 1, (hops, len(m.knobs))).astype(np.float32)
    for t in range(200):  # warm up caches and the allocator
        runner.step(x[t], k[t])
    dt = np.empty(hops)
    for t in range(hops):
        t0 = time.perf_counter()
        runner.step(x[t], k[t])
        dt[t] = time.perf_counter() - t0
    hop_s = m.hop / m.sample_rate
    return {"bundle": str(bundle_path), "precision": runner.entry.precision, "hop": m.hop, "hops": hops,
            "hop_ms_median": 1000 * float(np.median(dt)), "hop_ms_p99": 1000 * float(np.percentile(dt, 99)),
            "realtime_fraction_median": float(np.median(dt)) / hop_s, "realtime_fraction_p99": float(np.percentile(dt, 99)) / hop_s}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--hops", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    print(json.dumps(time_steps(a.bundle, a.precision, a.hops, a.threads)))


if __name__ == "__main__":
    main()
