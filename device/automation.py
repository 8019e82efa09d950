"""Knob automation files: knob values over time, for offline renders, tests and the demo.

CSV with a header: ``time_s`` then knob names (physical units, the bundle's knob names), e.g.

    time_s,threshold_db,ratio,attack_ms,release_ms
    0.0,-10,2,10,100
    4.0,-40,8,10,100

Values are interpolated linearly between rows and held before the first and after the last.
A knob without a column stays at its default. JSON works too: {"time_s": [...], "ratio": [...]}.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .knobspec import KnobSpec


def load_automation(path: str | Path, specs: list[KnobSpec]) -> tuple[np.ndarray, np.ndarray]:
    """-> (times_s (R,), physical values (R, K) in spec order). Errors name the file and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read knob automation ({e.strerror})") from None
    if path.suffix == ".json":
        try:
            cols = {k: list(map(float, v)) for k, v in json.loads(text).items()}
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a JSON object of number lists ({e})") from None
    else:
        rows = list(csv.reader(line for line in text.splitlines() if line.strip() and not line.startswith("#")))
        if not rows:
            raise ValueError(f"{path}: empty knob automation")
        header, cols = [h.strip() for h in rows[0]], {}
        for r, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}: line {r} has {len(row)} values, the header has {len(header)}")
            for h, v in zip(header, row):
                try:
                    cols.setdefault(h, []).append(float(v))
                except ValueError:
                    raise ValueError(f"{path}: line {r}, column {h!r}: {v!r} is not a number") from None
    if "time_s" not in cols:
        raise ValueError(f"{path}: no 'time_s' column")
    names = [s.name for s in specs]
    unknown = sorted(set(cols) - {"time_s"} - set(names))
    if unknown:
        raise ValueError(f"{path}: unknown knob column(s) {unknown}; this bundle's knobs are {names}")
    times = np.asarray(cols["time_s"], np.float64)
    if len(times) == 0 or np.any(np.diff(times) < 0):
        raise ValueError(f"{path}: 'time_s' must be non-empty and non-decreasing")
    values = np.empty((len(times), len(specs)))
    for j, s in enumerate(specs):
        col = cols.get(s.name)
        values[:, j] = s.default if col is None else col
        bad = [v for v in values[:, j] if not s.minimum <= v <= s.maximum]
        if bad:
            raise ValueError(f"{path}: column {s.name!r}: value {bad[0]:g} outside {s.minimum:g}..{s.maximum:g} {s.unit}")
    return times, values


def positions_per_hop(times: np.ndarray, values: np.ndarray, specs: list[KnobSpec], n_hops: int, hop: int,
                      sample_rate: int) -> np.ndarray:
    """Automation -> knob positions (0..1) at the start of each hop, shape (n_hops, K), float32."""
    t = np.arange(n_hops) * hop / sample_rate
    out = np.empty((n_hops, len(specs)), np.float32)
    for j, s in enumerate(specs):
        phys = np.interp(t, times, values[:, j])
        out[:, j] = [s.to_normalized(v) for v in phys]
    return out


def save_automation(path: str | Path, times, values, specs: list[KnobSpec]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s"] + [s.name for s in specs])
        for t, row in zip(times, values):
            w.writerow([f"{t:g}"] + [f"{v:.6g}" for v in row])
