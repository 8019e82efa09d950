"""Datasets of (input, target, knobs) pairs, on disk in SignalTrain's layout, and a chunk loader.

Layout (the public SignalTrain datasets load as they are):

    DIR/Train/input_{id}_.wav
    DIR/Train/target_{id}_{EFFECT}__{knob1}__{knob2}....wav     knob values in physical units
    DIR/Val/...  DIR/Test/...
    DIR/dataset.json   (ours, optional on read) effect, knob specs, sample rate, and per pair its
                       source item and split, so splits never share source material.

``python -m training.data --effect comp4 --out data/comp4-demo`` builds the demo tier.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from device.knobspec import KnobSpec

from .effects import Effect, get_effect, heldout_grid, sample_knobs
from .sources import demo_sources

SPLITS = ("Train", "Val", "Test")


def format_knob(v: float) -> str:
    return f"{v:.6g}"


def target_name(pair_id: int, effect: str, values) -> str:
    return f"target_{pair_id}_{effect}" + "".join(f"__{format_knob(v)}" for v in values) + ".wav"


def parse_target_name(name: str) -> tuple[int, str, list[float]]:
    """'target_235_LA2A_2c__0__65.wav' -> (235, 'LA2A_2c', [0.0, 65.0])."""
    base = name[:-4] if name.endswith(".wav") else name
    head, *vals = base.split("__")
    m = re.match(r"^target_(\d+)_(.+)$", head)
    if not m or not vals:
        raise ValueError(f"{name}: not a SignalTrain target name (target_{{id}}_{{EFFECT}}__{{knob}}....wav)")
    try:
        return int(m.group(1)), m.group(2), [float(v) for v in vals]
    except ValueError:
        raise ValueError(f"{name}: knob values {vals} are not numbers") from None


@dataclass
class Pair:
    id: int
    split: str
    input: Path
    target: Path
    knobs: list[float]  # physical units, in the effect's knob order
    source: str = ""


def build_dataset(effect: Effect, out: Path, seed: int = 0, sample_rate: int = 48000, seconds_each: float = 8.0,
                  n_midi: int = 25, n_synth: int = 10, segment_s: float = 2.0, settings_per_segment: int = 3,
                  test_settings_per_knob: int = 2, test_seconds: float = 4.0, log=print) -> Path:
    """Render the demo corpus through ``effect`` and write it in SignalTrain's layout.
    Split by source item: every 7th item is Test, the next Val, the rest Train. Train and Val
    segments get random knob settings (extra weight at the range ends); Test uses the fixed
    held-out grid on every test item."""
    t0 = time.time()
    rng = np.random.default_rng(seed + 1)
    items = demo_sources(seed, sample_rate, seconds_each, n_midi, n_synth)
    grid = heldout_grid(effect, test_settings_per_knob)
    out.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        (out / s).mkdir(exist_ok=True)
    pairs, pid = [], 0
    seg = int(segment_s * sample_rate)

    def write(split, source, x, values):
        nonlocal pid
        pid += 1
        y = effect.render(x, sample_rate, values)
        inp, tgt = out / split / f"input_{pid}_.wav", out / split / target_name(pid, effect.name, values)
        sf.write(inp, x, sample_rate, subtype="FLOAT")
        sf.write(tgt, y, sample_rate, subtype="FLOAT")
        pairs.append({"id": pid, "split": split, "source": source, "input": str(inp.relative_to(out)),
                      "target": str(tgt.relative_to(out)), "knobs": [float(v) for v in values]})

    for i, (name, kind, audio) in enumerate(items):
        split = "Test" if i % 7 == 3 else "Val" if i % 7 == 5 else "Train"
        if split == "Test":
            x = audio[: int(test_seconds * sample_rate)]
            for values in grid:
                write(split, name, x, values)
            continue
        for s0 in range(0, len(audio) - seg + 1, seg):
            for values in sample_knobs(effect, rng, settings_per_segment if split == "Train" else 1):
                write(split, name, audio[s0:s0 + seg], values)
    meta = {"effect": effect.name, "description": effect.description, "knobs": [k.to_dict() for k in effect.knobs],
            "sample_rate": sample_rate, "seed": seed, "pairs": pairs,
            "sources": {n: k for n, k, _ in items}, "build_seconds": round(time.time() - t0, 1)}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    counts = {s: sum(p["split"] == s for p in pairs) for s in SPLITS}
    log(f"dataset {out}: {len(items)} source items, pairs {counts}, built in {time.time() - t0:.0f} s")
    return out


def read_pairs(root: Path, effect: Effect | None = None) -> tuple[list[Pair], list[KnobSpec], int, str]:
    """Pairs of a dataset directory: from dataset.json when present, else from SignalTrain names
    (the effect then comes from the names and its knob specs from the catalogue or ``effect``)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        knobs = [KnobSpec.from_dict(k, f"{meta_path}: knobs[{i}]") for i, k in enumerate(meta["knobs"])]
        pairs = [Pair(p["id"], p["split"], root / p["input"], root / p["target"], p["knobs"], p.get("source", ""))
                 for p in meta["pairs"]]
        return pairs, knobs, int(meta["sample_rate"]), meta["effect"]
    pairs, effect_name, sr = [], None, None
    for split in SPLITS:
        for tgt in sorted((root / split).glob("target_*.wav")):
            pid, name, values = parse_target_name(tgt.name)
            inp = tgt.parent / f"input_{pid}_.wav"
            if not inp.exists():
                raise FileNotFoundError(f"{tgt}: its input {inp.name} is missing")
            if effect_name not in (None, name):
                raise ValueError(f"{tgt}: effect {name!r} differs from {effect_name!r} in the same dataset")
            effect_name = name
            pairs.append(Pair(pid, split, inp, tgt, values, source=inp.name))
            sr = sr or sf.info(str(inp)).samplerate
    if not pairs:
        raise FileNotFoundError(f"{root}: no dataset.json and no Train/Val/Test/target_*.wav pairs")
    if effect is None:
        effect = get_effect(effect_name)
    knobs = list(effect.knobs)
    for p in pairs:
        if len(p.knobs) != len(knobs):
            raise ValueError(f"{p.target}: {len(p.knobs)} knob values in the name, effect {effect.name} has {len(knobs)}")
    return pairs, knobs, sr, effect_name


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32; refuses the wrong sample rate, several channels, NaN/Inf, with the file named."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise ValueError(f"{path}: sample rate {sr} Hz, the dataset is {sample_rate} Hz")
    if x.shape[1] != 1:
        raise ValueError(f"{path}: {x.shape[1]} channels, expected mono")
    x = x[:, 0]
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: {int((~np.isfinite(x)).sum())} NaN/Inf samples")
    return x


