"""The demo's host-side ends: the input and knobs before the device render, the report after.

    python -m training.demo prepare --data data/comp4-demo --out out/demo
        -> input.wav (held-out Test audio), knobs.csv (knob automation), target.wav
    (the device renders model.wav:  python -m device render --bundle ... --knobs knobs.csv)
    python -m training.demo report --out out/demo --run runs/comp4 --bundle build/comp4
        -> demo.png (target vs model: waveform, spectrogram, knobs), report.md

Any dataset works. Where the catalogue rendered the dataset's targets (a built, forward dataset),
every knob sweeps and the target is rendered again with the same per-hop knob values. Where the
targets cannot be rendered again (recordings, an effect not in the catalogue, an inverse dataset
``*_inv``), the demo is held-out recorded pairs: one clip per Test source at the knob setting it
was recorded at (knobs.csv steps between clips, with silence between them), target = the recording.
``held_out`` is the same choice for the conversion's golden vectors (convert/pipeline.py).
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

from .data import PairSet, read_dataset
from .effects import CATALOGUE, Effect, base_effect_name

GAP_S = 0.5  # silence between recorded clips: each recorded target began from silence, so the model must too


def dataset_renderer(data: Path) -> Effect | None:
    """The catalogue effect that rendered this dataset's targets, or None where they cannot be
    rendered again: recordings (a knobs.csv or SignalTrain folder, even one that borrows a
    catalogue effect's knobs: its targets are what was recorded), an effect not in the catalogue,
    or an inverse dataset (``*_inv``: its targets are the clean inputs)."""
    meta_path = Path(data) / "dataset.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    name = str(meta.get("effect", ""))
    if meta.get("inverse") or base_effect_name(name)[1] or name not in CATALOGUE:
        return None
    return CATALOGUE[name]


def _knobs_file_description(root: Path) -> str | None:
    for name in ("knobs.json", "knobs.toml"):
        f = root / name
        if f.is_file():
            try:
                if f.suffix == ".toml":
                    import tomllib
                    d = tomllib.loads(f.read_text())
                else:
                    d = json.loads(f.read_text())
            except Exception:  # read_dataset reports a malformed knobs file; a description is not worth a crash
                return None
            return str(d["description"]) if isinstance(d, dict) and d.get("description") else None
    return None


def dataset_description(data: Path, effect_name: str, specs: list[KnobSpec]) -> str:
    """What the effect is, for the manifest and the report: the dataset's own words (dataset.json's
    or the knobs file's ``description``), else the catalogue's, else a generic line. Never fails."""
    root = Path(data)
    meta_path = root / "dataset.json"
    if meta_path.exists():
        try:
            d = json.loads(meta_path.read_text()).get("description")
        except (ValueError, AttributeError):
            d = None
        if d:
            return str(d)
    d = _knobs_file_description(root)
    if d:
        return d
    base, inverse = base_effect_name(effect_name)
    if base in CATALOGUE:
        return CATALOGUE[base].description + (" (inverse: input and target swapped)" if inverse else "")
    return (f"{effect_name}: learned from recorded input/output pairs ({len(specs)} knob{'s' * (len(specs) != 1)}: "
            f"{', '.join(s.name for s in specs)})")


def held_out(test: PairSet, seconds: float, hop: int) -> tuple[int, int]:
    """The Test pair the golden vectors use: the loudest input (the effect is audible), and its
    length in whole hops, at most ``seconds``. -> (index in ``test``, samples)."""
    i = int(np.argmax([np.mean(np.square(x, dtype=np.float64)) for x in test.x]))
    n = min(int(seconds * test.sample_rate), int(test.lengths[i])) // hop * hop
    return i, n


def _recorded_clips(data: Path, hop: int, seconds_per_source: float, max_sources: int):
    """One clip per held-out source (dataset order), each at a recorded setting, settings differing
    between sources where the Test split has several: -> [(input, target, knob values, name)]."""
    test = PairSet(data, "Test")
    by_source: dict[str, list[int]] = {}
    for i, p in enumerate(test.pairs):
        by_source.setdefault(p.source or str(p.input), []).append(i)
    clips, used = [], set()
    for src, idx in list(by_source.items())[:max_sources]:
        fresh = [i for i in idx if tuple(test.pairs[i].knobs) not in used] or idx
        i = max(fresh, key=lambda j: float(np.mean(np.square(test.x[j][: int(seconds_per_source * test.sample_rate)],
                                                             dtype=np.float64))))
        used.add(tuple(test.pairs[i].knobs))
        n = min(int(seconds_per_source * test.sample_rate), int(test.lengths[i])) // hop * hop
        clips.append((np.asarray(test.x[i][:n], np.float32), np.asarray(test.y[i][:n], np.float32),
                      list(test.pairs[i].knobs), test.pairs[i].target.name))
    return clips, test.sample_rate


def prepare(data: Path, out: Path, hop: int, seconds_per_source: float = 4.0, max_sources: int = 5) -> dict:
    """input.wav, knobs.csv and target.wav for the device render (see the module's doc);
    also demo_input.json (what kind of demo, and its clips). -> that description."""
    info = read_dataset(data)
    specs, sr = info.knobs, info.sample_rate
    effect = dataset_renderer(data)
    out.mkdir(parents=True, exist_ok=True)
    if effect is None:
        clips, sr = _recorded_clips(data, hop, seconds_per_source, max_sources)
        gap = int(GAP_S * sr) // hop * hop
        xs, ys, times, values, t0 = [], [], [], [], 0
        for k, (x, y, v, _) in enumerate(clips):
            if k:  # silence; the knobs glide to the next setting in its first half (no row near a clip's edge)
                xs.append(np.zeros(gap, np.float32))
                ys.append(np.zeros(gap, np.float32))
                times += [t0 / sr, (t0 + gap / 2) / sr]
                values += [values[-1], v]
                t0 += gap
            else:
                times.append(0.0)
                values.append(v)
            xs.append(x)
            ys.append(y)
            t0 += len(x)
        times.append(t0 / sr)  # held to the end (and the knob plot spans the whole render)
        values.append(values[-1])
        x, y = np.concatenate(xs), np.concatenate(ys)
        save_automation(out / "knobs.csv", np.array(times), np.array(values, np.float64), specs)
        desc = {"kind": "recorded", "what": f"{len(clips)} held-out recorded pair(s), each at the knob setting it was "
                f"recorded at, {GAP_S:g} s of silence between them; target = the recording",
                "clips": [{"target": name, "knobs": dict(zip([s.name for s in specs], v)), "seconds": len(c) / sr}
                          for c, _, v, name in clips]}
    else:
        seen, parts = set(), []
        for p in info.pairs:  # one clip per held-out source, in dataset order
            if p.split == "Test" and p.source not in seen and len(seen) < max_sources:
                seen.add(p.source)
                x, _ = sf.read(str(p.input), dtype="float32")
                x = x[: int(seconds_per_source * sr)]
                parts.append(x * (10 ** (-6 / 20) / max(float(np.abs(x).max()), 1e-6)))  # peaks at -6 dBFS: audible compression
        x = np.concatenate(parts)
        x = x[: len(x) // hop * hop]
        dur = len(x) / sr
        times = np.linspace(0, dur, int(dur * 10) + 1)  # 10 rows per second
        rng = np.random.default_rng(3)
        pos = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * times / dur * (j + 1) + rng.uniform(0, 6.28))
                        for j in range(len(specs))], 1)
        save_automation(out / "knobs.csv", times, np.array([[s.from_normalized(p) for s, p in zip(specs, row)]
                                                            for row in pos]), specs)
        # the target with exactly the per-hop knob values the device engine will see
        t2, v2 = load_automation(out / "knobs.csv", specs)
        rows = positions_per_hop(t2, v2, specs, len(x) // hop, hop, sr)
        phys = np.array([[s.from_normalized(float(p)) for s, p in zip(specs, row)] for row in rows])
        y = effect.render_automation(x, sr, phys, hop)
        desc = {"kind": "sweep", "what": f"{len(seen)} held-out sources with every knob sweeping; target = "
                f"{effect.name} rendered again at the same per-hop knob values"}
    sf.write(out / "input.wav", x, sr, subtype="FLOAT")
    sf.write(out / "target.wav", y, sr, subtype="FLOAT")
    desc["seconds"] = round(len(x) / sr, 2)
    (out / "demo_input.json").write_text(json.dumps(desc, indent=1))
    print(f"demo input: {desc['what']}; {len(x) / sr:.1f} s, knobs {[s.name for s in specs]} -> {out}")
    return desc


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
    kind = json.loads((out / "demo_input.json").read_text()) if (out / "demo_input.json").exists() else {}
    recorded = kind.get("kind") == "recorded"
    demo["input"] = kind.get("what", "held-out audio with every knob sweeping")

    fig, axes = plt.subplots(4, 1, figsize=(11, 10), gridspec_kw={"height_ratios": [1.2, 1, 1, 0.8]})
    t = np.arange(len(x)) / sr
    axes[0].plot(t, x, color="0.75", lw=0.5, label="input (dry)")
    axes[0].plot(t, y, lw=0.5, label="target (the recording)" if recorded else "target (pedalboard)")
    axes[0].plot(t, m, lw=0.5, alpha=0.8, label="model (TFLite on the device engine)")
    axes[0].set_ylabel("amplitude")
    axes[0].legend(fontsize=7, loc="upper right")
    axes[0].set_title(f"{manifest['effect']}: demo on held-out {'recorded pairs' if recorded else 'audio with a knob sweep'}"
                      f" — ESR model {demo['esr_model']:.4f}, "
                      f"dry {demo['esr_dry']:.3f}", fontsize=10)
    for ax, sig, name in ((axes[1], y, "target"), (axes[2], m, "model")):
        with np.errstate(divide="ignore"):  # the silence between recorded clips
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
    g = manifest.get("golden", {})
    if g.get("kind"):
        lines += ["", f"Golden vectors: {g['seconds']:.1f} s, {g['kind']} ({g.get('source', '')})."]
    lines += ["", "## Device engine render (ai-edge-litert, the device environment)", "",
              f"- {demo['seconds']:.1f} s: {demo['input']}: ESR model {demo['esr_model']:.4f}, dry {demo['esr_dry']:.4f}",
              *[f"- clip {c['target']}: {c['seconds']:.1f} s at " + ", ".join(f"{k} {v:g}" for k, v in c["knobs"].items())
                for c in kind.get("clips", [])],
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
