"""Per-hop time of a bundle's streaming step model on this machine, one thread, state fed back;
and the engine's own work per ALSA period beside it.

    python -m device.bench_step --bundle build/comp4.pedal [--precision float32] [--hops 5000]
    python -m device.bench_step --bundle build/testkit/tiny.pedal --periods 64 128

Prints JSON. Without ``--periods``: median/p99 per-hop time and the fraction of real time it is
(hop / sample rate). With it: for each period size, the engine's whole per-period work
(``Engine.process``: knob glide, the model's invokes, output check, mix) against the model's
invokes alone, measured interleaved in one run (these machines are shared and noisy: only the
ratio means much), and the engine's own cost (everything but the invokes) per period, in
microseconds and as a multiple of one invoke. Run it on the box for the numbers that matter
(docs/realtime.md has the estimate for a Pi 4 and a Pi 5).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .bundle import load_bundle
from .engine import Engine, StepRunner


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


def time_periods(bundle_path, periods=(64, 128), precision: str | None = None, calls: int = 2000, rounds: int = 9,
                 threads: int = 1, seed: int = 0) -> dict:
    """The engine per period against the bare invoke, interleaved: ``rounds`` rounds, each timing
    ``calls`` calls of every item in turn; per item the lowest round's mean (the least disturbed)
    and the median round's."""
    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    engine = Engine(bundle, precision, threads)
    runner = engine.runner
    rng = np.random.default_rng(seed)
    x = {p: (0.1 * rng.standard_normal(p)).astype(np.float32) for p in periods}
    out = {p: np.zeros(p, np.float32) for p in periods}
    knobs = rng.uniform(0, 1, len(m.knobs)).astype(np.float32)
    invoke = runner.invoke
    items = {"invoke": invoke, "step": lambda: runner.step(x[periods[0]][:m.hop], knobs)}
    for p in periods:
        if p % m.hop:
            raise SystemExit(f"period {p} is not a multiple of the hop {m.hop}")
        items[f"engine_{p}"] = (lambda p=p: engine.process(x[p], knobs, out[p]))
    times = {name: [] for name in items}
    for name, f in items.items():  # warm up
        for _ in range(200):
            f()
    for _ in range(rounds):  # this thread's CPU time: what other processes take of the core is not counted
        for name, f in items.items():
            t0 = time.thread_time()
            for _ in range(calls):
                f()
            times[name].append((time.thread_time() - t0) / calls)
    best = {name: 1e6 * min(t) for name, t in times.items()}
    median = {name: 1e6 * float(np.median(t)) for name, t in times.items()}
    res = {"bundle": str(bundle_path), "precision": runner.entry.precision, "hop": m.hop,
           "state_floats": m.state_size, "knobs": len(m.knobs), "calls": calls, "rounds": rounds,
           "invoke_us": best["invoke"], "invoke_us_median": median["invoke"],
           "step_us": best["step"], "step_us_median": median["step"], "periods": {}}
    for p in periods:
        hops = p // m.hop
        own = best[f"engine_{p}"] - hops * best["invoke"]
        res["periods"][p] = {"hops": hops, "engine_us": best[f"engine_{p}"], "engine_us_median": median[f"engine_{p}"],
                             "invokes_us": hops * best["invoke"], "own_us": own,
                             "own_per_invoke": own / best["invoke"],
                             "own_fraction_of_invokes": own / (hops * best["invoke"]),
                             "engine_fraction_of_period": best[f"engine_{p}"] / (1e6 * p / m.sample_rate)}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--hops", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--periods", type=int, nargs="*", default=None,
                    help="period sizes in frames: time the engine's per-period work against the bare invokes")
    a = ap.parse_args(argv)
    if a.periods:
        print(json.dumps(time_periods(a.bundle, tuple(a.periods), a.precision, threads=a.threads), indent=1))
    else:
        print(json.dumps(time_steps(a.bundle, a.precision, a.hops, a.threads)))


if __name__ == "__main__":
    main()
