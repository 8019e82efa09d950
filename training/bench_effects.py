"""Benchmark: every kind of effect, one model family, one fixed CPU budget per effect.

    python -m training.bench_effects --minutes 3 [--effects comp4 drive ...] [--seeds 0 1 2]
                                     [--baselines lstm tcn --baseline-effects drive amp echo]

For each catalogue effect (inverse tasks as ``noise_inv`` and ``timing_inv``): the demo-tier
dataset (built if missing), the product trained for ``--minutes`` at ``--threads`` (``--clock cpu``:
minutes of the run's own CPU time / threads, so that other work on the machine does not shrink the
budget, provided the threads sleep rather than spin while they wait for each other:
``OMP_WAIT_POLICY=PASSIVE``, as the Makefile sets; ``wall``: wall-clock minutes) with its parts
chosen from the data, then evaluated on held-out sources x the held-out knob grid:
ESR mean / median / worst, the dry input's ESR, MR-STFT, steady-tone junk, aliasing of a high
sine (model and target), the parts chosen, multiply-adds per second and state size. The
de-noiser also reports its output SNR against its input's per noise setting; time alignment the
median onset error of its output against its input's. Baselines (knob LSTM, FiLM TCN) train
through the same loop at the same budget. Results: out/bench/effects.json and a markdown table
(out/bench/effects.md). Ratios within one run are what to read: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .data import PairSet, build_dataset
from .effects import get_effect, heldout_grid, onset_errors_ms
from .evaluate import evaluate
from .model import StepModel, macs_per_second
from .train import TrainConfig, load_checkpoint, train

EFFECTS = ["comp4", "drive", "amp", "fuzz", "echo", "chorus", "flanger", "phaser", "noise_inv", "timing_inv"]
GOALS = {"comp4": 0.05, "drive": 0.05, "amp": 0.05, "fuzz": 0.05, "echo": 0.05, "chorus": 0.1, "flanger": 0.1,
         "phaser": 0.1}


def dataset(name: str, root: Path, data_seed: int | None = None, log=print) -> Path:
    """The effect's demo-tier dataset under ``root`` (built if missing): the default one (seed 0),
    or with ``data_seed`` one drawn afresh (sources, knob settings) under ``root/seed<N>``."""
    out = root / f"{name}-demo" if data_seed is None else root / f"seed{data_seed}" / f"{name}-demo"
    if not (out / "dataset.json").exists():
        base, inverse = (name[:-4], True) if name.endswith("_inv") else (name, False)
        build_dataset(get_effect(base), out, seed=data_seed or 0, inverse=inverse, log=log)
    return out


def alias_db(process, sample_rate: int, f0: float = 4700.0, level_db: float = -6.0, seconds: float = 1.0) -> float:
    """Energy of a high sine's aliases (everything but the tone, its harmonics below Nyquist and
    DC) relative to the output's harmonic energy, in dB. f0 is not a divisor of the sample rate, so
    folded harmonics land between the true ones."""
    n = int(seconds * sample_rate)
    x = (10 ** (level_db / 20) * np.sin(2 * np.pi * f0 * np.arange(n) / sample_rate)).astype(np.float32)
    y = np.asarray(process(x), np.float64)[n // 4:]
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / sample_rate)
    near = np.zeros_like(spec, bool)
    for k in range(1, int(sample_rate / 2 // f0) + 1):
        near |= np.abs(freqs - k * f0) < 30
    near |= freqs < 30
    return float(10 * np.log10(spec[~near].sum() / max(spec[near & (freqs >= 30)].sum(), 1e-30) + 1e-30))


def extras(name: str, run: Path, data: Path) -> dict:
    """Per-effect measures beyond ESR: aliasing, de-noising SNR, onset error."""
    model, ck = load_checkpoint(run / "best.pt")
    test = PairSet(data, "Test")
    H = model.cfg.hop
    out = {}
    mid = np.array([k.default for k in test.knob_specs])
    pos = torch.tensor([[k.to_normalized(v) for k, v in zip(test.knob_specs, mid)]], dtype=torch.float32)

    def model_fn(x):
        n = len(x) // H * H
        with torch.no_grad():
            return model(torch.from_numpy(x[:n])[None], pos)[0].numpy()

    out["alias_db_model"] = alias_db(model_fn, test.sample_rate)
    base = name[:-4] if name.endswith("_inv") else name
    if not name.endswith("_inv"):
        eff = get_effect(base)
        out["alias_db_target"] = alias_db(lambda x: eff.render(x, test.sample_rate, mid), test.sample_rate)
    if ck.get("arch", "pi") == "pi":
        out["parts"] = model.cfg.parts
        out["mmacs_per_s"] = round(macs_per_second(model.cfg) / 1e6, 1)
        out["state_kib"] = round(StepModel(model).state_size * 4 / 1024, 1)
    out["params_k"] = round(sum(p.numel() for p in model.parameters()) / 1e3, 1)
    if name in ("noise_inv", "timing_inv"):
        per = {}
        for x, y, k, p in zip(test.x, test.y, test.knobs, test.pairs):
            n = len(x) // H * H
            with torch.no_grad():
                pred = model(torch.from_numpy(x[:n])[None], torch.from_numpy(k)[None])[0].numpy()
            key = str(round(p.knobs[0], 2))
            d = per.setdefault(key, {"err": 0.0, "dry": 0.0, "sig": 0.0, "onset_in": [], "onset_out": []})
            d["err"] += float(((pred - y[:n]) ** 2).sum())
            d["dry"] += float(((x[:n] - y[:n]) ** 2).sum())
            d["sig"] += float((y[:n] ** 2).sum())
            if name == "timing_inv":
                d["onset_in"] += list(np.abs(onset_errors_ms(y[:n], x[:n], test.sample_rate)))
                d["onset_out"] += list(np.abs(onset_errors_ms(y[:n], pred, test.sample_rate)))
        if name == "noise_inv":
            out["snr_gain_db"] = {k: round(10 * np.log10(d["dry"] / max(d["err"], 1e-30)), 2) for k, d in per.items()}
        else:
            fin = lambda v: [e for e in v if np.isfinite(e)]  # noqa: E731  (NaN: no match found)
            out["onset_error_ms"] = {k: {"input": float(np.median(fin(d["onset_in"]) or [np.nan])),
                                         "model": float(np.median(fin(d["onset_out"]) or [np.nan])),
                                         "unmatched": len(d["onset_out"]) - len(fin(d["onset_out"]))}
                                     for k, d in per.items()}
    return out


def run_one(name: str, arch: str, seed: int, minutes: float, threads: int, data_root: Path, out_root: Path,
            clock: str = "cpu", fresh_data: bool = False, log=print) -> dict:
    data = dataset(name, data_root, seed if fresh_data else None, log)
    run = out_root / f"{name}-{arch}-s{seed}"
    t0 = time.time()
    s = train(TrainConfig(data=str(data), out=str(run), minutes=minutes, clock=clock, arch=arch, seed=seed,
                          threads=threads, val_every_s=max(10.0, minutes * 60 / 15)), log=log)
    if s["interrupted"]:  # a benchmark stopped by a signal records no row for the training it cut short
        raise SystemExit(f"{run}: training interrupted ({s['interrupted']}) after {s['steps']} steps: no row recorded")
    rep = evaluate(run / "best.pt", data, run, log=log)["summary"]
    row = {"effect": name, "arch": arch, "seed": seed, "minutes": minutes, "clock": clock, "data": str(data), "steps": s["steps"],
           "best_val_esr": s["best_val_esr"], "wall_s": round(time.time() - t0, 1), **rep, **extras(name, run, data)}
    log(json.dumps({k: row[k] for k in ("effect", "arch", "seed", "esr_mean", "esr_median", "esr_worst", "dry_esr_mean")}))
    return row


def spread(vals) -> str:
    v = np.array(vals, float)
    if len(v) == 1:
        return f"{v[0]:.3g}"
    return f"{np.median(v):.3g} ({v.min():.3g}-{v.max():.3g})"


def table(rows: list[dict]) -> str:
    lines = ["| effect | model | parts | ESR mean | ESR median | ESR worst | dry ESR mean | goal | MR-STFT | tone junk dB | "
             "alias dB model / target | MMAC/s | state KiB | steps | extra |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = []
    for r in rows:
        if (r["effect"], r["arch"]) not in keys:
            keys.append((r["effect"], r["arch"]))
    for eff, arch in keys:
        rs = [r for r in rows if r["effect"] == eff and r["arch"] == arch]
        g = GOALS.get(eff)
        means = [r["esr_mean"] for r in rs]
        verdict = "-" if g is None else (f"<= {g}: {'met' if np.median(means) <= g else 'missed'}")
        extra = ""
        if "snr_gain_db" in rs[0]:
            extra = "SNR gain dB per noise_db: " + ", ".join(f"{k}: {v}" for k, v in rs[0]["snr_gain_db"].items())
        if "onset_error_ms" in rs[0]:
            extra = "median onset error ms (input -> model) per push_ms: " + ", ".join(
                f"{k}: {v['input']:.2f} -> {v['model']:.2f}" for k, v in rs[0]["onset_error_ms"].items())
        at = f"{spread([r['alias_db_model'] for r in rs])} / {rs[0].get('alias_db_target', float('nan')):.1f}"
        lines.append(f"| {eff} | {arch} | {'+'.join(rs[0].get('parts', ['-']))} | {spread(means)} | "
                     f"{spread([r['esr_median'] for r in rs])} | {spread([r['esr_worst'] for r in rs])} | "
                     f"{rs[0]['dry_esr_mean']:.3g} | {verdict} | {spread([r['mrstft_mean'] for r in rs])} | "
                     f"{spread([r['tone_junk_db_worst'] for r in rs])} | {at} | {rs[0].get('mmacs_per_s', '-')} | "
                     f"{rs[0].get('state_kib', '-')} | {spread([r['steps'] for r in rs])} | {extra} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--effects", nargs="+", default=EFFECTS)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu (default): minutes of each run's own CPU time / threads, which other work on a "
                         "shared machine does not eat; wall: wall-clock minutes")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--fresh-data", action="store_true",
                    help="each seed on its own dataset drawn with that seed (DATA_ROOT/seed<N>/EFFECT-demo), as a fresh "
                         "clone's `make demo` would be; default: every seed on DATA_ROOT/EFFECT-demo")
    ap.add_argument("--baselines", nargs="*", default=[], help="e.g. lstm tcn")
    ap.add_argument("--baseline-effects", nargs="*", default=["drive", "amp", "echo"])
    ap.add_argument("--baselines-only", action="store_true", help="run only the baselines' rows (the product's are kept)")
    ap.add_argument("--data-root", type=Path, default=Path("data"))
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    res_path = a.out / "effects.json"
    rows = json.loads(res_path.read_text())["rows"] if res_path.exists() else []
    jobs = [] if a.baselines_only else [(e, "pi", s) for e in a.effects for s in a.seeds]
    jobs += [(e, b, s) for b in a.baselines for e in a.baseline_effects if e in a.effects for s in a.seeds]
    for eff, arch, seed in jobs:  # interleaved by effect; a finished row is kept if the run stops
        rows = [r for r in rows if (r["effect"], r["arch"], r["seed"], r["minutes"]) != (eff, arch, seed, a.minutes)]
        rows.append(run_one(eff, arch, seed, a.minutes, a.threads, a.data_root, a.out / "runs", a.clock,
                            a.fresh_data))
        res_path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "minutes": a.minutes, "threads": a.threads,
                                        "clock": a.clock, "rows": rows}, indent=1))
        (a.out / "effects.md").write_text(table([r for r in rows if r["minutes"] == a.minutes]) + "\n")
    print(table([r for r in rows if r["minutes"] == a.minutes]))


if __name__ == "__main__":
    main()
