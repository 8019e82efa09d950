"""Source audio without the internet: generated MIDI rendered with a pip-shipped soundfont, and
synthetic test signals that exercise a compressor's time constants. Deterministic from a seed.

Every generator returns mono float32 at the requested sample rate. ``demo_sources`` lists the
built-in default corpus as (name, kind, audio) items; a split is assigned per item, so no source
material ever appears in two splits.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def soundfont_path() -> Path:
    """TimGM6mb.sf2 (General MIDI, 6 MB, GPL-2) ships inside the pretty_midi package."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        raise RuntimeError("pretty_midi is not installed: its TimGM6mb.sf2 soundfont renders the demo corpus")
    sf2 = Path(spec.origin).parent / "TimGM6mb.sf2"
    if not sf2.is_file():
        raise RuntimeError(f"{sf2}: soundfont missing from the pretty_midi package")
    return sf2


# --- generated MIDI -----------------------------------------------------------------------------
# A note: (start_s, end_s, midi_key, velocity). Programs are General MIDI (0-based).
PROGRAMS = {"guitar": [24, 25, 26, 27, 29, 30], "bass": [32, 33, 34, 38], "keys": [0, 1, 4, 16]}
DRUMS = {"kick": 36, "snare": 38, "hat": 42, "open_hat": 46, "crash": 49, "tom": 45}


def _dynamics(rng, seconds, bar_s):
    """Velocity scale per bar: wide dynamic range, with crescendi and sudden drops."""
    n = int(seconds / bar_s) + 2
    return np.clip(rng.choice([0.15, 0.35, 0.6, 0.85, 1.0], n) * rng.uniform(0.8, 1.2, n), 0.08, 1.0)


def gen_part(kind: str, rng: np.random.Generator, seconds: float) -> list[tuple]:
    bpm = rng.uniform(70, 160)
    beat = 60.0 / bpm
    dyn = _dynamics(rng, seconds, 4 * beat)
    root = int(rng.integers(40, 52))
    scale = np.array([0, 3, 5, 7, 10, 12, 15, 17, 19, 22, 24])  # minor pentatonic
    notes = []
    t = 0.0
    while t < seconds:
        vel = lambda: int(np.clip(rng.normal(1.0, 0.15) * 127 * dyn[int(t / (4 * beat))], 5, 127))
        if kind == "guitar":
            step = beat * rng.choice([0.25, 0.5, 1.0])
            if rng.uniform() < 0.3:  # a strummed chord
                for i, iv in enumerate((0, 7, 12, 16)):
                    notes.append((t + 0.012 * i, t + step * rng.uniform(1, 3), root + 12 + iv, vel()))
            else:
                notes.append((t, t + step * rng.uniform(0.5, 1.5), root + 12 + int(rng.choice(scale)), vel()))
        elif kind == "bass":
            step = beat * rng.choice([0.5, 1.0])
            notes.append((t, t + step * 0.9, root - 12 + int(rng.choice(scale[:6])), vel()))
        elif kind == "keys":
            step = beat * rng.choice([1.0, 2.0])
            chord = root + 12 + int(rng.choice([0, 5, 7])) + np.array([0, 3, 7, 10])
            for k in chord:
                notes.append((t, t + step, int(k), vel()))
        elif kind == "drums":
            step = beat / 2
            eighth = int(round(t / step))
            if eighth % 4 == 0 or rng.uniform() < 0.15:
                notes.append((t, t + 0.1, DRUMS["kick"], vel()))
            if eighth % 4 == 2:
                notes.append((t, t + 0.1, DRUMS["snare"], vel()))
            notes.append((t, t + 0.05, DRUMS["hat" if rng.uniform() < 0.85 else "open_hat"], int(vel() * 0.7) + 1))
            if eighth % 32 == 0:
                notes.append((t, t + 0.5, DRUMS["crash"], vel()))
        else:
            raise ValueError(f"unknown part kind {kind!r}")
        t += step
    return [n for n in notes if n[0] < seconds]


