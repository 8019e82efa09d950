"""Datasets of (input, target, knobs) pairs, on disk in SignalTrain's layout, and a chunk loader.

Three forms load the same way (``read_dataset``):

1. SignalTrain's layout (the public SignalTrain datasets load as they are):

       DIR/Train/input_{id}_.wav
       DIR/Train/target_{id}_{EFFECT}__{knob1}__{knob2}....wav     knob values in physical units
       DIR/Val/...  DIR/Test/...

   Knob specs come from ``knobs=``, ``effect=``, a ``knobs.json``/``knobs.toml`` in DIR, the
   catalogue (also ``{effect}_inv``), or SIGNALTRAIN_KNOBS (e.g. ``LA2A_2c``).
2. The same layout plus our ``DIR/dataset.json`` (what ``build_dataset`` writes): effect, knob
   specs, sample rate, latency, and per pair its source item and split.
3. A user's recordings: ``DIR/knobs.csv`` with columns ``input,target,<knob names...>[,split]``
   (paths relative to DIR), knob specs as in 1. Without a split column, splits are assigned per
   input file (every pair of one input stays in one split), never per chunk.

``python -m training.data --effect comp4 --out data/comp4-demo`` builds the demo tier;
``--tier full`` the full tier (Debian soundfonts); ``--inverse`` swaps input and target.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from device.knobspec import KnobSpec

from .effects import CATALOGUE, INVERSE_SUFFIX, Effect, base_effect_name, get_effect, heldout_grid, sample_knobs
from .recordings import (Latency, Problem, RecordingError, align, check_pair, check_signal, constant_latency,
                         read_audio)
from .sources import demo_sources, full_sources

SPLITS = ("Train", "Val", "Test")

# Knob specs of SignalTrain's own datasets, so that they load as they are.
SIGNALTRAIN_KNOBS: dict[str, tuple[KnobSpec, ...]] = {
    # Universal Audio LA-2A: the Limit/Compress switch and the Peak Reduction knob (0..100)
    "LA2A_2c": (KnobSpec("limit", "switch", 0.0, 1.0, 0.0), KnobSpec("peak_reduction", "", 0.0, 100.0, 50.0)),
}

# Corpus tiers: default size of the source corpus (see docs/datasets.md for sizes and build times).
TIERS = {
    "demo": {"seconds_each": 4.0, "n_midi": 100, "n_synth": 40},  # 9.3 min of source audio, in many short items
    "full": {"seconds_each": 20.0, "n_midi": 300, "n_synth": 60},  # 2.0 h of source audio
}
TARGET_PEAK = 0.98  # a rendered pair whose input or target passes this is re-rendered from a quieter input
MAX_REDRAWS = 8  # a rendered pair the loader's checks would refuse is drawn again at most this often


class BuildError(ValueError):
    """A pair that the loader would refuse could not be drawn again into one it accepts."""


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
    source: str = ""  # the source item; no source is in two splits


@dataclass
class DatasetInfo:
    pairs: list[Pair]
    knobs: list[KnobSpec]
    sample_rate: int
    effect: str
    latency_samples: int | None  # declared input->target latency; None: unknown (estimate it)
    form: str  # "dataset.json", "csv" or "signaltrain"
    problems: list[Problem] = field(default_factory=list)  # found while reading (e.g. knob values out of range)


# --- knob specs ----------------------------------------------------------------------------------
def knob_specs_for(effect_name: str) -> list[KnobSpec] | None:
    """Knob specs of a catalogue effect (or its inverse) or of a SignalTrain dataset, else None."""
    base, _ = base_effect_name(effect_name)
    if base in CATALOGUE:
        return list(CATALOGUE[base].knobs)
    if effect_name in SIGNALTRAIN_KNOBS:
        return list(SIGNALTRAIN_KNOBS[effect_name])
    return None


def read_knobs_file(path: Path) -> tuple[str | None, list[KnobSpec] | None, dict]:
    """A small knobs file, JSON or TOML: ``effect`` (a name; the catalogue's specs when it has no
    ``knobs``), ``knobs`` (a list of KnobSpec fields), optional ``sample_rate`` and
    ``latency_samples`` (known latency of the recording chain; omit it to have it estimated).
    -> (effect name, specs, the other fields)."""
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            d = tomllib.loads(text)
        else:
            d = json.loads(text)
    except Exception as e:  # both parsers name line and column
        raise ValueError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a table with 'effect' and/or 'knobs'")
    unknown = set(d) - {"effect", "knobs", "sample_rate", "latency_samples", "description"}
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}")
    name = d.get("effect")
    specs = None
    if "knobs" in d:
        if not isinstance(d["knobs"], list) or not d["knobs"]:
            raise ValueError(f"{path}: 'knobs' must be a non-empty list of knob tables")
        specs = [KnobSpec.from_dict(k, f"{path}: knobs[{i}]") for i, k in enumerate(d["knobs"])]
    elif name is not None:
        specs = knob_specs_for(name)
        if specs is None:
            raise ValueError(f"{path}: effect {name!r} is not in the catalogue {sorted(CATALOGUE)}; list its 'knobs'")
    else:
        raise ValueError(f"{path}: needs 'knobs' (a list of knob specs) or a catalogue 'effect'")
    return name, specs, {k: d[k] for k in ("sample_rate", "latency_samples") if k in d}


def _find_knobs_file(root: Path) -> Path | None:
    for name in ("knobs.json", "knobs.toml"):
        if (root / name).is_file():
            return root / name
    return None


def _resolve_knobs(root: Path, effect_name: str | None, effect: Effect | None, knobs, where: str):
    """-> (effect name, specs, extra fields of a knobs file)."""
    if knobs is not None:
        return effect_name or (effect.name if effect else "custom"), list(knobs), {}
    if effect is not None:
        return effect_name or effect.name, list(effect.knobs), {}
    kf = _find_knobs_file(root)
    if kf is not None:
        name, specs, extra = read_knobs_file(kf)
        return effect_name or name or root.name, specs, extra
    specs = knob_specs_for(effect_name) if effect_name else None
    if specs is None:
        raise ValueError(f"{where}: no knob specs for effect {effect_name!r}: it is not in the catalogue "
                         f"{sorted(CATALOGUE)} nor a known SignalTrain dataset {sorted(SIGNALTRAIN_KNOBS)}; "
                         f"add {root / 'knobs.json'} (or knobs.toml) or pass knobs=/--knobs")
    return effect_name, specs, {}


def _range_problems(pairs: list[Pair], specs: list[KnobSpec], root: Path) -> list[Problem]:
    out = []
    for p in pairs:
        for k, v in zip(specs, p.knobs):
            if not (k.minimum <= v <= k.maximum) or not np.isfinite(v):
                out.append(Problem("error", _rel(p.target, root),
                                   f"knob {k.name} = {format_knob(v)} outside its range {format_knob(k.minimum)}.."
                                   f"{format_knob(k.maximum)} {k.unit}".rstrip()))
    return out


def _leak_problems(pairs: list[Pair], root: Path) -> list[Problem]:
    splits_of: dict[str, set] = {}
    for p in pairs:
        if p.source:
            splits_of.setdefault(p.source, set()).add(p.split)
    return [Problem("error", s, f"source appears in splits {sorted(v)}: a source must stay in one split")
            for s, v in splits_of.items() if len(v) > 1]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


# --- the three forms -----------------------------------------------------------------------------
def read_dataset(root: Path, effect: Effect | None = None, knobs=None) -> DatasetInfo:
    """Pairs, knob specs, sample rate, effect name and declared latency of a dataset directory in
    any of the three forms (dataset.json, knobs.csv, SignalTrain names, tried in that order).
    ``knobs`` (a list of KnobSpec) or ``effect`` supply specs where the folder has none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset directory not found")
    if (root / "dataset.json").exists():
        return _read_json_form(root)
    if (root / "knobs.csv").exists():
        return _read_csv_form(root, effect, knobs)
    return _read_signaltrain_form(root, effect, knobs)


