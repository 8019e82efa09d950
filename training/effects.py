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
    make: Callable[..., pb.Pedalboard] | None  # knob values by name -> a fresh board (or one that quacks like it)
    update: Callable[[pb.Pedalboard, dict], None] | None = None  # set knobs on a running board
    gain_only: bool = False  # the effect is a time-varying gain (dynamics): the model needs no residual path
    # A custom render path for effects that are no board: (audio, sample_rate, rows (n_blocks, n_knobs),
    # block) -> output. Offline, so it may look ahead (``timing`` does); such an effect is not causal.
    offline: Callable[[np.ndarray, int, np.ndarray, int], np.ndarray] | None = None

    @property
    def causal(self) -> bool:
        """Whether the forward effect can run in real time (a board); an offline one may look ahead,
        and only its inverse (``--inverse``) is a task for a causal model."""
        return self.offline is None

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
        if self.offline is not None:
            audio = np.asarray(audio, np.float32)
            row = np.array([list(self._values(values).values())])
            return self.offline(audio, sample_rate, row, max(len(audio), 1)).astype(np.float32)
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
        if self.offline is not None:
            return self.offline(audio, sample_rate, np.asarray(rows, np.float64), block).astype(np.float32)
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

class Chain:
    """Stages run in turn, each a pedalboard plugin or a Python processor with the same call,
    ``stage(audio, sample_rate, reset=...)``. Quacks like ``pedalboard.Pedalboard`` (``board[i]`` is
    stage i, so ``_set_params`` updates it) because pedalboard cannot host Python plugins. Chunked
    processing (reset=False) equals one call when every stage keeps its state across calls."""

    def __init__(self, stages):
        self.stages = list(stages)

    def __getitem__(self, index: int):
        return self.stages[index]

    def __len__(self) -> int:
        return len(self.stages)

    def __call__(self, audio: np.ndarray, sample_rate: float, reset: bool = True) -> np.ndarray:
        out = np.asarray(audio, np.float32)
        for stage in self.stages:
            out = stage(out, sample_rate, reset=reset)
        return out


class AsymmetricClipper:
    """A transistor-like clipping stage, memoryless: tanh above zero (soft, up to +1) and a harder
    knee below, ``-k * v / (1 + v^4)^(1/4)`` with v = -x/k, that flattens at -k. ``bias`` (0..1)
    is the transistor's operating point: it sets the negative clip level k = 0.6 * (1 - 0.9 * bias),
    from 0.6 down to 0.06. The halves differ at every bias (soft against hard, +1 against -k), so
    the output always has even harmonics, more as bias rises. Slope 1 at zero on both sides: a
    quiet signal passes, silence stays silent; the DC that clipping makes is left to a high-pass."""

    def __init__(self, bias: float = 0.0):
        self.bias = float(bias)

    @property
    def knee(self) -> float:
        return 0.6 * (1.0 - 0.9 * self.bias)

    def curve(self, u: np.ndarray) -> np.ndarray:
        k = self.knee
        v = np.maximum(-u, 0.0) / k
        return np.where(u >= 0, np.tanh(u), -k * v / (1.0 + v ** 4) ** 0.25)

    def __call__(self, audio: np.ndarray, sample_rate: float, reset: bool = True) -> np.ndarray:
        return self.curve(np.asarray(audio, np.float64)).astype(np.float32)


