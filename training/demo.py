"""The demo's host-side ends: the input and knob sweep before the device render, the report after.

    python -m training.demo prepare --data data/comp4-demo --out out/demo
        -> input.wav (held-out Test sources), knobs.csv (a sweep of every knob), target.wav
    (the device renders model.wav:  python -m device render --bundle ... --knobs knobs.csv)
    python -m training.demo report --out out/demo --run runs/comp4 --bundle build/comp4
        -> demo.png (target vs model: waveform, spectrogram, knobs), report.md
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from device.automation import load_automation, positions_per_hop, save_automation
from device.knobspec import KnobSpec
from device.selftest import esr

from .data import read_pairs
from .effects import get_effect


def prepare(data: Path, out: Path, hop: int, seconds_per_source: float = 4.0) -> None:
    pairs, specs, sr, effect_name = read_pairs(data)
    effect = get_effect(effect_name)
    seen, parts = set(), []
    for p in pairs:  # one clip per held-out source, in dataset order
        if p.split == "Test" and p.source not in seen:
            seen.add(p.source)
            x, _ = sf.read(str(p.input), dtype="float32")
            x = x[: int(seconds_per_source * sr)]
            parts.append(x * (10 ** (-6 / 20) / max(float(np.abs(x).max()), 1e-6)))  # peaks at -6 dBFS: audible compression
    x = np.concatenate(parts)
    x = x[: len(x) // hop * hop]
    dur = len(x) / sr
    times = np.linspace(0, dur, int(dur * 10) + 1)  # 10 rows per second
    rng = np.random.default_rng(3)
    pos = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * times / dur * (j + 1) + rng.uniform(0, 6.28)) for j in range(len(specs))], 1)
    values = np.array([[s.from_normalized(p) for s, p in zip(specs, row)] for row in pos])
    out.mkdir(parents=True, exist_ok=True)
    save_automation(out / "knobs.csv", times, values, specs)
    # the target with exactly the per-hop knob values the device engine will see
    t2, v2 = load_automation(out / "knobs.csv", specs)
    rows = positions_per_hop(t2, v2, specs, len(x) // hop, hop, sr)
    phys = np.array([[s.from_normalized(float(p)) for s, p in zip(specs, row)] for row in rows])
    y = effect.render_automation(x, sr, phys, hop)
    sf.write(out / "input.wav", x, sr, subtype="FLOAT")
    sf.write(out / "target.wav", y, sr, subtype="FLOAT")
    print(f"demo input: {len(seen)} held-out sources, {dur:.1f} s, knob sweep of {[s.name for s in specs]} -> {out}")


def report(out: Path, run: Path, bundle_dir: Path, timings: dict | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x, sr = sf.read(out / "input.wav", dtype="float32")
    y, _ = sf.read(out / "target.wav", dtype="float32")
    m, _ = sf.read(out / "model.wav", dtype="float32")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    specs = [KnobSpec.from_dict(k) for k in manifest["knobs"]]
    times, values = load_automation(out / "knobs.csv", specs)
    train = json.loads((run / "train.json").read_text())
    ev = json.loads((run / "eval.json").read_text())["summary"]
    demo = {"esr_model": esr(y, m), "esr_dry": esr(y, x), "seconds": len(x) / sr}

    fig, axes = plt.subplots(4, 1, figsize=(11, 10), gridspec_kw={"height_ratios": [1.2, 1, 1, 0.8]})
    t = np.arange(len(x)) / sr
    axes[0].plot(t, x, color="0.75", lw=0.5, label="input (dry)")
    axes[0].plot(t, y, lw=0.5, label="target (pedalboard)")
    axes[0].plot(t, m, lw=0.5, alpha=0.8, label="model (TFLite on the device engine)")
    axes[0].set_ylabel("amplitude")
    axes[0].legend(fontsize=7, loc="upper right")
    axes[0].set_title(f"{manifest['effect']}: demo on held-out audio with a knob sweep — ESR model {demo['esr_model']:.4f}, "
                      f"dry {demo['esr_dry']:.3f}", fontsize=10)
    for ax, sig, name in ((axes[1], y, "target"), (axes[2], m, "model")):
        ax.specgram(sig + 1e-9, NFFT=1024, Fs=sr, noverlap=768, cmap="magma", vmin=-140, vmax=-20)
        ax.set_ylabel(f"{name}\nfrequency [Hz]")
        ax.set_ylim(0, 12000)
    for j, s in enumerate(specs):
        axes[3].plot(times, [s.to_normalized(v) for v in values[:, j]], label=s.label())
    axes[3].set_ylabel("knob position")
    axes[3].set_xlabel("time [s]")
    axes[3].legend(fontsize=7, ncol=len(specs))
    for ax in axes:
        ax.set_xlim(0, t[-1])
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=100)
    plt.close(fig)

    models = manifest["models"]
    lines = [f"# SignalTrain-Pi demo report: {manifest['effect']}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')}. Effect: {manifest['description']}. "
             f"Sample rate {manifest['sample_rate']} Hz, hop {manifest['hop']}, algorithmic latency "
             f"{manifest['latency_samples']} samples ({1000 * manifest['latency_samples'] / manifest['sample_rate']:.2f} ms).", "",
             "## Training", "",
             f"- {train['params'] / 1e3:.0f} k parameters, tier `{train['config']['tier']}`, attention `{train['model']['attention']}`; "
             f"{train['steps']} steps in {train['train_seconds']:.0f} s ({train['chunks_per_second']:.1f} chunks/s)",
             f"- best validation ESR {train['best_val_esr']:.4f} (dry signal {train['dry_val_esr']:.3f})", "",
             "## Test: held-out sources x held-out knob settings (PyTorch)", "",
             "| | mean | median | worst |", "|---|---|---|---|",
             f"| model ESR | {ev['esr_mean']:.4f} | {ev['esr_median']:.4f} | {ev['esr_worst']:.4f} |",
             f"| dry input ESR | {ev['dry_esr_mean']:.4f} | | {ev['dry_esr_worst']:.4f} |", "",
             f"{ev['test_sources']} sources x {ev['test_settings']} settings; MR-STFT {ev['mrstft_mean']:.3f}; "
             f"loudness difference {ev['loudness_diff_db_mean']:.2f} dB; worst setting {ev['worst_setting']}.", "",
             "## Conversion (TFLite vs PyTorch on the golden vectors)", "",
             "| precision | SNR vs PyTorch | ESR vs target | size | per-hop time (host, 1 thread) |", "|---|---|---|---|---|"]
    for p, e in models.items():
        v = e["verified"]
        lines.append(f"| {p} | {v['snr_db_vs_pytorch']:.1f} dB | {v['esr_vs_target']:.4f} | {v['size_kib']:.0f} KiB | "
                     f"{v['per_hop_ms_host']:.3f} ms ({100 * v['per_hop_ms_host'] / (1000 * manifest['hop'] / manifest['sample_rate']):.1f}% of real time) |")
    lines += ["", "## Device engine render (ai-edge-litert, the device environment)", "",
              f"- {demo['seconds']:.1f} s of held-out audio, every knob swept: ESR model {demo['esr_model']:.4f}, dry {demo['esr_dry']:.4f}",
              "- files: `input.wav`, `target.wav`, `model.wav`, `knobs.csv`, `demo.png`; training curve "
              f"`{run / 'loss.png'}`, test plots `{run / 'eval_settings.png'}`, `{run / 'level_curves.png'}`", ""]
    if timings:
        lines += ["## Time taken", ""] + [f"- {k}: {v:.0f} s" for k, v in timings.items()] + [""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "demo.json").write_text(json.dumps({"demo": demo, "test": ev}, indent=1))
    print(f"demo: ESR model {demo['esr_model']:.4f} vs dry {demo['esr_dry']:.4f}; test ESR mean {ev['esr_mean']:.4f}, "
          f"worst {ev['esr_worst']:.4f}")
    return out / "report.md"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hop", type=int, default=64)
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--timings", type=Path, default=None, help="a file of 'stage seconds' lines")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.data, a.out, a.hop)
    else:
        timings = None
        if a.timings and a.timings.exists():
            timings = {ln.split()[0]: float(ln.split()[1]) for ln in a.timings.read_text().splitlines() if ln.strip()}
        report(a.out, a.run, a.bundle, timings)


if __name__ == "__main__":
    main()
