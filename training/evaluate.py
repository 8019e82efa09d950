"""Evaluate a checkpoint on the Test split: held-out source material at held-out knob settings.

    python -m training.evaluate --checkpoint runs/comp4/best.pt --data data/comp4-demo --out runs/comp4

Per held-out knob setting, ESR = sum of squared error / sum of squared target over every test
source (energy-weighted, so one near-silent clip cannot dominate), for the model and for the dry
input; MR-STFT (auraloss) and the loudness difference beside it. Writes eval.json and plots: ESR
per setting, and level-in/level-out curves of target vs model at a few settings.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from .data import PairSet
from .effects import CATALOGUE
from .train import load_checkpoint


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-12))


@torch.no_grad()
def evaluate(checkpoint: Path, data: Path, out: Path, log=print) -> dict:
    import auraloss
    model, ck = load_checkpoint(checkpoint)
    test = PairSet(data, "Test")
    H = model.cfg.hop
    mrstft = auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=[256, 1024, 4096], hop_sizes=[64, 256, 1024],
                                                   win_lengths=[256, 1024, 4096])
    per = defaultdict(lambda: {"err": 0.0, "dry_err": 0.0, "sig": 0.0, "mrstft": [], "loud": []})
    for x, y, k, p in zip(test.x, test.y, test.knobs, test.pairs):
        n = len(x) // H * H
        xt, yt = torch.from_numpy(x[:n])[None], torch.from_numpy(y[:n])[None]
        pred = model(xt, torch.from_numpy(k)[None])
        key = tuple(round(v, 4) for v in p.knobs)
        d = per[key]
        d["err"] += float(((pred - yt) ** 2).sum())
        d["dry_err"] += float(((xt - yt) ** 2).sum())
        d["sig"] += float((yt ** 2).sum())
        d["mrstft"].append(float(mrstft(pred[:, None], yt[:, None])))
        d["loud"].append(abs(rms_db(pred.numpy()) - rms_db(y[:n])))
    settings = []
    for key, d in per.items():
        settings.append({"knobs": dict(zip([s.name for s in test.knob_specs], key)),
                         "esr": d["err"] / max(d["sig"], 1e-12), "dry_esr": d["dry_err"] / max(d["sig"], 1e-12),
                         "mrstft": float(np.mean(d["mrstft"])), "loudness_diff_db": float(np.mean(d["loud"]))})
    settings.sort(key=lambda s: s["esr"])
    esr = np.array([s["esr"] for s in settings])
    dry = np.array([s["dry_esr"] for s in settings])
    junk = [tone_junk_db(model, k) for k in test.knobs[:: max(1, len(test.knobs) // 4)]]
    summary = {"test_settings": len(settings), "test_sources": len({p.source for p in test.pairs}),
               "esr_mean": float(esr.mean()), "esr_median": float(np.median(esr)), "esr_worst": float(esr.max()),
               "worst_setting": settings[-1]["knobs"], "dry_esr_mean": float(dry.mean()), "dry_esr_worst": float(dry.max()),
               "mrstft_mean": float(np.mean([s["mrstft"] for s in settings])),
               "loudness_diff_db_mean": float(np.mean([s["loudness_diff_db"] for s in settings])),
               "tone_junk_db_worst": float(max(junk))}
    report = {"checkpoint": str(checkpoint), "effect": ck["effect"], "summary": summary, "settings": settings}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    plot_settings(settings, out / "eval_settings.png")
    plot_level_curves(model, ck, test, out / "level_curves.png")
    log(f"test ({summary['test_sources']} held-out sources x {len(settings)} held-out settings): ESR mean "
        f"{summary['esr_mean']:.4f}, median {summary['esr_median']:.4f}, worst {summary['esr_worst']:.4f} at "
        f"{summary['worst_setting']}; dry input ESR mean {summary['dry_esr_mean']:.3f}, worst {summary['dry_esr_worst']:.3f}; "
        f"MR-STFT {summary['mrstft_mean']:.3f}; loudness diff {summary['loudness_diff_db_mean']:.2f} dB; "
        f"steady-tone junk {summary['tone_junk_db_worst']:.1f} dB")
    return report


@torch.no_grad()
def tone_junk_db(model, knob_positions: np.ndarray, f0: float = 1000.0, level_db: float = -6.0) -> float:
    """A steady tone through the model: energy that is neither the tone nor its harmonics,
    relative to the tone, in dB (hop-rate ripple, buzz, DC). The real compressor: about -134 dB."""
    sr = model.cfg.sample_rate
    n = 2 * sr // model.cfg.hop * model.cfg.hop
    x = (10 ** (level_db / 20) * np.sin(2 * np.pi * f0 * np.arange(n) / sr)).astype(np.float32)
    y = model(torch.from_numpy(x)[None], torch.from_numpy(np.asarray(knob_positions, np.float32))[None])[0].numpy()[n // 2:]
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / sr)
    harmonic = np.zeros(len(freqs), bool)
    for h in range(1, int(freqs[-1] // f0) + 1):
        harmonic |= np.abs(freqs - h * f0) < 20
    tone = spec[np.abs(freqs - f0) < 20].sum()
    return float(10 * np.log10(spec[~harmonic].sum() / max(tone, 1e-30) + 1e-30))


def plot_settings(settings: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(settings)), 3.8))
    i = np.arange(len(settings))
    ax.bar(i - 0.2, [s["dry_esr"] for s in settings], 0.4, label="dry input", color="0.7")
    ax.bar(i + 0.2, [s["esr"] for s in settings], 0.4, label="model")
    ax.set_yscale("log")
    ax.axhline(0.01, color="g", ls=":", label="ESR 0.01 (NAM 'great')")
    ax.set_xticks(i, ["\n".join(f"{v:g}" for v in s["knobs"].values()) for s in settings], fontsize=6)
    ax.set_xlabel("held-out setting (" + ", ".join(settings[0]["knobs"]) + ")", fontsize=8)
    ax.set_ylabel("ESR vs target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_level_curves(model, ck, test: PairSet, path: Path, n_settings: int = 3) -> None:
    """Steady-state output level vs input level of a 1 kHz tone (a compressor's static curve)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    effect = CATALOGUE.get(ck["effect"])  # a user's recorded effect has no renderer: model curves only
    sr, H = model.cfg.sample_rate, model.cfg.hop
    levels = np.arange(-60, 1, 4.0)
    t = np.arange(int(0.5 * sr) // H * H) / sr
    fig, ax = plt.subplots(figsize=(5.5, 4))
    rng = np.random.default_rng(0)
    picks = rng.choice(len(test.pairs), min(n_settings, len(test.pairs)), replace=False)
    for c, i in enumerate(picks):
        values, pos = test.pairs[i].knobs, test.knobs[i]
        out_m, out_t = [], []
        for lv in levels:
            x = (10 ** (lv / 20) * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
            y = model(torch.from_numpy(x)[None], torch.from_numpy(pos)[None])[0].numpy()
            out_m.append(rms_db(y[len(y) // 2:]) + 3.01)
            if effect is not None:
                out_t.append(rms_db(effect.render(x, sr, values)[len(x) // 2:]) + 3.01)
        label = ", ".join(f"{v:g}" for v in values)
        line, = ax.plot(levels, out_m, "-", label=f"model {label}")
        if out_t:
            ax.plot(levels, out_t, "--", color=line.get_color(), label="target")
    ax.plot(levels, levels, ":", color="0.6", lw=1)
    ax.set_xlabel("input level [dBFS, 1 kHz tone]")
    ax.set_ylabel("output level [dBFS]")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    evaluate(a.checkpoint, a.data, a.out)


if __name__ == "__main__":
    main()
