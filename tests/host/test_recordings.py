"""Checks on recordings: each thing real captures get wrong is caught before training, with the
file and the value named; a known 100-sample latency is measured as 100 samples and compensated."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training import sources
from training.data import PairSet, load_audio
from training.effects import get_effect
from training.recordings import (CLIP_LEVEL, RecordingError, align, check_pair, check_signal, estimate_latency,
                                 read_audio)

SR = 48000
REPO = Path(__file__).resolve().parents[2]
GAIN_KNOB = {"name": "gain_db", "unit": "dB", "minimum": -20, "maximum": 0, "default": -6}


def material(kind: str, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind in sources.SYNTHETIC:
        x = sources.SYNTHETIC[kind](rng, seconds, SR)
    else:
        x = sources.midi_clip(kind, rng, seconds, SR, sources.soundfont_path())
    return (x / np.abs(x).max() * 0.5).astype(np.float32)


def delayed(y: np.ndarray, samples: int) -> np.ndarray:
    return np.concatenate([np.zeros(samples, np.float32), y[:len(y) - samples]])


def recordings(root: Path, pairs: list[tuple[np.ndarray, np.ndarray]], sr_target: int = SR, split: bool = True) -> Path:
    """A user's folder: di_i.wav / out_i.wav, knobs.csv and knobs.json (one gain knob); all Train."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["input,target,gain_db" + (",split" if split else "")]
    for i, (x, y) in enumerate(pairs):
        sf.write(root / f"di_{i}.wav", x, SR, subtype="FLOAT")
        sf.write(root / f"out_{i}.wav", y, sr_target if i == 0 else SR, subtype="FLOAT")
        lines.append(f"di_{i}.wav,out_{i}.wav,-6" + (",Train" if split else ""))
    (root / "knobs.csv").write_text("\n".join(lines) + "\n")
    (root / "knobs.json").write_text(json.dumps({"effect": "my_amp", "knobs": [GAIN_KNOB]}))
    return root


def good_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = material("plucks", seed=seed)
    return x, 0.5 * x


def refused(root: Path) -> str:
    with pytest.raises(RecordingError) as e:
        PairSet(root, "Train", log=lambda m: None)
    return str(e.value)


# --- errors: the loader stops and names the file and the value -----------------------------------
def test_a_target_at_another_sample_rate_is_refused(tmp_path):
    x, y = good_pair()
    msg = refused(recordings(tmp_path, [(x, y), good_pair(1)], sr_target=44100))
    assert "out_0.wav: sample rate 44100 Hz, the dataset is 48000 Hz" in msg


def test_a_stereo_target_is_refused(tmp_path):
    x, y = good_pair()
    msg = refused(recordings(tmp_path, [(x, np.stack([y, y], axis=1))]))
    assert "out_0.wav: 2 channels, expected mono" in msg


def test_a_target_of_another_length_is_refused(tmp_path):
    x, y = good_pair()
    msg = refused(recordings(tmp_path, [(x, y[:-10])]))
    assert f"out_0.wav: {SR - 10} samples, its input di_0.wav has {SR} (difference -10)" in msg


def test_a_silent_target_is_refused(tmp_path):
    x, _ = good_pair()
    msg = refused(recordings(tmp_path, [(x, np.full(SR, 1e-5, np.float32))]))
    assert "out_0.wav: target is silent: peak -100.0 dBFS < -80 dBFS" in msg


def test_nan_and_inf_samples_are_refused(tmp_path):
    x, y = good_pair()
    y = y.copy()
    y[[100, 200, 300]] = np.nan
    y[[400, 500]] = np.inf
    msg = refused(recordings(tmp_path, [(x, y)]))
    assert "out_0.wav: 5 NaN/Inf samples (first at sample 100)" in msg


def test_every_error_is_listed_not_only_the_first(tmp_path):
    (x0, y0), (x1, y1) = good_pair(0), good_pair(1)
    msg = refused(recordings(tmp_path, [(x0, y0[:-5]), (x1, np.zeros_like(y1))]))
    assert "out_0.wav: 47995 samples" in msg and "out_1.wav: target is silent" in msg


def test_load_audio_refuses_what_it_cannot_use(tmp_path):
    sf.write(tmp_path / "stereo.wav", np.zeros((100, 2), np.float32), SR)
    with pytest.raises(RecordingError, match=r"stereo.wav: 2 channels"):
        load_audio(tmp_path / "stereo.wav", SR)
    with pytest.raises(RecordingError, match=r"sample rate 48000 Hz, the dataset is 44100 Hz"):
        load_audio(tmp_path / "stereo.wav", 44100)
    with pytest.raises(FileNotFoundError, match=r"nothing.wav: file not found"):
        load_audio(tmp_path / "nothing.wav", SR)