# Amp: a preamp (70 Hz high-pass and a +6 dB mid hump at 900 Hz before the clipper, so how hard it
# clips depends on frequency), tanh, a tone stack (bass shelf 150 Hz, mid peak 700 Hz, treble shelf
# 3 kHz, +-12 dB), the master level, then a 4-pole 4.5 kHz ladder low-pass as the cabinet (its
# saturating ladder plays the power amp) and a 10 Hz DC block. Level tops out at -12 dB: with every
# band at +12 dB and 45 dB of gain a -1 dBFS sweep peaks at 0.95.
AMP = Effect(
    name="amp",
    description="amp: 70 Hz high-pass + mid hump -> gain -> tanh -> bass/mid/treble tone stack -> level -> 4.5 kHz cabinet low-pass",
    knobs=(
        KnobSpec("gain_db", "dB", 0.0, 45.0, 20.0, "lin"),
        KnobSpec("bass_db", "dB", -12.0, 12.0, 0.0, "lin"),
        KnobSpec("mid_db", "dB", -12.0, 12.0, 0.0, "lin"),
        KnobSpec("treble_db", "dB", -12.0, 12.0, 0.0, "lin"),
        KnobSpec("level_db", "dB", -36.0, -12.0, -18.0, "lin"),
    ),
    make=lambda gain_db, bass_db, mid_db, treble_db, level_db: pb.Pedalboard([
        pb.HighpassFilter(cutoff_frequency_hz=70.0),
        pb.PeakFilter(cutoff_frequency_hz=900.0, gain_db=6.0, q=0.5),
        pb.Gain(gain_db=gain_db),
        pb.Distortion(drive_db=0.0),  # exactly tanh(x)
        pb.LowShelfFilter(cutoff_frequency_hz=150.0, gain_db=bass_db, q=0.7071),
        pb.PeakFilter(cutoff_frequency_hz=700.0, gain_db=mid_db, q=0.7),
        pb.HighShelfFilter(cutoff_frequency_hz=3000.0, gain_db=treble_db, q=0.7071),
        pb.Gain(gain_db=level_db),
        pb.LadderFilter(mode=pb.LadderFilter.Mode.LPF24, cutoff_hz=4500.0, resonance=0.1, drive=1.0),
        pb.HighpassFilter(cutoff_frequency_hz=10.0),
    ]),
    update=_set_params({"gain_db": (2, "gain_db", _same), "bass_db": (4, "gain_db", _same),
                        "mid_db": (5, "gain_db", _same), "treble_db": (6, "gain_db", _same),
                        "level_db": (7, "gain_db", _same)}),
)

# Fuzz: a big gain into the asymmetric clipper, a 20 Hz high-pass that takes out the DC the
# asymmetric clipping makes (its state follows the signal's envelope), a 12 dB/oct ladder low-pass
# as the tone control, and the level.
FUZZ = Effect(
    name="fuzz",
    description="fuzz: gain -> asymmetric clipper with a bias knob (even harmonics) -> 20 Hz DC block -> 12 dB/oct low-pass (tone) -> level",
    knobs=(
        KnobSpec("fuzz_db", "dB", 0.0, 50.0, 20.0, "lin"),
        KnobSpec("bias", "", 0.0, 1.0, 0.5, "lin"),
        KnobSpec("tone_hz", "Hz", 300.0, 6000.0, 1500.0, "log"),
        KnobSpec("level_db", "dB", -30.0, -6.0, -12.0, "lin"),
    ),
    make=lambda fuzz_db, bias, tone_hz, level_db: Chain([
        pb.Gain(gain_db=fuzz_db),
        AsymmetricClipper(bias),
        pb.HighpassFilter(cutoff_frequency_hz=20.0),
        pb.LadderFilter(mode=pb.LadderFilter.Mode.LPF12, cutoff_hz=tone_hz, resonance=0.0, drive=1.0),
        pb.Gain(gain_db=level_db),
    ]),
    update=_set_params({"fuzz_db": (0, "gain_db", _same), "bias": (1, "bias", _same),
                        "tone_hz": (3, "cutoff_hz", _same), "level_db": (4, "gain_db", _same)}),
)


def _depth_ms_to_chorus_depth(v: float) -> float:
    return v / 10.0  # pedalboard's Chorus sweeps its delay by +-10 ms x depth (measured), never below 1 ms