class PairSet:
    """One split held in memory as float32 arrays, with knob positions (0..1) per pair.
    ``batch`` draws random chunks of ``chunk`` samples (look-back + scored tail); preloaded numpy
    slicing is far faster than the model step, so training never waits on data."""

    def __init__(self, root: Path, split: str, effect: Effect | None = None):
        pairs, self.knob_specs, self.sample_rate, self.effect = read_pairs(root, effect)
        self.pairs = [p for p in pairs if p.split == split]
        if not self.pairs:
            raise ValueError(f"{root}: no pairs in split {split!r}")
        self.x, self.y = [], []
        for p in self.pairs:
            x, y = load_audio(p.input, self.sample_rate), load_audio(p.target, self.sample_rate)
            if len(x) != len(y):
                raise ValueError(f"{p.target}: {len(y)} samples, its input {p.input.name} has {len(x)}")
            self.x.append(x)
            self.y.append(y)
        self.knobs = np.array([[k.to_normalized(v) for k, v in zip(self.knob_specs, p.knobs)] for p in self.pairs], np.float32)
        self.lengths = np.array([len(x) for x in self.x])

    def batch(self, rng: np.random.Generator, batch: int, chunk: int):
        ok = np.flatnonzero(self.lengths >= chunk)
        if not len(ok):
            raise ValueError(f"no pair is as long as a chunk of {chunk} samples (longest {self.lengths.max()})")
        idx = rng.choice(ok, batch, p=self.lengths[ok] / self.lengths[ok].sum())
        xs, ys = np.empty((batch, chunk), np.float32), np.empty((batch, chunk), np.float32)
        for b, i in enumerate(idx):
            s = rng.integers(0, self.lengths[i] - chunk + 1)
            xs[b], ys[b] = self.x[i][s:s + chunk], self.y[i][s:s + chunk]
        return xs, ys, self.knobs[idx]

    def fixed_chunks(self, chunk: int, n: int, seed: int = 1234):
        """The same chunks every call: a stable validation set."""
        return self.batch(np.random.default_rng(seed), n, chunk)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build a dataset of (input, target, knobs) pairs in SignalTrain's layout.")
    ap.add_argument("--effect", default="comp4")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-rate", type=int, default=48000)
    ap.add_argument("--n-midi", type=int, default=25, help="generated MIDI clips (guitar, bass, keys, drums, mix in turn)")
    ap.add_argument("--n-synth", type=int, default=10, help="synthetic test signals (steps, bursts, sweep, plucks, noise)")
    ap.add_argument("--seconds-each", type=float, default=8.0)
    ap.add_argument("--settings-per-segment", type=int, default=3)
    a = ap.parse_args(argv)
    build_dataset(get_effect(a.effect), a.out, a.seed, a.sample_rate, a.seconds_each, a.n_midi, a.n_synth,
                  settings_per_segment=a.settings_per_segment)


if __name__ == "__main__":
    main()