# --- warnings: printed once, training goes on ----------------------------------------------------
def test_clipping_is_counted_and_warned_once(tmp_path):
    x, y = good_pair()
    y = y.copy()
    y[1000:1312] = 1.0  # 312 samples at full scale
    root = recordings(tmp_path, [(x, y), good_pair(1)])
    printed = []
    PairSet(root, "Train", log=printed.append)
    PairSet(root, "Train", log=printed.append)  # loaded again: not printed again
    assert printed == [f"warning: out_0.wav: 312 samples clipped at |x| >= {CLIP_LEVEL} (peak +0.0 dBFS)"]


def test_a_dc_offset_is_warned_with_its_value():
    x = material("plucks") + np.float32(0.05)
    [p] = check_signal(x, "di_0.wav", "input")
    assert p.level == "warning" and re.match(r"di_0.wav: DC offset \+0.05\d\d \(-2[56].\d dBFS\)", str(p)), p
    assert check_signal(material("plucks"), "di_0.wav") == []  # music's own low end is not an offset


# --- latency -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mix", "drums", "bass", "plucks", "noise", "steps"])
def test_a_known_100_sample_delay_is_measured_as_100_samples(kind):
    x = material(kind, seconds=2.0)
    y = delayed(get_effect("comp4").render(x, SR, [-30.0, 4.0, 5.0, 100.0]), 100)
    lat = estimate_latency(x, y, max_lag=2400, sample_rate=SR)
    assert lat.samples == 100 and lat.confident, lat
    assert estimate_latency(x, get_effect("comp4").render(x, SR, [-30.0, 4.0, 5.0, 100.0]), 2400).samples == 0


def test_a_target_that_leads_or_is_inverted_is_reported():
    x = material("mix", seconds=2.0)
    assert estimate_latency(x, np.concatenate([x[30:], np.zeros(30, np.float32)]), 2400).samples == -30
    res = check_pair(x[:, None], SR, -delayed(x, 100)[:, None], SR, "di.wav", "out.wav", SR, 2400)
    assert [str(p) for p in res.problems] == [
        f"out.wav: lags its input by 100 samples (2.08 ms; correlation -1.00, peak margin {res.latency.margin:.2f})",
        "out.wav: polarity inverted against its input (correlation -1.00)"]


def test_latency_is_reported_per_file_and_compensated_on_request(tmp_path):
    effect = get_effect("comp4")
    knobs = [-30.0, 4.0, 5.0, 100.0]
    clean = [(x, effect.render(x, SR, knobs)) for x in (material(k, 2.0, seed=i) for i, k in
                                                            enumerate(["mix", "plucks", "bass", "drums"]))]
    root = recordings(tmp_path, [(x, delayed(y, 100)) for x, y in clean])
    printed = []
    data = PairSet(root, "Train", log=printed.append)
    assert data.latency_samples == 100
    assert sum("lags its input by 100 samples (2.08 ms" in line for line in printed) == 4
    fixed = PairSet(root, "Train", compensate_latency=True, log=printed.append)
    for (x, y), xs, ys in zip(clean, fixed.x, fixed.y):
        assert len(xs) == len(ys) == len(x) - 100
        np.testing.assert_array_equal(xs, x[:-100])
        np.testing.assert_array_equal(ys, y[:-100])  # the target answers its input sample for sample
    assert align(np.arange(5), np.arange(5), -2)[0].tolist() == [2, 3, 4]


def test_the_report_command_prints_every_problem_and_the_latency(tmp_path):
    effect = get_effect("comp4")
    pairs = []
    for i, kind in enumerate(["mix", "plucks", "keys"]):
        x = material(kind, 2.0, seed=i)
        pairs.append((x, delayed(effect.render(x, SR, [-30.0, 4.0, 5.0, 100.0]), 100)))
    y = pairs[1][1].copy()
    y[5000:5007] = -1.0
    pairs[1] = (pairs[1][0], y)
    root = recordings(tmp_path, pairs, split=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "training.recordings", str(root)], cwd=REPO, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "warning: out_1.wav: 7 samples clipped at |x| >= 0.999" in r.stdout
    assert "latency: 100 samples (2.08 ms) in 3 of 3 pairs" in r.stdout
    assert r.stdout.strip().endswith("3 pairs at 48000 Hz, 0 errors, 4 warnings")
    sf.write(root / "out_2.wav", np.zeros(2 * SR, np.float32), SR)
    r = subprocess.run([sys.executable, "-m", "training.recordings", str(root)], cwd=REPO, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 1 and "error: out_2.wav: target is silent" in r.stdout


def test_float_wavs_are_memory_mapped_as_they_are(tmp_path):
    x = material("noise")
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", x, SR, subtype="PCM_24")
    m, sr = read_audio(tmp_path / "a.wav", mmap=True)
    assert isinstance(m, np.memmap) and sr == SR and m.shape == (SR, 1)
    np.testing.assert_array_equal(m[:, 0], x)
    p, _ = read_audio(tmp_path / "b.wav", mmap=True)  # not float32: read as usual
    assert not isinstance(p, np.memmap) and np.abs(p[:, 0] - x).max() < 1e-6
