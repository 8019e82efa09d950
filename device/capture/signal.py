"""The capture signal: what the box plays into a pedal, once per knob setting, to learn it.

Made here with numpy alone (the box has no soundfonts and no torch), deterministic from its
version, length and seed, so the box makes the same signal the host would and a resumed capture
plays what the first passes played. The version is recorded in every dataset it makes; change
``SIGNAL_VERSION`` whenever a change would alter a single sample.

Layout (``layout``; a 60 s signal; only the program parts scale with ``seconds``):

    lead-in     0.5 s   silence
    clicks_a    0.5 s   4 sync clicks (6 ms band-limited noise bursts, uneven gaps): latency
    quiet       1.5 s   silence: the pedal's noise floor (its last second)
    repeat_a    3.0 s   a guitar phrase, a bass note, a level step
    train       ~80 %   program: guitar-like DI (single notes, strums, palm mutes) across dynamics,
                        bass, drums, log sweeps, level steps and tone bursts (a compressor's attack
                        and release), pink noise
    val         ~10 %   the same kinds, other notes (a different seed)
    test        ~10 %   the same kinds, other notes again
    gap         1.0 s   silence, so the pedal's state (a release, an echo) has died down
    repeat_b    3.0 s   repeat_a again, sample for sample: drift and noise between the repeats
    gap_b       0.5 s
    clicks_b    0.5 s   the clicks again: the latency at the end (a drift or a dropout moves it)
    tail        0.5 s   silence, so a late return is still recorded

The dataset's Train input is ``repeat_a`` + ``train``, Val is ``val``, Test is ``test``: each piece
of audio belongs to one split, and every knob setting plays all three.

``program``: which draw of the program parts (train, val, test) the signal holds. Program 0 is
the signal as it always was; program k > 0 draws those three parts afresh (other notes, rhythms,
levels and order) and keeps every fixed part sample for sample (clicks, quiet, the repeated
section, the gaps), so the checks read every program alike. A capture gives each setting its own
program by default (session.py, ``--programs``): a model then hears as many different sources as
settings were captured, not one minute of program N times.

Peaks stay at or below -1 dBFS; the capture's ``level_db`` turns the whole signal down to suit
the pedal's input.

    python -m device capture-signal --out signal.wav [--seconds 60]   # to listen to it
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIGNAL_VERSION = "st-capture-1"
SAMPLE_RATE = 48000
PEAK_DBFS = -1.0
CLICK_GAPS_S = (0.11, 0.17, 0.13)  # uneven: no lag but the right one lines up more than one click
CLICK_MS = 6.0
CLICK_LEVEL = 0.5


@dataclass(frozen=True)
class CaptureSignal:
    audio: np.ndarray  # mono float32
    sample_rate: int
    regions: dict  # name -> (start, end) in samples, in playing order
    version: str
    seconds: float
    seed: int
    program: int = 0

    def region(self, name: str) -> np.ndarray:
        a, b = self.regions[name]
        return self.audio[a:b]

    def reference(self) -> np.ndarray:
        """The start of the signal up to the first program (lead-in, clicks, quiet): what the
        reference pass plays, with the pedal bypassed or a cable from the box's output to its input."""
        return self.audio[:self.regions["repeat_a"][0]]

    def split_ranges(self) -> dict:
        """Split -> (start, end) of the input each split's pairs hold."""
        r = self.regions
        return {"Train": (r["repeat_a"][0], r["train"][1]), "Val": r["val"], "Test": r["test"]}

    def describe(self) -> dict:
        return {"version": self.version, "seconds": self.seconds, "seed": self.seed, "sample_rate": self.sample_rate,
                "samples": len(self.audio), "regions": {k: list(v) for k, v in self.regions.items()}}