def _read_json_form(root: Path) -> DatasetInfo:
    meta_path = root / "dataset.json"
    meta = json.loads(meta_path.read_text())
    specs = [KnobSpec.from_dict(k, f"{meta_path}: knobs[{i}]") for i, k in enumerate(meta["knobs"])]
    pairs = [Pair(p["id"], p["split"], root / p["input"], root / p["target"], p["knobs"], p.get("source", ""))
             for p in meta["pairs"]]
    # rendered pairs are sample-aligned by construction
    info = DatasetInfo(pairs, specs, int(meta["sample_rate"]), meta["effect"], int(meta.get("latency_samples", 0)),
                       "dataset.json")
    info.problems = _range_problems(pairs, specs, root) + _leak_problems(pairs, root)
    return info


def _read_signaltrain_form(root: Path, effect: Effect | None, knobs) -> DatasetInfo:
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
            pairs.append(Pair(pid, split, inp, tgt, values, source=f"{split}/{inp.name}"))
            sr = sr or sf.info(str(inp)).samplerate
    if not pairs:
        raise FileNotFoundError(f"{root}: no dataset.json, no knobs.csv and no Train/Val/Test/target_*.wav pairs")
    name, specs, extra = _resolve_knobs(root, effect_name, effect, knobs, str(root))
    for p in pairs:
        if len(p.knobs) != len(specs):
            raise ValueError(f"{p.target}: {len(p.knobs)} knob values in the name, effect {name} has "
                             f"{len(specs)} knobs {[k.name for k in specs]}")
    info = DatasetInfo(pairs, specs, int(extra.get("sample_rate", sr)), effect_name,
                       extra.get("latency_samples"), "signaltrain")
    info.problems = _range_problems(pairs, specs, root)
    return info


