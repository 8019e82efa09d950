"""Target effects: named, with knob specs in real units, rendered by Spotify's pedalboard.

An ``Effect`` turns (audio, knob values in physical units) into the target the model must learn.
Its knob specs are the ones the manifest, the daemon and the plots use (device.knobspec.KnobSpec).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pedalboard as pb

from device.knobspec import KnobSpec


@dataclass(frozen=True)
class Effect:
    name: str
    description: str
    knobs: tuple[KnobSpec, ...]
    make: Callable[..., pb.Pedalboard]  # knob values by name -> a fresh board
    update: Callable[[pb.Pedalboard, dict], None] | None = None  # set knobs on a running board

    @property
    def knob_names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def defaults(self) -> list[float]:
        return [k.default for k in self.knobs]

    def _values(self, values: Sequence[float]) -> dict:
        if len(values) != len(self.knobs):
            raise ValueError(f"effect {self.name}: expected {len(self.knobs)} knob values {self.knob_names}, got {list(values)}")
        return dict(zip(self.knob_names, map(float, values)))

    def render(self, audio: np.ndarray, sample_rate: int, values: Sequence[float]) -> np.ndarray:
        """Process mono float32 audio at fixed knob values, from a fresh (reset) state."""
        board = self.make(**self._values(values))
        return board(np.asarray(audio, np.float32)[None, :], sample_rate, reset=True)[0].astype(np.float32)

    def render_automation(self, audio: np.ndarray, sample_rate: int, rows: np.ndarray, block: int) -> np.ndarray:
        """Process audio with knob values changing every ``block`` samples (rows: (n_blocks, n_knobs),
        physical units). pedalboard keeps its state across calls with reset=False."""
        audio = np.asarray(audio, np.float32)
        n_blocks = -(-len(audio) // block)
        if rows.shape != (n_blocks, len(self.knobs)):
            raise ValueError(f"effect {self.name}: automation has shape {rows.shape}, expected {(n_blocks, len(self.knobs))}")
        board = self.make(**self._values(rows[0]))
        out = np.empty_like(audio)
        for b in range(n_blocks):
            if b and self.update is not None and not np.array_equal(rows[b], rows[b - 1]):
                self.update(board, self._values(rows[b]))
            seg = audio[b * block:(b + 1) * block]
            out[b * block:(b + 1) * block] = board(seg[None, :], sample_rate, reset=False)[0]
        return out


def _set_attrs(plugin_index: int = 0):
    def update(board: pb.Pedalboard, values: dict) -> None:
        for k, v in values.items():
            setattr(board[plugin_index], k, v)
    return update


COMP4 = Effect(
    name="comp4",
    description="compressor, 4 knobs (pedalboard Compressor)",
    knobs=(
        KnobSpec("threshold_db", "dB", -50.0, 0.0, -20.0, "lin"),
        KnobSpec("ratio", ":1", 1.5, 10.0, 4.0, "log"),
        KnobSpec("attack_ms", "ms", 1.0, 1000.0, 10.0, "log"),
        KnobSpec("release_ms", "ms", 1.0, 1000.0, 100.0, "log"),
    ),
    make=lambda threshold_db, ratio, attack_ms, release_ms: pb.Pedalboard(
        [pb.Compressor(threshold_db=threshold_db, ratio=ratio, attack_ms=attack_ms, release_ms=release_ms)]),
    update=_set_attrs(0),
)

CATALOGUE: dict[str, Effect] = {e.name: e for e in (COMP4,)}


def get_effect(name: str) -> Effect:
    if name not in CATALOGUE:
        raise ValueError(f"unknown effect {name!r} (catalogue: {sorted(CATALOGUE)})")
    return CATALOGUE[name]


def sample_knobs(effect: Effect, rng: np.random.Generator, n: int, edge_weight: float = 0.3) -> np.ndarray:
    """(n, n_knobs) physical values covering the knob space: uniform in knob position (after the
    taper), with extra weight at the ends of each range (``edge_weight`` of draws land in the
    outer 10% at either end), where SignalTrain found the effects hardest."""
    pos = rng.uniform(0, 1, (n, len(effect.knobs)))
    edge = rng.uniform(0, 1, pos.shape) < edge_weight
    ends = np.where(rng.uniform(0, 1, pos.shape) < 0.5, rng.uniform(0, 0.1, pos.shape), rng.uniform(0.9, 1, pos.shape))
    pos = np.where(edge, ends, pos)
    return np.array([[k.from_normalized(p) for k, p in zip(effect.knobs, row)] for row in pos])


def heldout_grid(effect: Effect, per_knob: int = 2) -> np.ndarray:
    """A fixed grid of held-out settings for testing: positions 0.2/0.8 (per_knob=2) or
    evenly inside (per_knob>2) on every knob, never the exact training draws."""
    levels = [0.2, 0.8] if per_knob == 2 else list(np.linspace(0.15, 0.85, per_knob))
    grids = np.meshgrid(*[levels] * len(effect.knobs), indexing="ij")
    pos = np.stack([g.ravel() for g in grids], axis=1)
    return np.array([[k.from_normalized(p) for k, p in zip(effect.knobs, row)] for row in pos])