# --- instruments (additive, vectorised: no per-sample Python loop) ---------------------------------
def _string(f0: float, seconds: float, sr: int, rng, decay_s: float, n_harm: int, pick: float,
            mute: bool = False) -> np.ndarray:
    """A plucked string as a DI pickup hears it: harmonics with the pick position's comb, higher
    ones dying faster, a touch of inharmonicity; a palm mute damps it all within ~80 ms."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n)
    b = 1e-4  # inharmonicity
    for k in range(1, n_harm + 1):
        fk = k * f0 * np.sqrt(1 + b * k * k)
        if fk > 0.45 * sr:
            break
        amp = abs(np.sin(np.pi * k * pick)) / k
        tau = decay_s / (1.0 + 0.35 * (k - 1)) * (0.12 if mute else 1.0)
        out += amp * np.exp(-t / tau) * np.sin(2 * np.pi * fk * t + rng.uniform(0, 2 * np.pi))
    attack = np.minimum(1.0, t / 0.002)
    return out * attack


def _kick(sr, rng):
    t = np.arange(int(0.35 * sr)) / sr
    f = 45 + 110 * np.exp(-t / 0.03)
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.12) + 0.3 * rng.standard_normal(len(t)) * np.exp(-t / 0.004)


def _snare(sr, rng):
    t = np.arange(int(0.25 * sr)) / sr
    noise = np.diff(rng.standard_normal(len(t) + 1))
    return 0.6 * noise * np.exp(-t / 0.06) + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.04)


def _hat(sr, rng, open_=False):
    t = np.arange(int((0.3 if open_ else 0.06) * sr)) / sr
    noise = np.diff(rng.standard_normal(len(t) + 2), 2)
    return 0.4 * noise * np.exp(-t / (0.1 if open_ else 0.015))


def _place(buf: np.ndarray, sound: np.ndarray, at: int, gain: float) -> None:
    if at >= len(buf):
        return
    m = min(len(sound), len(buf) - at)
    buf[at:at + m] += gain * sound[:m]


def _normalize(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    p = float(np.abs(x).max())
    return x * (10 ** (peak_dbfs / 20) / p) if p > 0 else x


def _dynamics(rng, n_bars: int) -> np.ndarray:
    """A gain per bar: soft, medium and hard playing, with sudden changes."""
    return rng.choice([0.1, 0.3, 0.6, 1.0], n_bars) * rng.uniform(0.85, 1.0, n_bars)


PENTATONIC = np.array([0, 3, 5, 7, 10, 12, 15, 17, 19, 22, 24])


def guitar_part(rng, seconds: float, sr: int) -> np.ndarray:
    """Single notes, strummed chords and palm-muted chugs on an E-to-A-string root, per-bar dynamics."""
    n = int(seconds * sr)
    out = np.zeros(n)
    beat = 60.0 / rng.uniform(80, 150)
    dyn = _dynamics(rng, int(seconds / (4 * beat)) + 2)
    root = 82.41 * 2 ** (rng.integers(0, 6) / 12)
    t = 0.0
    while t < seconds:
        g = dyn[int(t / (4 * beat))]
        what = rng.choice(["note", "chord", "mute"], p=[0.5, 0.3, 0.2])
        step = beat * rng.choice([0.5, 1.0, 2.0]) if what != "mute" else beat * 0.5
        if what == "note":
            f = root * 2 ** (rng.choice(PENTATONIC) / 12 + rng.integers(0, 2))
            _place(out, _string(f, step + 0.3, sr, rng, 1.2, 30, rng.uniform(0.1, 0.25)), int(t * sr), g)
        else:
            for i, iv in enumerate((0, 7, 12, 16) if what == "chord" else (0, 7)):
                f = root * 2 ** (iv / 12)
                _place(out, _string(f, step + 0.3, sr, rng, 1.5, 24, 0.18, mute=what == "mute"),
                       int((t + i * rng.uniform(0.006, 0.02)) * sr), 0.6 * g)
        t += step
    return out


def bass_part(rng, seconds: float, sr: int) -> np.ndarray:
    n = int(seconds * sr)
    out = np.zeros(n)
    beat = 60.0 / rng.uniform(80, 140)
    dyn = _dynamics(rng, int(seconds / (4 * beat)) + 2)
    root = 41.2 * 2 ** (rng.integers(0, 7) / 12)
    t = 0.0
    while t < seconds:
        step = beat * rng.choice([0.5, 1.0, 2.0])
        f = root * 2 ** (rng.choice(PENTATONIC[:7]) / 12)
        _place(out, _string(f, step + 0.2, sr, rng, 2.0, 16, 0.25, mute=rng.random() < 0.2), int(t * sr),
               dyn[int(t / (4 * beat))])
        t += step
    return out


def drum_part(rng, seconds: float, sr: int) -> np.ndarray:
    n = int(seconds * sr)
    out = np.zeros(n)
    step = 60.0 / rng.uniform(80, 160) / 2  # eighth notes
    dyn = _dynamics(rng, int(seconds / (8 * step)) + 2)
    for i in range(int(seconds / step)):
        at, g = int(i * step * sr), dyn[i // 8]
        if i % 8 in (0, 3) or (i % 8 == 5 and rng.random() < 0.3):
            _place(out, _kick(sr, rng), at, g)
        if i % 8 in (2, 6):
            _place(out, _snare(sr, rng), at, g)
        _place(out, _hat(sr, rng, open_=rng.random() < 0.1), at, 0.5 * g * rng.uniform(0.6, 1.0))
    return out


def sweep(rng, seconds: float, sr: int) -> np.ndarray:
    """A log sine sweep 30 Hz -> 16 kHz at one level, then back down at another."""
    n = int(seconds * sr) // 2
    t = np.arange(n) / sr
    T, f1, f2 = n / sr, 30.0, 16000.0
    k = np.log(f2 / f1)
    up = np.sin(2 * np.pi * f1 * T / k * (np.exp(t / T * k) - 1))
    levels = 10 ** (rng.uniform(-30, 0, 2) / 20)
    return np.concatenate([levels[0] * up, levels[1] * up[::-1]])


def level_steps(rng, seconds: float, sr: int) -> np.ndarray:
    """Steps between -50 and 0 dB on a tone or on noise, 30 ms to 1 s each, and short tone bursts:
    what a compressor's threshold, attack and release answer to."""
    n = int(seconds * sr)
    out = np.zeros(n)
    at = 0
    while at < n:
        dur = int(rng.uniform(0.03, 1.0) * sr)
        m = min(dur, n - at)
        t = np.arange(m) / sr
        level = 10 ** (rng.uniform(-50, 0) / 20)
        if rng.random() < 0.25:  # a burst of 2..200 ms, then silence
            burst = int(rng.uniform(0.002, 0.2) * sr)
            carrier = np.sin(2 * np.pi * rng.uniform(80, 2000) * t)
            carrier[burst:] = 0
        elif rng.random() < 0.5:
            carrier = np.sin(2 * np.pi * rng.uniform(60, 1500) * t)
        else:
            carrier = _pink(rng, m)
        out[at:at + m] = level * carrier
        at += m
    return out