def assign_splits(groups: list[str], seed: int = 0, val_fraction: float = 0.1,
                  test_fraction: float = 0.1) -> dict[str, str]:
    """Each group (an input file) to one split, deterministically: a seeded shuffle of the sorted
    groups, the first ~10% Test, the next ~10% Val (at least one each from 3 groups on), the rest Train."""
    groups = sorted(set(groups))
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    n = len(order)
    n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
    n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
    return {g: "Test" if i < n_test else "Val" if i < n_test + n_val else "Train" for i, g in enumerate(order)}


def _read_csv_form(root: Path, effect: Effect | None, knobs) -> DatasetInfo:
    csv_path = root / "knobs.csv"
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    missing = [c for c in ("input", "target") if c not in header]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; expected input,target,<knob names...>[,split]")
    knob_cols = [h for h in header if h not in ("input", "target", "split", "source")]
    name, specs, extra = _resolve_knobs(root, None, effect, knobs, str(csv_path))
    spec_names = [k.name for k in specs]
    if sorted(knob_cols) != sorted(spec_names):
        raise ValueError(f"{csv_path}: knob columns {knob_cols} do not match the knob specs {spec_names} "
                         f"(missing {sorted(set(spec_names) - set(knob_cols))}, "
                         f"unknown {sorted(set(knob_cols) - set(spec_names))})")
    split_names = {"train": "Train", "val": "Val", "valid": "Val", "validation": "Val", "test": "Test"}
    pairs, sr = [], None
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{csv_path.name} line {line}"
        inp, tgt = root / row["input"], root / row["target"]
        for path in (inp, tgt):
            if not path.is_file():
                raise FileNotFoundError(f"{where}: {path} not found")
        values = []
        for k in specs:
            try:
                values.append(float(row[k.name]))
            except ValueError:
                raise ValueError(f"{where}: {k.name} = {row[k.name]!r} is not a number") from None
        split = row.get("split", "")
        if split:
            if split.lower() not in split_names:
                raise ValueError(f"{where}: split {split!r} is not one of Train, Val, Test")
            split = split_names[split.lower()]
        source = row.get("source") or row["input"]
        pairs.append(Pair(line - 1, split, inp, tgt, values, source))
        sr = sr or sf.info(str(inp)).samplerate
    if not pairs:
        raise ValueError(f"{csv_path}: no rows")
    given = [p for p in pairs if p.split]
    if given and len(given) != len(pairs):
        raise ValueError(f"{csv_path}: the split column is empty on {len(pairs) - len(given)} of {len(pairs)} rows; "
                         f"fill it on every row or drop the column")
    if not given:
        by_source = assign_splits([p.source for p in pairs])
        for p in pairs:
            p.split = by_source[p.source]
    info = DatasetInfo(pairs, specs, int(extra.get("sample_rate", sr)), name, extra.get("latency_samples"), "csv")
    info.problems = _range_problems(pairs, specs, root) + _leak_problems(pairs, root)
    return info