def render_parts(parts: list[tuple[str, int, list]], seconds: float, sample_rate: int, sf2: Path) -> np.ndarray:
    """Render (kind, program, notes) parts with tinysoundfont into one mono float32 mix."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = synth.sfload(str(sf2))
    events = []  # (time_s, on, chan, key, vel)
    for chan, (kind, program, notes) in enumerate(parts):
        chan = 9 if kind == "drums" else chan
        synth.program_select(chan, sfid, 128 if kind == "drums" else 0, 0 if kind == "drums" else program, kind == "drums")
        for start, end, key, vel in notes:
            events += [(start, 1, chan, key, vel), (min(end, seconds), 0, chan, key, 0)]
    events.sort(key=lambda e: (e[0], e[1]))
    n_total = int(seconds * sample_rate)
    out = np.zeros((n_total, 2), np.float32)
    pos = 0
    for time_s, on, chan, key, vel in events + [(seconds, 0, 0, 0, 0)]:
        n = min(int(time_s * sample_rate), n_total)
        if n > pos:
            out[pos:n] = np.frombuffer(synth.generate(n - pos), np.float32).reshape(-1, 2)
            pos = n
        if on:
            synth.noteon(chan, key, vel)
        elif key:
            synth.noteoff(chan, key)
    return out.mean(axis=1)


def midi_clip(kind: str, rng: np.random.Generator, seconds: float, sample_rate: int, sf2: Path) -> np.ndarray:
    """One clip: a single instrument ("guitar", "bass", "keys", "drums") or a "mix" of all four."""
    kinds = ["guitar", "bass", "keys", "drums"] if kind == "mix" else [kind]
    parts = [(k, 0 if k == "drums" else int(rng.choice(PROGRAMS[k])), gen_part(k, rng, seconds)) for k in kinds]
    return render_parts(parts, seconds, sample_rate, sf2)


# --- synthetic test signals ------------------------------------------------------------------------
def level_steps(rng, seconds, sr):
    """A tone or noise whose level jumps between -50 and 0 dBFS every 30 ms..1 s: attack and release."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    carrier = np.sin(2 * np.pi * rng.uniform(80, 2000) * t) if rng.uniform() < 0.5 else rng.normal(0, 0.35, n)
    env = np.empty(n)
    i = 0
    while i < n:
        d = int(sr * 10 ** rng.uniform(np.log10(0.03), 0))
        env[i:i + d] = 10 ** (rng.uniform(-50, 0) / 20)
        i += d
    return carrier * env


def bursts(rng, seconds, sr):
    """Short loud tone bursts (2-200 ms) separated by silence or a quiet bed."""
    n = int(seconds * sr)
    out = rng.normal(0, 10 ** (rng.uniform(-70, -40) / 20), n)
    i = int(rng.uniform(0.05, 0.3) * sr)
    while i < n:
        d = int(sr * rng.uniform(0.002, 0.2))
        f = rng.uniform(60, 4000)
        seg = np.sin(2 * np.pi * f * np.arange(min(d, n - i)) / sr) * 10 ** (rng.uniform(-20, 0) / 20)
        out[i:i + len(seg)] += seg
        i += d + int(sr * rng.uniform(0.05, 0.8))
    return out


def sweep(rng, seconds, sr):
    """A log sine sweep 30 Hz..16 kHz with a slow level ramp."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0, f1 = 30.0, 16000.0
    phase = 2 * np.pi * f0 * seconds / np.log(f1 / f0) * (np.exp(t / seconds * np.log(f1 / f0)) - 1)
    return np.sin(phase) * 10 ** (np.linspace(rng.uniform(-40, -20), rng.uniform(-6, 0), n) / 20)


def plucks(rng, seconds, sr):
    """Karplus-Strong plucked strings at random pitches and velocities."""
    n = int(seconds * sr)
    out = np.zeros(n)
    i = 0
    while i < n:
        period = int(sr / rng.uniform(80, 700))
        d = min(int(sr * rng.uniform(0.15, 1.2)), n - i)
        buf = rng.uniform(-1, 1, period) * 10 ** (rng.uniform(-35, 0) / 20)
        note = np.empty(d)
        for j in range(d):  # short loop per pluck; fine at corpus-build time
            note[j] = buf[j % period]
            buf[j % period] = 0.996 * 0.5 * (buf[j % period] + buf[(j + 1) % period])
        out[i:i + d] += note
        i += d
    return out


def noise(rng, seconds, sr):
    """Pinkish noise with slow random level changes."""
    n = int(seconds * sr)
    w = np.fft.rfft(rng.normal(0, 1, n))
    w /= np.maximum(np.arange(len(w)), 1) ** 0.5
    x = np.fft.irfft(w, n)
    x /= np.abs(x).max() + 1e-9
    env = 10 ** (np.interp(np.arange(n), np.linspace(0, n, 6), rng.uniform(-45, 0, 6)) / 20)
    return x * env


SYNTHETIC = {"steps": level_steps, "bursts": bursts, "sweep": sweep, "plucks": plucks, "noise": noise}
MIDI_KINDS = ("guitar", "bass", "keys", "drums", "mix")


def demo_sources(seed: int, sample_rate: int, seconds_each: float = 8.0, n_midi: int = 25, n_synth: int = 10):
    """The built-in default corpus: generated MIDI clips (every kind in turn) and synthetic signals,
    each scaled to a random peak level (-30..-1 dBFS) so the compressor sees every input level."""
    rng = np.random.default_rng(seed)
    sf2 = soundfont_path()
    items = []
    for i in range(n_midi):
        kind = MIDI_KINDS[i % len(MIDI_KINDS)]
        items.append((f"midi{i:03d}_{kind}", kind, midi_clip(kind, rng, seconds_each, sample_rate, sf2)))
    names = list(SYNTHETIC)
    for i in range(n_synth):
        kind = names[i % len(names)]
        items.append((f"synth{i:03d}_{kind}", kind, SYNTHETIC[kind](rng, seconds_each, sample_rate)))
    out = []
    for name, kind, audio in items:
        peak = np.abs(audio).max()
        gain = 10 ** (rng.uniform(-30, -1) / 20) / peak if peak > 0 else 1.0
        out.append((name, kind, (audio * gain).astype(np.float32)))
    return out