def _pink(rng, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-12)


def mix(rng, seconds: float, sr: int) -> np.ndarray:
    """Guitar, bass and drums together."""
    return guitar_part(rng, seconds, sr) + 0.8 * bass_part(rng, seconds, sr) + 0.6 * drum_part(rng, seconds, sr)


KINDS = {"guitar": guitar_part, "bass": bass_part, "drums": drum_part, "mix": mix, "sweep": sweep,
         "steps": level_steps}


def program_part(rng, seconds: float, sr: int, item_s: float = 4.0) -> np.ndarray:
    """Items of every kind in turn (shuffled once), each at its own peak level (-30..-1 dBFS), with
    short silences between some of them."""
    order = list(KINDS)
    rng.shuffle(order)
    n = int(seconds * sr)
    out = np.zeros(n)
    at, i = 0, 0
    while at < n:
        dur = min(item_s * rng.uniform(0.75, 1.25), (n - at) / sr)
        item = KINDS[order[i % len(order)]](rng, dur, sr)
        if not len(item):  # the part's last sliver, under a sample (programs 1..: program 0 never met one)
            break
        level = rng.choice([-30.0, -18.0, -10.0, PEAK_DBFS]) if i >= len(order) else [-18.0, -6.0][i % 2]
        item = _normalize(item, level)
        out[at:at + len(item)] = item[:n - at]
        at += len(item) + (int(rng.uniform(0.05, 0.4) * sr) if rng.random() < 0.4 else 0)
        i += 1
    return out


def click_burst(sr: int) -> np.ndarray:
    """A 6 ms Hann-windowed burst of noise band-limited to 100 Hz..3 kHz: the guitar's band, which
    tone controls, cabinets and clippers keep, so it still correlates (0.2..0.7 through the
    catalogue's drive, fuzz and amp at their extremes, where a white 2 ms click fell to 0.1)."""
    n = int(CLICK_MS * sr / 1000)
    rng = np.random.default_rng(7)
    spec = np.fft.rfft(rng.standard_normal(4 * n))
    f = np.fft.rfftfreq(4 * n, 1 / sr)
    spec[(f < 100) | (f > 3000)] = 0
    b = np.fft.irfft(spec, 4 * n)[:n] * np.hanning(n)
    return CLICK_LEVEL * b / np.abs(b).max()


CLICKS_S = 0.5


def clicks(sr: int, seconds: float = CLICKS_S) -> np.ndarray:
    out = np.zeros(int(seconds * sr))
    burst = click_burst(sr)
    at = int(0.05 * sr)
    for gap in (0.0,) + CLICK_GAPS_S:
        at += int(gap * sr)
        out[at:at + len(burst)] = burst
    return out


def repeat_section(sr: int) -> np.ndarray:
    rng = np.random.default_rng(1234)
    g = _normalize(guitar_part(rng, 1.4, sr), -8.0)
    b = _normalize(_string(55.0, 0.8, sr, rng, 2.0, 16, 0.25), -10.0)
    t = np.arange(int(0.8 * sr)) / sr
    step = np.sin(2 * np.pi * 330 * t) * np.where(t < 0.3, 0.03, 0.5)  # -30 -> -6 dB: an attack, then a release
    return np.concatenate([g, b, step])