def read_pairs(root: Path, effect: Effect | None = None, knobs=None) -> tuple[list[Pair], list[KnobSpec], int, str]:
    """(pairs, knob specs, sample rate, effect name) of a dataset directory in any form; see
    ``read_dataset``. Raises RecordingError when knob values lie outside their ranges."""
    info = read_dataset(root, effect, knobs)
    errors = [p for p in info.problems if p.level == "error"]
    if errors:
        raise RecordingError(errors)
    return info.pairs, info.knobs, info.sample_rate, info.effect


# --- building ------------------------------------------------------------------------------------
def tier_sources(tier: str, seed: int, sample_rate: int, seconds_each: float, n_midi: int, n_synth: int,
                 soundfont: Path | None = None):
    """The source items of a tier (an iterable of (name, kind, audio)). The full tier checks its
    soundfont here, before anything is written."""
    if tier == "demo":
        return demo_sources(seed, sample_rate, seconds_each, n_midi, n_synth)
    if tier == "full":
        return full_sources(seed, sample_rate, seconds_each, n_midi, n_synth, sf2=soundfont)
    raise ValueError(f"unknown tier {tier!r} (one of {sorted(TIERS)})")


def _clear_previous(out: Path, log) -> None:
    """Remove the pair files of an earlier build: stale names would mix into the new dataset, and
    writing over a hard-linked input would change its twins."""
    old = [f for s in SPLITS for pattern in ("input_*_.wav", "target_*.wav") for f in (out / s).glob(pattern)]
    for f in old:
        f.unlink()
    if old:
        log(f"dataset {out}: removed {len(old)} files of a previous build")


