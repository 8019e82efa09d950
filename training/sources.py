"""Source audio without the internet: generated MIDI rendered with soundfonts, and synthetic test
signals that exercise a compressor's time constants. Deterministic from a seed.

Every generator returns mono float32 at the requested sample rate. Two tiers of (name, kind,
audio) items; a split is assigned per item, so no source material ever appears in two splits:

- ``demo_sources``: pip only (TimGM6mb inside pretty_midi), minutes of audio, seconds to build;
- ``full_sources``: Debian's FluidR3_GM (apt ``fluid-soundfont-gm``) for every instrument and its
  seven drum kits, plus the AVL acoustic kits when apt ``avldrums.lv2-soundfont`` is installed;
  hours of audio, yielded one item at a time (each from its own seed) so memory stays flat.
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


# Debian soundfonts for the full tier (see ../shared/RECIPES.md)
FLUID_R3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")  # apt: fluid-soundfont-gm (148 MB, MIT)
FLUID_R3_PACKAGE = "fluid-soundfont-gm"
AVL_DRUMS = (Path("/usr/share/sounds/sf2/Black_Pearl_4_LV2.sf2"),  # apt: avldrums.lv2-soundfont (45 MB,
             Path("/usr/share/sounds/sf2/Red_Zeppelin_4_LV2.sf2"))  # CC-BY-SA), bank 0 preset 0, GM drum map
AVL_DRUMS_PACKAGE = "avldrums.lv2-soundfont"


def require_soundfont(path: Path, package: str, tier: str = "full") -> Path:
    """``path`` if it is there, else a FileNotFoundError that names the file and the apt package."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the {tier} tier renders its instruments with this soundfont. "
                                f"Install it with `sudo apt-get install {package}` (or `make datasets-deps`), "
                                f"or build the pip-only tier with --tier demo.")
    return path


# --- generated MIDI -----------------------------------------------------------------------------
# A note: (start_s, end_s, midi_key, velocity). Programs are General MIDI (0-based).
PROGRAMS = {"guitar": [24, 25, 26, 27, 29, 30], "bass": [32, 33, 34, 38], "keys": [0, 1, 4, 16]}
DRUMS = {"kick": 36, "snare": 38, "hat": 42, "open_hat": 46, "crash": 49, "tom": 45}


def _dynamics(rng, seconds, bar_s):
    """Velocity scale per bar: wide dynamic range, with crescendi and sudden drops."""
    n = int(seconds / bar_s) + 2
    return np.clip(rng.choice([0.15, 0.35, 0.6, 0.85, 1.0], n) * rng.uniform(0.8, 1.2, n), 0.08, 1.0)


STYLES = ("straight", "swing", "sparse", "busy")


def gen_part(kind: str, rng: np.random.Generator, seconds: float, style: str = "straight") -> list[tuple]:
    """Notes of one part. ``style``: "straight" (the demo tier's), "swing" (off-beats late by a
    third of their length), "sparse" (40% of the steps rest), "busy" (steps halved, faster tempi)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r} (one of {STYLES})")
    bpm = rng.uniform(70, 160) * (1.25 if style == "busy" else 1.0)
    beat = 60.0 / bpm
    dyn = _dynamics(rng, seconds, 4 * beat)
    root = int(rng.integers(40, 52))
    scale = np.array([0, 3, 5, 7, 10, 12, 15, 17, 19, 22, 24])  # minor pentatonic
    notes = []
    t = 0.0
    while t < seconds:
        n_before = len(notes)
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
        if style == "sparse" and rng.uniform() < 0.4:
            del notes[n_before:]  # a rest instead of this step's notes
        elif style == "swing" and int(round(t / step)) % 2 == 1:
            notes[n_before:] = [(s0 + step / 3, e0 + step / 3, k0, v0) for s0, e0, k0, v0 in notes[n_before:]]
        elif style == "busy":
            step /= 2
        t += step
    return sorted((n for n in notes if n[0] < seconds), key=lambda n: n[0])


_SYNTH: dict = {}  # one synth per process: its sample rate, and the soundfonts loaded into it (path -> id)


def _synth(sample_rate: int, fonts: tuple[Path, ...]):
    """The process's synth with ``fonts`` loaded (each once: FluidR3 is 148 MB), silent."""
    import tinysoundfont

    if _SYNTH.get("sample_rate") != sample_rate:
        _SYNTH.clear()
        _SYNTH.update(sample_rate=sample_rate, synth=tinysoundfont.Synth(samplerate=sample_rate), fonts={})
    synth, loaded = _SYNTH["synth"], _SYNTH["fonts"]
    for f in fonts:
        if f not in loaded:
            loaded[f] = synth.sfload(str(f))
    sfids = [loaded[f] for f in fonts]
    # A clean start: no voice of the previous clip rings on. sounds_off fades voices out over a few
    # ms rather than cutting them, so render (and drop) audio until the synth is silent.
    for chan in range(16):
        synth.sounds_off(chan)
    for _ in range(100):
        if not np.frombuffer(synth.generate(1024), np.float32).any():
            break
    return synth, sfids