# Flanger: pedalboard's Chorus around a 3 ms delay, swept +-depth_ms (so 1..5 ms at full depth),
# with regeneration. Feedback stops at 0.85: the comb's peaks build up to at most 1/(1-0.85) = 6.7x.
FLANGER = Effect(
    name="flanger",
    description="flanger: a 3 ms delay swept +-depth_ms by an LFO, with feedback, mixed with the dry signal (pedalboard Chorus)",
    knobs=(
        KnobSpec("rate_hz", "Hz", 0.05, 5.0, 0.3, "log"),
        KnobSpec("depth_ms", "ms", 0.0, 2.0, 1.0, "lin"),
        KnobSpec("feedback", "", 0.0, 0.85, 0.5, "lin"),
        KnobSpec("mix", "", 0.0, 1.0, 0.5, "lin"),
    ),
    make=lambda rate_hz, depth_ms, feedback, mix: pb.Pedalboard([
        pb.Chorus(rate_hz=rate_hz, depth=_depth_ms_to_chorus_depth(depth_ms), centre_delay_ms=3.0,
                  feedback=feedback, mix=mix)]),
    update=_set_params({"rate_hz": (0, "rate_hz", _same), "depth_ms": (0, "depth", _depth_ms_to_chorus_depth),
                        "feedback": (0, "feedback", _same), "mix": (0, "mix", _same)}),
)


TIMING_FADE_MS = 5.0  # where push_ms moves between blocks, the read position glides over this long


def push_ahead(audio: np.ndarray, sample_rate: int, rows: np.ndarray, block: int) -> np.ndarray:
    """``timing``'s render: the whole signal advanced by push_ms, ``out[n] = audio[n + p]`` with
    p = round(push_ms * sample_rate / 1000) of n's block, silence past the end (offline: it looks
    ahead). Where p changes between blocks a linear crossfade of TIMING_FADE_MS from the old read
    position to the new one starts at the block boundary, so a moved knob does not click."""
    audio = np.asarray(audio, np.float32)
    n = len(audio)
    pushes = np.rint(np.asarray(rows, np.float64)[:, 0] * sample_rate / 1000.0).astype(np.int64)
    padded = np.concatenate([audio, np.zeros(int(pushes.max()) + 1, np.float32)])
    p = np.repeat(pushes, block)[:n]
    out = padded[np.arange(n) + p]
    fade = max(1, int(TIMING_FADE_MS * sample_rate / 1000))
    for b in np.flatnonzero(pushes[1:] != pushes[:-1]) + 1:
        s = int(b) * block
        e = min(s + fade, n, s + block)
        w = (np.arange(e - s, dtype=np.float32) + 1) / (fade + 1)
        old = padded[np.arange(s, e) + pushes[b - 1]]
        out[s:e] = (1 - w) * old + w * out[s:e]
    return out.astype(np.float32)


# Time alignment, the seed SignalTrain's task: the forward effect plays the material early by
# push_ms (drums rushing ahead of the grid). Its inverse (--inverse: input pushed, target on the
# grid) is the task, and it is causal: delay by the knob. The demo and full corpora render each
# item as one mono mix (no stems), so the whole signal moves, not only its drum part.
TIMING = Effect(
    name="timing",
    description="timing: the whole signal played push_ms early (ahead of the grid; offline, looks ahead); its inverse puts it back on the grid",
    knobs=(KnobSpec("push_ms", "ms", 0.0, 30.0, 10.0, "lin"),),
    make=None,
    offline=push_ahead,
)

CATALOGUE: dict[str, Effect] = {e.name: e for e in (COMP4, DRIVE, FUZZ, AMP, ECHO, CHORUS, FLANGER, PHASER, NOISE,
                                                    TIMING)}
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


# --- measuring time alignment ----------------------------------------------------------------------
ONSET_HOP_MS = 1.0  # the onset envelopes' frame rate
ONSET_N_FFT = 2048  # their analysis window (43 ms at 48 kHz): resolves a low bass note's harmonics, whose beating
#                     in a shorter window pulses the flux at every period
ONSET_FMIN_HZ = 300.0  # bands below are left out: a bass note's ripple there makes flux peaks that are no onsets


