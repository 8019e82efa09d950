"""Benchmark: how many captured knob settings does a model need, and does the plan matter?

    python -m training.bench_capture [--effects comp4 drive] [--settings 8 16 32 64]
                                     [--plans lhs lhs0 random active] [--minutes 3] [--seconds 60] [--programs 1]
                                     [--nearest]

For each effect, captures are made the way ``python -m device capture`` makes them (the same
signal, checks and writer, device/capture), with the catalogue effect standing in for the pedal
and the audio made offline (a chain latency of ``LATENCY`` samples and a -90 dBFS noise floor in
place of the box and its cables): one capture per number of settings and plan (Latin hypercube,
uniform random draws, or active: half by hypercube, the rest proposed where an ensemble trained on
that half disagrees, as ``python -m training.propose`` and ``device capture --add`` do), each
trained for ``--minutes``; every model is then tested on one more
capture at ``--test-settings`` random settings none of them saw (seeded apart), on its Test part
(audio no model trained on; the held-out capture plays one program at all its settings, so rows
with any ``--programs`` are tested alike). Results: out/bench/capture.json and a markdown table
(out/bench/capture.md). Ratios within one run are what to read: the machine is shared.

``--nearest`` trains nothing (seconds, not hours): it asks what the plan alone is worth. Each
held-out setting is answered by the captured setting nearest to it in knob travel (a lookup table
of the captures, the crudest model a capture allows), and the ESR of that answer against the
held-out setting's own output on the Test part is reported, with the plan's coverage (the mean and
worst distance from a random setting to the nearest captured one, in knob travel 0..1 per knob),
over ``--plan-seeds`` plans of each kind. Results: out/bench/capture-nearest.{json,md}.
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
                     programs: int = 0, log=print) -> Capture:
    """A capture folder of ``effect`` (a catalogue Effect) at the settings of ``plan``, made offline
    through device/capture's checks and writer: a reference pass (the signal looped back), then one
    pass per setting, each playing its program (``programs`` as ``device capture --programs``).
    Every pass must pass the checks."""
    back = simulate_back(seed, latency, noise_dbfs)
    root.mkdir(parents=True, exist_ok=True)
    name = name or effect.name
    cap = Capture.create(root, name, f"{name}: {effect.name} captured offline", list(effect.knobs), plan,
                         {"kind": "offline"}, seconds, 0, -10.0, Limits(), 48000, programs)
    ref = check_reference(cap.signal, back(cap.signal.reference() * cap.level), cap.level, Limits())
    if not ref.ok:
        raise RuntimeError(f"{root}: reference refused: {ref.problems}")
    cap.record_reference(ref)
    capture_pending(cap, effect, back)
    log(f"{root}: {len(plan)} settings captured offline")
    return cap


def capture_pending(cap: Capture, effect, back) -> None:
    """Every pending pass of ``cap``, offline: ``back(played)`` is what the box records of it."""
    plan = cap.state["plan"]
    for i in cap.pending:
        sig = cap.signal_for(i)
        rec = back(effect.render(sig.audio * cap.level, 48000, plan[i]))
        check = check_pass(sig, rec, cap.level, Limits(), cap.state["latency_samples"])
        if not check.ok:
            raise RuntimeError(f"{cap.root}: pass {i + 1} at {plan[i]} refused: {check.problems}")
        cap.record_attempt(i, check, rec, keep_raw=False)


def train_run(data: Path, run: Path, seed: int, a, log=print) -> dict:
    s = train(TrainConfig(data=str(data), out=str(run), minutes=a.minutes, clock=a.clock, threads=a.threads,
                          seed=seed, val_every_s=max(10.0, a.minutes * 60 / 15)), log=log)
    if s["interrupted"]:  # a benchmark stopped by a signal records no row for the training it cut short
        raise SystemExit(f"{run}: training interrupted ({s['interrupted']}) after {s['steps']} steps: no row recorded")
    return s


def active_capture(effect, data: Path, n: int, a, log=print) -> dict:
    """The active plan, as a user runs it: a first capture of half the settings (Latin hypercube),
    an ensemble of ``ENSEMBLE`` models trained on it (seeds apart, each at the budget), then the
    other half where they disagree most (training/propose.py, through ``device capture --add``'s
    own code), captured too. -> what it took."""
    from device.capture.session import add_settings

    from .propose import FORMAT, propose
    from .train import load_checkpoint
    specs = list(effect.knobs)
    first = n // 2
    cap = simulate_capture(effect, data, make_plan(specs, first, **plan_kwargs("lhs", a.seed)), a.seconds,
                           programs=a.programs, log=log)
    models, steps = [], []
    for k in range(ENSEMBLE):
        run = a.out / "runs" / f"{data.name}-first-s{k}"
        steps.append(train_run(data, run, a.seed + k, a, log)["steps"])
        models.append(load_checkpoint(run / "best.pt")[0])
    x = cap.signal.region("val")[: int(4.0 * cap.signal.sample_rate)] * cap.level
    settings, scores = propose(specs, models, x, cap.state["plan"], n - first, seed=a.seed)
    f = data / "proposed.json"
    f.write_text(json.dumps({"format": FORMAT, "knobs": [k.name for k in specs], "settings": settings}))
    added = add_settings(cap, f)  # appends to cap's plan and saves it, as on the box
    capture_pending(cap, effect, simulate_back(a.seed))
    log(f"{data}: {first} + {added} proposed settings captured offline")
    return {"first_settings": first, "proposed": added, "ensemble_steps": steps,
            "disagreement": [round(s, 4) for s in scores]}


def simulate_back(seed: int, latency: int = LATENCY, noise_dbfs: float | None = NOISE_DBFS):
    rng = np.random.default_rng(seed)

    def back(x: np.ndarray) -> np.ndarray:
        rec = np.zeros(len(x) + int(Limits().max_latency_ms * 48) + latency, np.float32)
        rec[latency:latency + len(x)] = x
        if noise_dbfs is not None:
            rec += (10 ** (noise_dbfs / 20) * rng.standard_normal(len(rec))).astype(np.float32)
        return rec
    return back


ENSEMBLE = 2  # models whose disagreement picks the active plan's second half


def run_one(effect, n: int, plan_kind: str, a, test_dir: Path, log=print) -> dict:
    tag = f"{effect.name}-{plan_kind}-{n}" + ("" if a.programs == 1 else f"-p{a.programs}")
    data = a.out / "data" / tag
    if data.exists():
        shutil.rmtree(data)
    extra = {}
    if plan_kind == "active":
        extra = active_capture(effect, data, n, a, log)
    else:
        plan = make_plan(list(effect.knobs), n, **plan_kwargs(plan_kind, a.seed))
        simulate_capture(effect, data, plan, a.seconds, programs=a.programs, log=log)
    run = a.out / "runs" / f"capture-{tag}"
    t0 = time.time()
    s = train_run(data, run, a.seed, a, log)
    rep = evaluate(run / "best.pt", test_dir, run, log=log)["summary"]
    if not a.keep_data:
        shutil.rmtree(data)
    row = {"effect": effect.name, "plan": plan_kind, "settings": n, "minutes": a.minutes, "clock": a.clock,
           "seconds": a.seconds, "programs": a.programs,
           "steps": s["steps"], "wall_s": round(time.time() - t0, 1),
           **{k: rep[k] for k in ("esr_mean", "esr_median", "esr_worst", "dry_esr_mean", "test_settings")}, **extra}
    log(json.dumps(row))
    return row


PLANS = {"lhs": "Latin hypercube, 5 values per knob (the capture's default)",
         "lhs0": "Latin hypercube, a value per setting (--levels 0)", "random": "uniform random draws",
         "active": f"half the settings by Latin hypercube, then the other half where an ensemble of {ENSEMBLE} models "
                   "trained on the first half disagrees most (training/propose.py; the ensemble's training is extra)"}


def plan_kwargs(kind: str, seed: int) -> dict:
    return {"seed": seed, "kind": "random" if kind == "random" else "lhs", "levels": 0 if kind == "lhs0" else 5}


def positions(specs, plan) -> np.ndarray:
    return np.array([[k.to_normalized(v) for k, v in zip(specs, row)] for row in plan])


def nearest_setting(effect, n: int, plan_kind: str, plan_seed: int, test_plan: list, render, test_range,
                    probes: np.ndarray) -> dict:
    """The plan's coverage and the held-out ESR of answering each held-out setting with the
    captured setting nearest to it (no model)."""
    specs = list(effect.knobs)
    plan = make_plan(specs, n, **plan_kwargs(plan_kind, plan_seed))
    pos, test_pos = positions(specs, plan), positions(specs, test_plan)

    def nearest(points):
        d = np.sqrt(((points[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
        return d.min(1), d.argmin(1)

    cover, _ = nearest(probes)
    a, b = test_range
    esrs = []
    for setting, j in zip(test_plan, nearest(test_pos)[1]):
        target, guess = render(tuple(setting))[a:b], render(tuple(plan[j]))[a:b]
        esrs.append(float(np.sum((guess - target) ** 2) / max(float(np.sum(target ** 2)), 1e-12)))
    return {"effect": effect.name, "plan": plan_kind, "settings": n, "plan_seed": plan_seed,
            "esr_mean": float(np.mean(esrs)), "esr_median": float(np.median(esrs)), "esr_worst": float(np.max(esrs)),
            "cover_mean": float(cover.mean()), "cover_worst": float(cover.max())}


def run_nearest(a) -> list[dict]:
    from device.capture.signal import make_signal
    sig = make_signal(a.seconds)
    played = (sig.audio * 10 ** (-10.0 / 20)).astype(np.float32)  # the capture's default --level-db
    ranges = sig.split_ranges()
    # the effect renders the Val part (its state settles: a 1 s release, a filter) and then the Test part
    start, (ta, tb) = ranges["Val"][0], ranges["Test"]
    test_range = (ta - start, tb - start)
    rows = []
    for name in a.effects:
        effect = get_effect(name)
        specs = list(effect.knobs)
        cache: dict[tuple, np.ndarray] = {}

        def render(setting):
            if setting not in cache:
                if len(cache) > 800:  # random plans never repeat a setting: keep the memory bounded
                    for k in [k for k in cache if k not in targets][:400]:
                        del cache[k]
                cache[setting] = effect.render(played[start:tb], sig.sample_rate, list(setting))
            return cache[setting]

        test_plan = make_plan(specs, a.test_settings, seed=10_000 + a.seed, kind="random")
        targets = {tuple(s) for s in test_plan}
        x = played[ta:tb]
        dry = [float(np.sum((x - render(tuple(s))[test_range[0]:]) ** 2) / np.sum(render(tuple(s))[test_range[0]:] ** 2))
               for s in test_plan]
        probes = np.random.default_rng(20_000 + a.seed).uniform(0, 1, (4000, len(specs)))
        for n in a.settings:
            for kind in [k for k in a.plans if k != "active"]:  # the active plan needs models: not a lookup
                runs = [nearest_setting(effect, n, kind, a.seed + s, test_plan, render, test_range, probes)
                        for s in range(a.plan_seeds)]
                row = {"effect": name, "plan": kind, "settings": n, "plan_seeds": a.plan_seeds,
                       "test_settings": a.test_settings, "seconds": a.seconds, "dry_esr_mean": float(np.mean(dry)),
                       **{k: float(np.mean([r[k] for r in runs])) for k in
                          ("esr_mean", "esr_median", "esr_worst", "cover_mean", "cover_worst")},
                       "esr_mean_spread": [float(min(r["esr_mean"] for r in runs)),
                                           float(max(r["esr_mean"] for r in runs))]}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def nearest_table(rows: list[dict]) -> str:
    lines = ["| effect | plan | settings | nearest-setting ESR, mean (range over plans) | median | worst | "
             "coverage: mean / worst distance | dry ESR |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["effect"], r["settings"], r["plan"])):
        lo, hi = r["esr_mean_spread"]
        lines.append(f"| {r['effect']} | {r['plan']} | {r['settings']} | {r['esr_mean']:.3f} ({lo:.3f}..{hi:.3f}) | "
                     f"{r['esr_median']:.3f} | {r['esr_worst']:.3f} | {r['cover_mean']:.3f} / {r['cover_worst']:.3f} | "
                     f"{r['dry_esr_mean']:.3f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| effect | plan | settings | programs | held-out ESR mean | median | worst | dry ESR mean | steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["effect"], r["plan"], r["settings"], r.get("programs", 1))):
        p = r.get("programs", 1)
        lines.append(f"| {r['effect']} | {r['plan']} | {r['settings']} | {'one per setting' if p == 0 else p} | "
                     f"{r['esr_mean']:.3g} | {r['esr_median']:.3g} | "
                     f"{r['esr_worst']:.3g} | {r['dry_esr_mean']:.3g} | {r['steps']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--effects", nargs="+", default=["comp4", "drive"])
    ap.add_argument("--settings", nargs="+", type=int, default=[8, 16, 32, 64])
    ap.add_argument("--plans", nargs="+", choices=tuple(PLANS), default=["lhs", "random"],
                    help="; ".join(f"{k}: {v}" for k, v in PLANS.items()))
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    ap.add_argument("--seconds", type=float, default=60.0, help="capture signal length per setting")
    ap.add_argument("--programs", type=int, default=1,
                    help="program material of the training captures, as `device capture --programs`: 1 (the default "
                         "here, as the rows before 2026-12-01) the same program at every setting; 0 one per setting")
    ap.add_argument("--test-settings", type=int, default=16, help="held-out random settings of the test capture")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="the budget in this process's CPU minutes per thread (other work on the machine does not "
                         "eat it; run with OMP_WAIT_POLICY=PASSIVE) or in wall-clock minutes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--redo", action="store_true", help="run again the rows already in OUT/capture.json")
    ap.add_argument("--keep-data", action="store_true", help="keep each training capture (~11 MB per setting-minute)")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("--nearest", action="store_true", help="no training: the plan's coverage and the ESR of "
                    "answering each held-out setting with the nearest captured one")
    ap.add_argument("--plan-seeds", type=int, default=5, help="--nearest: plans of each kind to average over")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.nearest:
        rows = run_nearest(a)
        (a.out / "capture-nearest.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows},
                                                               indent=1))
        (a.out / "capture-nearest.md").write_text(nearest_table(rows) + "\n")
        print(nearest_table(rows))
        return
    res_path = a.out / "capture.json"
    rows = json.loads(res_path.read_text())["rows"] if res_path.exists() else []
    tests = {}
    for name in a.effects:
        effect = get_effect(name)
        tests[name] = a.out / "data" / f"{name}-heldout-{a.test_settings}x{a.seconds:g}s"
        if not (tests[name] / "capture.json").exists():
            plan = make_plan(list(effect.knobs), a.test_settings, seed=10_000 + a.seed, kind="random")
            simulate_capture(effect, tests[name], plan, a.seconds, seed=1, programs=1)
    # the smallest captures first, every effect and plan at each size: a run stopped early still
    # compares them all at its small end; a row already there (same effect, plan, size, budget,
    # signal) is kept unless --redo
    for n in sorted(a.settings):
        for name in a.effects:
            for kind in a.plans:
                key = (name, kind, n, a.minutes, a.seconds, a.programs)
                same = [r for r in rows if (r["effect"], r["plan"], r["settings"], r["minutes"], r["seconds"],
                                            r.get("programs", 1)) == key]
                if same and not a.redo:
                    continue
                rows = [r for r in rows if r not in same]
                rows.append(run_one(get_effect(name), n, kind, a, tests[name]))
                res_path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
                (a.out / "capture.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