def _select(synth, chan: int, sfid: int, kind: str, program: int) -> None:
    """General MIDI program, or for drums the kit: bank 128 preset ``program`` (FluidR3's seven kits,
    TimGM's one), falling back to the soundfont's first kit (the AVL kits sit at bank 0, preset 0)."""
    if kind != "drums":
        synth.program_select(chan, sfid, 0, program, False)
        return
    for bank, preset in ((128, program), (128, 0), (0, program), (0, 0)):
        try:
            synth.program_select(chan, sfid, bank, preset, True)
            return
        except RuntimeError:
            continue
    raise RuntimeError(f"soundfont {sfid}: no drum kit at bank 128 or 0")


def render_parts(parts: list[tuple[str, int, list]], seconds: float, sample_rate: int, sf2: Path,
                 drums_sf2: Path | None = None) -> np.ndarray:
    """Render (kind, program, notes) parts with tinysoundfont into one mono float32 mix. For drums
    ``program`` is the kit; ``drums_sf2`` plays the drums from another soundfont."""
    fonts = (Path(sf2),) if drums_sf2 is None else (Path(sf2), Path(drums_sf2))
    synth, sfids = _synth(sample_rate, fonts)
    events = []  # (time_s, on, chan, key, vel)
    for chan, (kind, program, notes) in enumerate(parts):
        chan = 9 if kind == "drums" else chan
        _select(synth, chan, sfids[-1] if kind == "drums" else sfids[0], kind, program)
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
    # Some soundfont samples carry a DC offset (TimGM6mb's keys: about 2% of their peak); a 10 Hz
    # high-pass removes it, so the model never learns an offset that the material made up.
    return _dc_block(out.mean(axis=1), sample_rate)


def _dc_block(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import pedalboard as pb

    return pb.HighpassFilter(cutoff_frequency_hz=10.0)(audio[None, :].astype(np.float32), sample_rate)[0]


def midi_clip(kind: str, rng: np.random.Generator, seconds: float, sample_rate: int, sf2: Path,
              programs: dict | None = None, drum_kits=(0,), style: str = "straight",
              drums_sf2: Path | None = None) -> np.ndarray:
    """One clip: a single instrument ("guitar", "bass", "keys", "drums") or a "mix" of all four.
    ``programs``: GM programs to draw from per kind; ``drum_kits``: kit presets to draw from."""
    programs = programs or PROGRAMS
    kinds = ["guitar", "bass", "keys", "drums"] if kind == "mix" else [kind]
    parts = [(k, int(rng.choice(drum_kits)) if k == "drums" else int(rng.choice(programs[k])),
              gen_part(k, rng, seconds, style)) for k in kinds]
    return render_parts(parts, seconds, sample_rate, sf2, drums_sf2)


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
        buf -= buf.mean()  # the string's averaging filter keeps DC for the whole note: start without any
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
    return [(name, kind, _level(rng, audio)) for name, kind, audio in items]


def _level(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
    """Scale to a random peak level, -30..-1 dBFS: the effect sees every input level."""
    peak = np.abs(audio).max()
    gain = 10 ** (rng.uniform(-30, -1) / 20) / peak if peak > 0 else 1.0
    return (audio * gain).astype(np.float32)


# The full tier: every GM guitar, bass and keyboard/organ program, FluidR3's seven drum kits
# (bank 128: Standard, Room, Power, Electronic, TR-808, Jazz, Brush).
FULL_PROGRAMS = {"guitar": list(range(24, 32)), "bass": list(range(32, 40)), "keys": list(range(0, 8)) + [16, 17, 18, 19]}
FULL_DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)


def full_sources(seed: int, sample_rate: int, seconds_each: float = 20.0, n_midi: int = 300, n_synth: int = 60,
                 sf2: Path | None = None, drums_sf2s: tuple[Path, ...] | None = None):
    """The full corpus, yielded item by item: generated MIDI clips (every kind and style in turn,
    rendered with FluidR3_GM; a third of the drum parts on the AVL acoustic kits when installed)
    and synthetic signals. Item i comes from ``default_rng([seed, i])``: items are independent.
    Raises FileNotFoundError naming the soundfont and its apt package when FluidR3 is missing."""
    sf2 = require_soundfont(sf2 or FLUID_R3, FLUID_R3_PACKAGE)
    if drums_sf2s is None:
        drums_sf2s = tuple(p for p in AVL_DRUMS if p.is_file())

    def items():
        names = list(SYNTHETIC)
        for i in range(n_midi + n_synth):
            rng = np.random.default_rng([seed, i])
            if i < n_midi:
                kind = MIDI_KINDS[i % len(MIDI_KINDS)]
                style = STYLES[(i // len(MIDI_KINDS)) % len(STYLES)]
                drums = drums_sf2s[i % len(drums_sf2s)] if drums_sf2s and kind in ("drums", "mix") and i % 3 == 0 else None
                audio = midi_clip(kind, rng, seconds_each, sample_rate, sf2, FULL_PROGRAMS, FULL_DRUM_KITS, style, drums)
                name = f"midi{i:04d}_{kind}_{style}" + ("_avl" if drums else "")
            else:
                kind = names[(i - n_midi) % len(names)]
                audio = SYNTHETIC[kind](rng, seconds_each, sample_rate)
                name = f"synth{i - n_midi:04d}_{kind}"
            yield name, kind, _level(rng, audio)

    return items()