def _parabola(y: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Sub-frame offset (-0.5..0.5) of the peak at integer index k of each row of y (or of y)."""
    inner = (k > 0) & (k < y.shape[-1] - 1)
    kk = np.clip(k, 1, y.shape[-1] - 2)
    take = (lambda j: y[np.arange(len(k)), j]) if y.ndim == 2 else (lambda j: y[j])
    a, b, c = take(kk - 1), take(kk), take(kk + 1)
    curve = a - 2 * b + c
    off = np.where(curve < 0, 0.5 * (a - c) / np.where(curve < 0, curve, -1.0), 0.0)
    return np.where(inner, np.clip(off, -0.5, 0.5), 0.0)


def onset_envelope(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(flux, energy in dB under the loudest frame, hop in samples): band energy envelopes (the
    magnitudes of a Hann STFT, ONSET_N_FFT, hop ONSET_HOP_MS, bins from ONSET_FMIN_HZ up,
    normalised to the loudest) and their rise from one frame to the next summed over the bins
    (spectral flux). Frame j covers samples j * hop .. j * hop + ONSET_N_FFT."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = np.nan_to_num(np.asarray(audio, np.float64))
    hop = max(1, int(round(ONSET_HOP_MS * sample_rate / 1000)))
    if len(x) < ONSET_N_FFT + 2 * hop:
        return np.zeros(0), np.zeros(0), hop
    frames = sliding_window_view(x, ONSET_N_FFT)[::hop]
    window = np.hanning(ONSET_N_FFT)
    k0 = int(np.ceil(ONSET_FMIN_HZ * ONSET_N_FFT / sample_rate))
    mag = np.concatenate([np.abs(np.fft.rfft(frames[s:s + 1024] * window, axis=1))[:, k0:].astype(np.float32)
                          for s in range(0, len(frames), 1024)])
    loudest = float(mag.max())
    if loudest <= 0:
        return np.zeros(len(mag)), np.full(len(mag), -np.inf), hop
    mag /= loudest
    flux = np.concatenate([[0.0], np.maximum(mag[1:] - mag[:-1], 0).sum(axis=1)])
    energy = (mag.astype(np.float64) ** 2).sum(axis=1)
    return flux, 10 * np.log10(energy / energy.max() + 1e-30), hop


def _onset_frames(flux: np.ndarray, energy_db: np.ndarray, delta: float = 0.2, peak_ms: float = 30.0,
                  mean_before_ms: float = 100.0, mean_after_ms: float = 70.0, floor_db: float = -40.0,
                  min_gap_ms: float = 50.0) -> np.ndarray:
    """The frames that ``onsets`` picks (its docstring says how)."""
    from numpy.lib.stride_tricks import sliding_window_view

    if not len(flux):
        return np.zeros(0, np.int64)

    def frames_of(ms: float) -> int:
        return max(1, int(round(ms / ONSET_HOP_MS)))

    pk, mb, ma = frames_of(peak_ms), frames_of(mean_before_ms), frames_of(mean_after_ms)
    local_max = sliding_window_view(np.concatenate([np.full(pk, -np.inf), flux, np.full(pk, -np.inf)]),
                                    2 * pk + 1).max(axis=1)
    c = np.concatenate([[0.0], np.cumsum(flux)])
    idx = np.arange(len(flux))
    lo, hi = np.maximum(idx - mb, 0), np.minimum(idx + ma + 1, len(flux))
    local_mean = (c[hi] - c[lo]) / (hi - lo)
    hot = (flux == local_max) & (flux > 0) & (flux >= local_mean + delta * np.percentile(flux, 99)) \
        & (energy_db >= floor_db)
    picked, last = [], None
    for t in np.flatnonzero(hot):
        if last is None or t - last >= frames_of(min_gap_ms):
            picked.append(int(t))
            last = t
    return np.array(picked, np.int64)


def onsets(audio: np.ndarray, sample_rate: int, **pick) -> np.ndarray:
    """Onset times in samples (fractional) from ``onset_envelope``: a frame whose flux is the
    largest within +-30 ms, exceeds the mean flux from 100 ms before to 70 ms after by 0.2 x the
    flux's 99th percentile, has energy within 40 dB of the loudest frame and comes 50 ms after
    the last onset (``pick`` overrides these), refined by a parabola through the flux peak."""
    flux, energy_db, hop = onset_envelope(audio, sample_rate)
    t = _onset_frames(flux, energy_db, **pick)
    return (t + _parabola(flux, t)) * hop + ONSET_N_FFT / 2


def onset_errors_ms(reference: np.ndarray, audio: np.ndarray, sample_rate: int, max_ms: float = 50.0,
                    before_ms: float = 10.0, after_ms: float = 30.0, min_correlation: float = 0.5) -> np.ndarray:
    """Signed timing error (ms; negative: ``audio`` is early) at each onset of ``reference``
    (``onsets``): the lag, within +-``max_ms``, at which ``audio``'s flux best matches the
    reference's flux from ``before_ms`` before the onset to ``after_ms`` after it (normalised
    cross-correlation, refined by a parabola). Onsets are detected in the reference only, so an
    output whose onsets are smeared or doubled is still measured where the reference has one;
    onsets whose best correlation is under ``min_correlation`` (nothing like them in ``audio``)
    are left out. Pool these over many items for a benchmark: an item with few onsets gives a
    fragile median."""
    from numpy.lib.stride_tricks import sliding_window_view

    fr, er, hop = onset_envelope(reference, sample_rate)
    fa, _, _ = onset_envelope(audio, sample_rate)
    t = _onset_frames(fr, er)
    if not len(t) or not len(fa):
        return np.zeros(0)
    frame_ms = hop * 1000.0 / sample_rate
    pre, post, lag = (max(1, int(round(v / frame_ms))) for v in (before_ms, after_ms, max_ms))
    width = pre + post
    pad = pre + lag
    ref = np.concatenate([np.zeros(pad), fr, np.zeros(pad + post)])
    aud = np.concatenate([np.zeros(pad), fa, np.zeros(pad + post + max(0, len(fr) - len(fa)))])
    windows = sliding_window_view(aud, width)  # windows[j] = aud[j .. j + width)
    errs = []
    for t0 in t:
        start = t0 + pad - pre  # the reference segment's first index in the padded arrays
        seg = ref[start:start + width]
        cand = windows[start - lag:start + lag + 1]  # audio segments at lags -lag .. +lag
        norm = np.linalg.norm(seg) * np.linalg.norm(cand, axis=1)
        rho = np.where(norm > 0, cand @ seg / np.where(norm > 0, norm, 1.0), 0.0)
        k = int(np.argmax(rho))
        if rho[k] < min_correlation:
            continue
        errs.append((k - lag + float(_parabola(rho, np.array([k]))[0])) * frame_ms)
    return np.array(errs)


def onset_error_ms(reference: np.ndarray, audio: np.ndarray, sample_rate: int, max_ms: float = 50.0) -> float:
    """Median absolute onset timing error (ms) of ``audio`` against ``reference`` (per onset:
    ``onset_errors_ms``). The time-alignment benchmark compares this for the model's output with
    the input's (``timing --inverse``: input pushed by push_ms, target on the grid): it should be
    at most 1/5 of the input's. NaN where no reference onset is matched (no onsets, or nothing
    like them within ``max_ms``)."""
    err = onset_errors_ms(reference, audio, sample_rate, max_ms)
    return float(np.median(np.abs(err))) if len(err) else float("nan")