def build_dataset(effect: Effect, out: Path, seed: int = 0, sample_rate: int = 48000, seconds_each: float | None = None,
                  n_midi: int | None = None, n_synth: int | None = None, segment_s: float = 2.0,
                  settings_per_segment: int = 3, test_settings_per_knob: int = 2, test_seconds: float = 4.0,
                  log=print, *, tier: str = "demo", inverse: bool = False, sources=None, soundfont: Path | None = None,
                  progress: bool | None = None) -> Path:
    """Render a source corpus through ``effect`` and write it in SignalTrain's layout plus dataset.json.

    Split by source item: every 7th item is Test, the next Val, the rest Train. Train and Val
    segments get random knob settings (extra weight at the range ends); Test uses the fixed
    held-out grid on every test item. ``tier``: "demo" or "full" (sizes in TIERS; the arguments
    left None take the tier's); ``sources``: your own (name, kind, audio) items instead.
    ``inverse``: swap input and target (the effect is named ``{effect}_inv``). A pair whose input
    or target would peak above TARGET_PEAK is rendered again from a quieter input, so no file clips.
    Every rendered pair goes through the loader's own checks (``check_pair``) before it is
    written; one they would refuse (a silent target: a quiet segment through a low level) is
    drawn again, at most MAX_REDRAWS times: new knobs on the same segment, then new knobs on
    another segment of the same item (Test: the same grid setting on another window of the
    item). A pair that cannot be made acceptable stops the build with a ``BuildError`` that
    names it and the checks' messages. Inputs shared by several pairs are hard links to one file."""
    t0 = time.time()
    cfg = dict(TIERS[tier]) if tier in TIERS else {}
    cfg.update({k: v for k, v in (("seconds_each", seconds_each), ("n_midi", n_midi), ("n_synth", n_synth)) if v is not None})
    items_given = sources
    if sources is None:
        sources = tier_sources(tier, seed, sample_rate, cfg["seconds_each"], cfg["n_midi"], cfg["n_synth"], soundfont)
        n_items = cfg["n_midi"] + cfg["n_synth"]
    else:
        n_items = len(sources) if hasattr(sources, "__len__") else None
    name = effect.name + (INVERSE_SUFFIX if inverse else "")
    rng = np.random.default_rng(seed + 1)
    grid = heldout_grid(effect, test_settings_per_knob)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        (out / s).mkdir(exist_ok=True)
    _clear_previous(out, log)
    pairs, pid, n_redrawn, kinds, seconds = [], 0, 0, {}, {s: 0.0 for s in SPLITS}
    seg = int(segment_s * sample_rate)
    written: dict[tuple, Path] = {}  # (source, start) -> the file that holds that clean segment

    def save(path: Path, audio: np.ndarray, key) -> None:
        if key is not None and key in written:
            try:
                os.link(written[key], path)
                return
            except OSError:  # a file system without hard links: write a copy
                pass
        sf.write(path, audio, sample_rate, subtype="FLOAT")
        if key is not None:
            written.setdefault(key, path)

    def render(x, values):
        """(model input, model target, input gain, the errors the loader would refuse the pair for)."""
        gain = 1.0
        y = effect.render(x, sample_rate, values, seed=seed * 1_000_003 + pid)
        for _ in range(4):  # turn the input down until neither file would clip
            peak = max(float(np.abs(y).max()), float(np.abs(x).max()) * gain)
            if peak <= TARGET_PEAK:
                break
            gain *= 0.97 * TARGET_PEAK / peak
            y = effect.render(x * gain, sample_rate, values, seed=seed * 1_000_003 + pid)
        clean = (x * gain).astype(np.float32)
        model_in, model_out = (y, clean) if inverse else (clean, y)
        errors = check_pair(model_in, sample_rate, model_out, sample_rate, "input", "target", sample_rate).errors
        return model_in, model_out, gain, errors

    def write(split, source, audio, start, length, values):
        """Render one pair and write it, drawn again where the loader would refuse it."""
        nonlocal pid, n_redrawn
        pid += 1
        redraw_rng = np.random.default_rng([seed, pid])  # its own stream: the main draws stay as they were
        starts = [s0 for s0 in range(0, len(audio) - length + 1, seg if split != "Test" else max(1, length // 2))
                  if s0 != start]
        tried = []
        for attempt in range(MAX_REDRAWS + 1):
            x = audio[start:start + length]
            model_in, model_out, gain, errors = render(x, values)
            if not errors:
                break
            tried.append(f"segment at {start / sample_rate:g} s, knobs {[format_knob(v) for v in values]}: "
                         + "; ".join(e.message for e in errors))
            if attempt == MAX_REDRAWS:
                raise BuildError(f"{out}: effect {name}: pair {pid} ({split}, source {source}) would be refused by the "
                                 f"loader's checks after {MAX_REDRAWS} re-draws:\n  " + "\n  ".join(tried))
            if split == "Test":  # the grid setting stays; another window of the item
                if not starts:
                    raise BuildError(f"{out}: effect {name}: Test pair {pid} (source {source}) would be refused by the "
                                     f"loader's checks and the item has no other window:\n  " + "\n  ".join(tried))
                start = starts.pop(0)
            else:  # new knobs; after half the tries, on another segment of the item too
                values = sample_knobs(effect, redraw_rng, 1)[0]
                if attempt >= MAX_REDRAWS // 2 - 1 and starts:
                    start = starts.pop(int(redraw_rng.integers(len(starts))))
        key = (source, start) if gain == 1.0 else None
        inp, tgt = out / split / f"input_{pid}_.wav", out / split / target_name(pid, name, values)
        save(inp, model_in, None if inverse else key)
        save(tgt, model_out, key if inverse else None)
        seconds[split] += length / sample_rate
        pair = {"id": pid, "split": split, "source": source, "input": str(inp.relative_to(out)),
                "target": str(tgt.relative_to(out)), "knobs": [float(v) for v in values]}
        if gain != 1.0:
            pair["input_gain_db"] = round(20 * np.log10(gain), 2)
        if tried:
            n_redrawn += 1
            pair["redrawn"] = tried  # what the checks refused before this pair was accepted
            log(f"dataset {out}: pair {pid} ({split}, {source}) drawn again {len(tried)}x: {tried[0]}")
        pairs.append(pair)

    if progress is None:
        progress = tier == "full"
    items = sources
    if progress:
        from tqdm import tqdm
        items = tqdm(sources, total=n_items, unit="item", desc=f"{tier} {name}", dynamic_ncols=True)
    for i, (src, kind, audio) in enumerate(items):
        kinds[src] = kind
        split = "Test" if i % 7 == 3 else "Val" if i % 7 == 5 else "Train"
        if split == "Test":
            length = min(len(audio), int(test_seconds * sample_rate))
            for values in grid:
                write(split, src, audio, 0, length, values)
            continue
        for s0 in range(0, len(audio) - seg + 1, seg):
            for values in sample_knobs(effect, rng, settings_per_segment if split == "Train" else 1):
                write(split, src, audio, s0, seg, values)
    inodes = {(st.st_dev, st.st_ino): st.st_size for st in (os.stat(out / p[f]) for p in pairs for f in ("input", "target"))}
    meta = {"effect": name, "base_effect": effect.name, "inverse": inverse, "description": effect.description
            + (" (inverse: input and target swapped)" if inverse else ""),
            "knobs": [k.to_dict() for k in effect.knobs], "sample_rate": sample_rate, "seed": seed,
            "tier": tier if items_given is None else "custom",
            "latency_samples": 0, "redrawn_pairs": n_redrawn, "pairs": pairs, "sources": kinds,
            "seconds": {s: round(v, 1) for s, v in seconds.items()}, "bytes": sum(inodes.values()),
            "build_seconds": round(time.time() - t0, 1)}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    counts = {s: sum(p["split"] == s for p in pairs) for s in SPLITS}
    log(f"dataset {out}: {len(kinds)} source items, pairs {counts}, {sum(seconds.values()) / 60:.1f} min of pairs, "
        f"{meta['bytes'] / 1e6:.0f} MB, built in {time.time() - t0:.1f} s"
        + (f"; {n_redrawn} pairs drawn again (the loader would have refused them)" if n_redrawn else ""))
    return out


# --- loading -------------------------------------------------------------------------------------
def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32; refuses the wrong sample rate, several channels, NaN/Inf, silence, with the file named."""
    x, sr = read_audio(path)
    problems = []
    if sr != sample_rate:
        problems.append(Problem("error", str(path), f"sample rate {sr} Hz, the dataset is {sample_rate} Hz"))
    if x.shape[1] != 1:
        problems.append(Problem("error", str(path), f"{x.shape[1]} channels, expected mono (mix down or pick one channel)"))
    problems += [p for p in check_signal(x[:, 0], str(path)) if p.level == "error"]
    if problems:
        raise RecordingError(problems)
    return x[:, 0]


_SHOWN_WARNINGS: set[str] = set()  # each warning is printed once per process


def _show_warnings(problems: list[Problem], log, root: Path, limit: int = 10) -> None:
    new = [p for p in problems if f"{root.resolve()}/{p}" not in _SHOWN_WARNINGS]
    for p in new[:limit]:
        log(f"warning: {p}")
    if len(new) > limit:
        log(f"warning: ... and {len(new) - limit} more (python -m training.recordings {root} lists them all)")
    _SHOWN_WARNINGS.update(f"{root.resolve()}/{p}" for p in new)


class PairSet:
    """One split, checked on load, with knob positions (0..1) per pair.
    ``batch`` draws random chunks of ``chunk`` samples (look-back + scored tail). Audio is
    preloaded, or memory-mapped (``mmap``; None: when the split's float32 WAVs pass 1 GB), and
    numpy slicing of either is far faster than a model step, so training never waits on data
    (training/bench_loader.py measures it). Hard-linked files are loaded once.

    Every pair passes the checks of training/recordings.py: errors stop here with all of them
    listed, warnings are printed once. Where the latency is not declared (user recordings,
    SignalTrain folders) it is estimated; ``compensate_latency`` shifts every target earlier by the
    dataset's constant latency (the median of the confident per-pair estimates)."""

    MMAP_AUTO_BYTES = 1 << 30

    def __init__(self, root: Path, split: str, effect: Effect | None = None, *, knobs=None,
                 compensate_latency: bool = False, max_latency_ms: float = 50.0, mmap: bool | None = None,
                 log=None):
        root = Path(root)
        log = log or (lambda msg: print(msg, file=sys.stderr))
        info = read_dataset(root, effect, knobs)
        self.knob_specs, self.sample_rate, self.effect = info.knobs, info.sample_rate, info.effect
        self.pairs = [p for p in info.pairs if p.split == split]
        if not self.pairs:
            raise ValueError(f"{root}: no pairs in split {split!r}")
        if mmap is None:
            mmap = sum(p.input.stat().st_size + p.target.stat().st_size for p in self.pairs) > self.MMAP_AUTO_BYTES
        estimate = info.latency_samples is None
        max_lag = int(max_latency_ms * self.sample_rate / 1000) if estimate else None
        # problems found while reading: those of this split's pairs, and those of no single pair (leaks)
        mine, anyones = {_rel(p.target, root) for p in self.pairs}, {_rel(p.target, root) for p in info.pairs}
        problems = [pr for pr in info.problems if pr.file in mine or pr.file not in anyones]
        cache: dict[tuple, tuple] = {}

        def read(path: Path):
            st = path.stat()
            key = (st.st_dev, st.st_ino)
            if key not in cache:
                cache[key] = read_audio(path, mmap)
            return cache[key]

        self.x, self.y, latencies = [], [], []
        for p in self.pairs:
            (x, sr_x), (y, sr_y) = read(p.input), read(p.target)
            res = check_pair(x, sr_x, y, sr_y, _rel(p.input, root), _rel(p.target, root), self.sample_rate, max_lag)
            problems += res.problems
            self.x.append(res.x)
            self.y.append(res.y)
            latencies.append(res.latency)
        errors = [pr for pr in problems if pr.level == "error"]
        if errors:
            raise RecordingError(errors)
        self.latency_samples = info.latency_samples if not estimate else constant_latency(latencies)
        _show_warnings([pr for pr in problems if pr.level == "warning"], log, root)
        if compensate_latency:
            if self.latency_samples is None:
                log(f"warning: {root}: no confident latency estimate in split {split}; targets left as they are")
            elif self.latency_samples:
                log(f"{root}: {split}: shifting every target {self.latency_samples} samples earlier "
                    f"({1000 * self.latency_samples / self.sample_rate:.2f} ms latency compensated)")
                for i in range(len(self.x)):
                    self.x[i], self.y[i] = align(self.x[i], self.y[i], self.latency_samples)
        self.latencies: list[Latency | None] = latencies
        self.knobs = np.array([[k.to_normalized(v) for k, v in zip(self.knob_specs, p.knobs)] for p in self.pairs], np.float32)
        self.lengths = np.array([len(x) for x in self.x])

    def batch(self, rng: np.random.Generator, batch: int, chunk: int, with_index: bool = False,
              with_start: bool = False):
        """``batch`` random chunks (xs, ys, knobs), weighted by pair length; ``with_index``: also
        which pair each chunk came from; ``with_start``: also where in its pair each chunk starts
        (samples; an LFO's phase there)."""
        ok = np.flatnonzero(self.lengths >= chunk)
        if not len(ok):
            raise ValueError(f"no pair is as long as a chunk of {chunk} samples (longest {self.lengths.max()})")
        idx = rng.choice(ok, batch, p=self.lengths[ok] / self.lengths[ok].sum())
        xs, ys = np.empty((batch, chunk), np.float32), np.empty((batch, chunk), np.float32)
        starts = np.empty(batch, np.int64)
        for b, i in enumerate(idx):
            s = starts[b] = rng.integers(0, self.lengths[i] - chunk + 1)
            xs[b], ys[b] = self.x[i][s:s + chunk], self.y[i][s:s + chunk]
        return (xs, ys, self.knobs[idx]) + ((idx,) if with_index else ()) + ((starts,) if with_start else ())

    def fixed_chunks(self, chunk: int, n: int, seed: int = 1234):
        """The same chunks every call: a stable validation set."""
        return self.batch(np.random.default_rng(seed), n, chunk)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build a dataset of (input, target, knobs) pairs in SignalTrain's layout.")
    ap.add_argument("--effect", default="comp4", help=f"one of {sorted(CATALOGUE)}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tier", choices=sorted(TIERS), default="demo",
                    help="demo: pip only, minutes of audio; full: Debian soundfonts (apt fluid-soundfont-gm), hours")
    ap.add_argument("--inverse", action="store_true", help="swap input and target (e.g. noise -> a de-noiser)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-rate", type=int, default=48000)
    ap.add_argument("--n-midi", type=int, help="generated MIDI clips (guitar, bass, keys, drums, mix in turn); default per tier")
    ap.add_argument("--n-synth", type=int, help="synthetic test signals (steps, bursts, sweep, plucks, noise); default per tier")
    ap.add_argument("--seconds-each", type=float, help="seconds per source item; default per tier")
    ap.add_argument("--settings-per-segment", type=int, default=3)
    ap.add_argument("--soundfont", type=Path, help="the full tier's General MIDI soundfont (default: FluidR3_GM from apt)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: full tier)")
    a = ap.parse_args(argv)
    try:
        build_dataset(get_effect(a.effect), a.out, a.seed, a.sample_rate, a.seconds_each, a.n_midi, a.n_synth,
                      settings_per_segment=a.settings_per_segment, tier=a.tier, inverse=a.inverse,
                      soundfont=a.soundfont, progress=a.progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
