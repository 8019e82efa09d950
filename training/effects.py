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
    make: Callable[..., pb.Pedalboard]  # knob values by name -> a fresh board (or one that quacks like it)
    update: Callable[[pb.Pedalboard, dict], None] | None = None  # set knobs on a running board
    gain_only: bool = False  # the effect is a time-varying gain (dynamics): the model needs no residual path

    @property
    def knob_names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def defaults(self) -> list[float]:
        return [k.default for k in self.knobs]

    def _values(self, values: Sequence[float]) -> dict:
        if len(values) != len(self.knobs):
            raise ValueError(f"effect {self.name}: expected {len(self.knobs)} knob values {self.knob_names}, got {list(values)}")
        return dict(zip(self.knob_names, map(float, values)))

    def _board(self, values: Sequence[float], seed: int):
        board = self.make(**self._values(values))
        if hasattr(board, "seed"):  # effects with randomness (noise); pedalboard's are deterministic
            board.seed = int(seed)
        return board

    def render(self, audio: np.ndarray, sample_rate: int, values: Sequence[float], seed: int = 0) -> np.ndarray:
        """Process mono float32 audio at fixed knob values, from a fresh (reset) state. ``seed``
        picks the noise of effects that add any (the same seed renders the same target)."""
        board = self._board(values, seed)
        return board(np.asarray(audio, np.float32)[None, :], sample_rate, reset=True)[0].astype(np.float32)

    def render_automation(self, audio: np.ndarray, sample_rate: int, rows: np.ndarray, block: int,
                          seed: int = 0) -> np.ndarray:
        """Process audio with knob values changing every ``block`` samples (rows: (n_blocks, n_knobs),
        physical units). pedalboard keeps its state across calls with reset=False."""
        audio = np.asarray(audio, np.float32)
        n_blocks = -(-len(audio) // block)
        if rows.shape != (n_blocks, len(self.knobs)):
            raise ValueError(f"effect {self.name}: automation has shape {rows.shape}, expected {(n_blocks, len(self.knobs))}")
        board = self._board(rows[0], seed)
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


def _set_params(mapping: dict[str, tuple[int, str, Callable[[float], float]]]):
    """An ``update`` that sets each knob on its plugin: knob name -> (plugin index, attribute,
    physical value -> attribute value)."""
    def update(board: pb.Pedalboard, values: dict) -> None:
        for k, v in values.items():
            index, attr, conv = mapping[k]
            setattr(board[index], attr, conv(v))
    return update


def _same(v: float) -> float:
    return v


def _ms_to_s(v: float) -> float:
    return v / 1000.0


class NoiseAdder:
    """Adds white Gaussian noise at ``noise_db`` dBFS RMS. Deterministic: the noise at sample n
    depends only on (seed, n), drawn in blocks of 4096 from ``default_rng([seed, block])``, so a pair
    renders the same each time and chunked rendering (reset=False) equals one call on the whole.

    Quacks like a one-plugin ``pedalboard.Pedalboard`` (called as ``board(audio, sample_rate,
    reset)``, ``board[0]`` is the plugin) because pedalboard cannot host Python plugins."""
    block = 4096

    def __init__(self, noise_db: float, seed: int = 0):
        self.noise_db = float(noise_db)
        self.seed = int(seed)
        self.position = 0  # samples produced since the last reset

    def __getitem__(self, index: int) -> "NoiseAdder":
        if index != 0:
            raise IndexError(index)
        return self

    def __len__(self) -> int:
        return 1

    def reset(self) -> None:
        self.position = 0

    def noise(self, start: int, n: int) -> np.ndarray:
        first, last = start // self.block, (start + n - 1) // self.block
        blocks = [np.random.default_rng([self.seed, b]).standard_normal(self.block, np.float32)
                  for b in range(first, last + 1)]
        offset = start - first * self.block
        return np.concatenate(blocks)[offset:offset + n]

    def __call__(self, audio: np.ndarray, sample_rate: float, reset: bool = True) -> np.ndarray:
        if reset:
            self.reset()
        audio = np.asarray(audio, np.float32)
        n = audio.shape[-1]
        if n == 0:
            return audio.copy()
        added = self.noise(self.position, n) * np.float32(10 ** (self.noise_db / 20))
        self.position += n
        return (audio + added).astype(np.float32)


COMP4 = Effect(
    name="comp4",
    description="compressor, 4 knobs (pedalboard Compressor)",
    gain_only=True,
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

# Drive/tone pedal with memory: a fixed 200 Hz high-pass before the clipper (a Tube Screamer's bass
# cut: how hard the clipper is driven depends on frequency), tanh clipping, a resonant 12 dB/oct
# ladder low-pass as the tone control, the output level, and a 10 Hz high-pass as the output
# coupling capacitor. The filters around the memoryless
# tanh make it a system with state, unlike ``Distortion`` alone. Level tops out at -6 dBFS so the
# resonant peak after a saturated tanh stays below full scale (no clipping warnings on our data).
DRIVE = Effect(
    name="drive",
    description="overdrive: 200 Hz high-pass -> gain -> tanh -> resonant ladder low-pass (tone) -> level -> DC block",
    knobs=(
        KnobSpec("drive_db", "dB", 0.0, 40.0, 20.0, "lin"),
        KnobSpec("tone_hz", "Hz", 400.0, 8000.0, 2000.0, "log"),
        KnobSpec("level_db", "dB", -30.0, -6.0, -12.0, "lin"),
    ),
    make=lambda drive_db, tone_hz, level_db: pb.Pedalboard([
        pb.HighpassFilter(cutoff_frequency_hz=200.0),
        pb.Gain(gain_db=drive_db),
        pb.Distortion(drive_db=0.0),  # exactly tanh(x)
        pb.LadderFilter(mode=pb.LadderFilter.Mode.LPF12, cutoff_hz=tone_hz, resonance=0.3, drive=1.0),
        pb.Gain(gain_db=level_db),
        pb.HighpassFilter(cutoff_frequency_hz=10.0),  # the output coupling capacitor: tanh of an asymmetric wave has DC
    ]),
    update=_set_params({"drive_db": (1, "gain_db", _same), "tone_hz": (3, "cutoff_hz", _same),
                        "level_db": (4, "gain_db", _same)}),
)

# Echo: times up to 500 ms so that the echo falls inside the model's look-back (0.5 s by default);
# feedback up to 0.7 keeps the repeats' build-up (at most 1/(1-0.7) = 3.3x) from running away.
ECHO = Effect(
    name="echo",
    description="digital delay with feedback (pedalboard Delay)",
    knobs=(
        KnobSpec("delay_ms", "ms", 20.0, 500.0, 120.0, "log"),
        KnobSpec("feedback", "", 0.0, 0.7, 0.3, "lin"),
        KnobSpec("mix", "", 0.0, 1.0, 0.4, "lin"),
    ),
    make=lambda delay_ms, feedback, mix: pb.Pedalboard(
        [pb.Delay(delay_seconds=delay_ms / 1000.0, feedback=feedback, mix=mix)]),
    update=_set_params({"delay_ms": (0, "delay_seconds", _ms_to_s), "feedback": (0, "feedback", _same),
                        "mix": (0, "mix", _same)}),
)

CHORUS = Effect(
    name="chorus",
    description="chorus: an LFO-modulated 7 ms delay mixed with the dry signal (pedalboard Chorus)",
    knobs=(
        KnobSpec("rate_hz", "Hz", 0.1, 5.0, 1.0, "log"),
        KnobSpec("depth", "", 0.0, 1.0, 0.5, "lin"),
        KnobSpec("mix", "", 0.0, 1.0, 0.5, "lin"),
    ),
    make=lambda rate_hz, depth, mix: pb.Pedalboard(
        [pb.Chorus(rate_hz=rate_hz, depth=depth, mix=mix, centre_delay_ms=7.0, feedback=0.0)]),
    update=_set_attrs(0),
)

PHASER = Effect(
    name="phaser",
    description="phaser: LFO-swept all-pass notches around 1.3 kHz, half wet (pedalboard Phaser)",
    knobs=(
        KnobSpec("rate_hz", "Hz", 0.1, 5.0, 0.5, "log"),
        KnobSpec("depth", "", 0.0, 1.0, 0.5, "lin"),
        KnobSpec("feedback", "", 0.0, 0.8, 0.3, "lin"),
    ),
    make=lambda rate_hz, depth, feedback: pb.Pedalboard(
        [pb.Phaser(rate_hz=rate_hz, depth=depth, feedback=feedback, mix=0.5, centre_frequency_hz=1300.0)]),
    update=_set_attrs(0),
)

# Noise added at a known level: the forward effect is trivial, its inverse (build with
# --inverse: input noisy, target clean) is a de-noiser whose knob says how much noise to remove.
NOISE = Effect(
    name="noise",
    description="adds white noise at a set RMS level (deterministic per pair); its inverse is a tunable de-noiser",
    knobs=(KnobSpec("noise_db", "dBFS", -80.0, -20.0, -50.0, "lin"),),
    make=lambda noise_db: NoiseAdder(noise_db),
    update=_set_attrs(0),
)

CATALOGUE: dict[str, Effect] = {e.name: e for e in (COMP4, DRIVE, ECHO, CHORUS, PHASER, NOISE)}
INVERSE_SUFFIX = "_inv"


def get_effect(name: str) -> Effect:
    if name not in CATALOGUE:
        raise ValueError(f"unknown effect {name!r} (catalogue: {sorted(CATALOGUE)})")
    return CATALOGUE[name]


def base_effect_name(name: str) -> tuple[str, bool]:
    """'noise_inv' -> ('noise', True): the catalogue effect behind a dataset's effect name, and
    whether the dataset is its inverse (input and target swapped)."""
    if name.endswith(INVERSE_SUFFIX) and name[:-len(INVERSE_SUFFIX)] in CATALOGUE:
        return name[:-len(INVERSE_SUFFIX)], True
    return name, False


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