MIN_SECONDS = 6.0
# fixed parts (s): a full-length signal's, and a short one's (tests, a quick look)
FIXED_S = {"lead_in": 0.5, "quiet": 1.5, "repeat": 3.0, "gap": 1.0, "gap_b": 0.5, "tail": 0.5}
FIXED_SHORT_S = {"lead_in": 0.2, "quiet": 0.6, "repeat": 1.0, "gap": 0.4, "gap_b": 0.3, "tail": 0.3}


def _fixed(seconds: float) -> dict:
    """The fixed parts' lengths: a full signal's, or under 30 s a short one's."""
    return FIXED_S if seconds >= 30 else FIXED_SHORT_S


def _program_seconds(seconds: float) -> float:
    """How much of a ``seconds`` signal is program (train + val + test)."""
    fx = _fixed(seconds)
    fixed_s = fx["lead_in"] + 2 * CLICKS_S + fx["quiet"] + 2 * fx["repeat"] + fx["gap"] + fx["gap_b"] + fx["tail"]
    return max(seconds - fixed_s, 1.5)


def dataset_bytes(seconds: float, settings: int, programs: int = 0, sample_rate: int = SAMPLE_RATE) -> int:
    """About what a capture of ``settings`` takes on disk (float WAVs: targets per setting, inputs
    per program; ``programs`` as ``device capture --programs``)."""
    fx = _fixed(seconds)
    per_setting = 4 * sample_rate * (fx["repeat"] + _program_seconds(seconds))  # Train + Val + Test
    inputs = settings if programs == 0 else min(programs, settings)
    return int(per_setting * (settings + inputs))


def make_signal(seconds: float = 60.0, seed: int = 0, sample_rate: int = SAMPLE_RATE, program: int = 0) -> CaptureSignal:
    """The capture signal of about ``seconds`` (at least MIN_SECONDS; under 30 s the fixed parts
    are shortened too, for tests), its program parts drawn as ``program`` (0: the first draw)."""
    if seconds < MIN_SECONDS:
        raise ValueError(f"capture signal: seconds = {seconds} is too short (at least {MIN_SECONDS})")
    if program < 0:
        raise ValueError(f"capture signal: program = {program} (0 or more)")
    sr = sample_rate
    fx = _fixed(seconds)
    rep = repeat_section(sr)[: int(fx["repeat"] * sr)]
    prog_s = _program_seconds(seconds)
    rngs = [np.random.default_rng([seed, i] + ([program] if program else [])) for i in range(3)]
    z = lambda key: np.zeros(int(fx[key] * sr))

    def sounding(rng, seconds, item_s=4.0):  # a short part can be all rests: drawn again, on the same rng
        for _ in range(20):
            x = program_part(rng, seconds, sr, item_s)
            if np.abs(x).max() > 0.01:
                return x
        raise RuntimeError(f"capture signal: no sounding program part in 20 draws (seed {seed}, program {program})")

    parts = [("lead_in", z("lead_in")), ("clicks_a", clicks(sr)), ("quiet", z("quiet")),
             ("repeat_a", rep), ("train", sounding(rngs[0], 0.8 * prog_s)),
             ("val", sounding(rngs[1], 0.1 * prog_s, item_s=2.0)),
             ("test", sounding(rngs[2], 0.1 * prog_s, item_s=2.0)),
             ("gap", z("gap")), ("repeat_b", rep), ("gap_b", z("gap_b")), ("clicks_b", clicks(sr)), ("tail", z("tail"))]
    regions, at = {}, 0
    for name, a in parts:
        regions[name] = (at, at + len(a))
        at += len(a)
    audio = np.concatenate([a for _, a in parts])
    peak = float(np.abs(audio).max())
    limit = 10 ** (PEAK_DBFS / 20)
    if peak > limit:
        audio *= limit / peak
    return CaptureSignal(audio.astype(np.float32), sr, regions, SIGNAL_VERSION, float(seconds), int(seed), int(program))


def write_signal(sig: CaptureSignal, out: Path) -> tuple[Path, Path]:
    """The signal as a float WAV and its layout beside it (``.json``)."""
    import soundfile as sf
    out = Path(out)
    sf.write(str(out), sig.audio, sig.sample_rate, subtype="FLOAT")
    meta = out.with_suffix(".json")
    meta.write_text(json.dumps(sig.describe(), indent=1) + "\n")
    return out, meta
