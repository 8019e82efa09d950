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
    plot_settings(settings, out / "eval_settings.png", test.knob_specs)
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


def knob_name(spec) -> str:
    """A knob's name without the unit suffix that its unit repeats: threshold_db (dB) -> threshold."""
    for suffix in ("_db", "_ms", "_hz", "_s", "_pct"):
        if spec.unit and spec.name.endswith(suffix):
            return spec.name[: -len(suffix)]
    return spec.name


def knob_text(spec, value: float) -> str:
    """One knob at a value for a musician: "threshold -40 dB", "ratio 8:1", "attack 3 ms"."""
    unit = spec.unit if spec.unit[:1] in (":", "%", "") else " " + spec.unit
    return f"{knob_name(spec)} {value:.3g}{unit}"


def spread_settings(positions: np.ndarray, n: int, curves: np.ndarray | None = None) -> list[int]:
    """Indices of ``n`` distinct knob settings far apart, starting from the one nearest the middle of
    the knob space, then each time the one farthest from those chosen: by their ``curves`` (one row
    per index) when given, so that the settings picked look different, else by knob positions."""
    _, first = np.unique(np.round(positions, 4), axis=0, return_index=True)
    first = np.sort(first)  # one index per distinct setting, in data order
    pts = (curves if curves is not None else positions)[first]
    chosen = [int(np.argmin(((positions[first] - 0.5) ** 2).sum(1)))]
    while len(chosen) < min(n, len(first)):
        dist = np.min([((pts - pts[c]) ** 2).sum(1) for c in chosen], axis=0)
        chosen.append(int(np.argmax(dist)))
    return [int(first[c]) for c in chosen]


def plot_settings(settings: list[dict], path: Path, knob_specs=None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(settings)), 3.8))
    i = np.arange(len(settings))
    ax.bar(i - 0.2, [s["dry_esr"] for s in settings], 0.4, label="dry input", color="0.7")
    ax.bar(i + 0.2, [s["esr"] for s in settings], 0.4, label="model")
    ax.set_yscale("log")
    ax.axhline(0.01, color="g", ls=":", label="ESR 0.01 (NAM 'great')")
    ax.set_xticks(i, ["\n".join(f"{v:.3g}" for v in s["knobs"].values()) for s in settings], fontsize=6)
    names = [f"{knob_name(k)} [{k.unit}]" if k.unit else k.name for k in knob_specs] if knob_specs else list(settings[0]["knobs"])
    ax.set_xlabel("held-out knob setting, top to bottom:\n" + ", ".join(names), fontsize=8)
    ax.set_ylabel("ESR vs target")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def static_curves(model, positions: np.ndarray, values, effect, levels_db: np.ndarray, sample_rate: int,
                  seconds: float = 1.5, hop: int = 64):
    """Steady-state output level of a 1 kHz tone per input level, at one knob setting: the model's
    (None without a model) and the effect's (None without a renderer), in dBFS of a sine's peak. The
    tone lasts ``seconds`` and its last third is measured, so a 1 s attack has settled."""
    t = np.arange(int(seconds * sample_rate) // hop * hop) / sample_rate
    x = (10 ** (levels_db[:, None] / 20) * np.sin(2 * np.pi * 1000 * t)[None]).astype(np.float32)  # (levels, N)
    tail = slice(2 * x.shape[1] // 3, None)
    out_m = out_t = None
    if model is not None:
        k = np.repeat(np.asarray(positions, np.float32)[None], len(levels_db), 0)
        y = model(torch.from_numpy(x), torch.from_numpy(k)).numpy()  # (levels, N)
        out_m = np.array([rms_db(v[tail]) + 3.01 for v in y])
    if effect is not None:
        out_t = np.array([rms_db(effect.render(v, sample_rate, values)[tail]) + 3.01 for v in x])
    return out_m, out_t


def plot_level_curves(model, ck, test: PairSet, path: Path, n_settings: int = 4) -> list[str]:
    """Level in vs level out of a steady 1 kHz tone (a compressor's static curve) at ``n_settings``
    held-out settings spread over the knobs: model solid, target dashed, one colour per setting
    named with its knobs and units; beside it the model's error in dB. -> the legend's entries."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    effect = CATALOGUE.get(ck["effect"])  # a user's recorded effect has no renderer: model curves only
    levels = np.arange(-60, 1, 4.0)
    target_curves = None
    if effect is not None:  # settings whose static curves differ (a compressor's attack barely moves it)
        _, first = np.unique(np.round(test.knobs, 4), axis=0, return_index=True)
        target_curves = np.zeros((len(test.pairs), len(levels)))
        for i in first:
            target_curves[i] = static_curves(None, None, test.pairs[i].knobs, effect, levels, test.sample_rate)[1]
    picks = spread_settings(test.knobs, n_settings, target_curves)
    fig, axes = plt.subplots(1, 2 if effect is not None else 1, figsize=(11 if effect is not None else 6, 4.6),
                             squeeze=False)
    ax, err_ax = axes[0, 0], (axes[0, 1] if effect is not None else None)
    for i in picks:
        values = test.pairs[i].knobs
        out_m, out_t = static_curves(model, test.knobs[i], values, effect, levels, model.cfg.sample_rate,
                                     hop=model.cfg.hop)
        name = ", ".join(knob_text(s, v) for s, v in zip(test.knob_specs, values))
        line, = ax.plot(levels, out_m, "-", label=name)
        if out_t is not None:
            ax.plot(levels, out_t, "--", color=line.get_color())
            err_ax.plot(levels, out_m - out_t, "-", color=line.get_color())
    ax.plot(levels, levels, ":", color="0.6", lw=1)
    # the line styles once, then one entry per setting (colour): no two entries read the same
    style = [plt.Line2D([], [], color="0.2", ls="-", label="model"),
             plt.Line2D([], [], color="0.2", ls=":", lw=1, label="output = input")]
    if effect is not None:
        style.insert(1, plt.Line2D([], [], color="0.2", ls="--", label=f"target ({effect.name})"))
    first = ax.legend(handles=style, fontsize=7, loc="upper left")
    ax.add_artist(first)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=1, frameon=False)
    ax.set_xlabel("input level [dBFS, 1 kHz tone]")
    ax.set_ylabel("output level [dBFS]")
    ax.set_title(f"static curve: {ck['effect']}, held-out settings", fontsize=9)
    ax.grid(alpha=0.3)
    if err_ax is not None:
        err_ax.axhline(0, color="0.6", lw=1)
        err_ax.set_xlabel("input level [dBFS, 1 kHz tone]")
        err_ax.set_ylabel("model - target [dB]")
        err_ax.set_title("error of the model's static curve", fontsize=9)
        err_ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * len(picks), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [h.get_label() for h in style] + labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    evaluate(a.checkpoint, a.data, a.out)


if __name__ == "__main__":
    main()
