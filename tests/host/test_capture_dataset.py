"""A capture folder (``python -m device capture``) is a dataset the host takes as it is.

The pedal here is a pedalboard drive (the catalogue's, under a name the catalogue lacks), played
through a chain with a known latency; each pass goes through the same checks and the same writer
as on the box (device/capture; training.bench_capture.simulate_capture), with the audio made
offline instead of through ALSA (tests/device/test_capture.py covers the real-time path). Then the host's own
checks (python -m training.recordings, the first step of `make pedal DATA=DIR`) and loader read it.
"""
import json

import numpy as np
import pytest
import soundfile as sf

from device.capture.checks import Limits, check_pass
from device.capture.plan import make_plan, parse_knob
from training.bench_capture import simulate_capture
from training.data import PairSet, read_dataset
from training.effects import CATALOGUE
from training.recordings import check_dataset

LATENCY = 301  # the box's round trip plus the pedal's, in samples
SECONDS = 30.0
KNOBS = ["drive_db=0..40,dB", "tone_hz=400..8000,Hz,log", "level_db=-30..-6,dB"]


def pedal_return(x: np.ndarray, values, rng, noise_dbfs=None, latency=LATENCY, extra=48000) -> np.ndarray:
    """What the box records: the drive's output (None: bypassed), ``latency`` late, with a noise floor."""
    y = x if values is None else CATALOGUE["drive"].render(x, 48000, values)
    rec = np.zeros(len(x) + extra, np.float32)
    rec[latency:latency + len(y)] = y
    if noise_dbfs is not None:
        rec += (10 ** (noise_dbfs / 20) * rng.standard_normal(len(rec))).astype(np.float32)
    return rec


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    specs = [parse_knob(k) for k in KNOBS]
    same = lambda k: (k.name, k.unit, k.minimum, k.maximum, k.taper)  # noqa: E731
    assert list(map(same, specs)) == list(map(same, CATALOGUE["drive"].knobs))  # as a user would name them
    return simulate_capture(CATALOGUE["drive"], tmp_path_factory.mktemp("cap") / "my_drive", make_plan(specs, 4),
                            SECONDS, LATENCY, noise_dbfs=None, name="my_drive")


def test_a_capture_folder_passes_the_recordings_checks_and_its_targets_are_aligned(capture):
    report = check_dataset(capture.root)
    print("\n".join(report.lines()))
    assert not report.errors, report.errors
    assert report.n_pairs == 4 * 3
    assert capture.state["latency_samples"] == LATENCY
    # the capture removed the chain's latency and nothing else: each target is the drive's output to
    # its input, up to the noise floor (its filters' own delay, which a correlation would call a
    # latency of 1..113 samples here, stays in for the model to learn)
    for i, values in enumerate(capture.state["plan"]):
        sig = capture.signal_for(i)  # each setting its own program
        ref = CATALOGUE["drive"].render(sig.audio * capture.level, 48000, values)
        for split, (a, b) in sig.split_ranges().items():
            x, _ = sf.read(capture.root / capture.input_name(i, split), dtype="float32")
            np.testing.assert_allclose(x, sig.audio[a:b] * capture.level, rtol=0, atol=1e-7)
            y, _ = sf.read(capture.root / capture.state["passes"][i]["targets"][split], dtype="float32")
            err = 10 * np.log10(np.sum((y - ref[a:b]) ** 2) / np.sum(ref[a:b] ** 2) + 1e-30)
            assert err < -100, (i, split, err)


def test_the_disk_a_capture_takes_is_what_the_plan_says(capture):
    from device.capture.signal import dataset_bytes
    wavs = sum(f.stat().st_size for sub in ("input", "target") for f in (capture.root / sub).glob("*.wav"))
    estimate = dataset_bytes(SECONDS, 4)
    print(f"4 settings of a {SECONDS:g} s signal: {wavs} bytes of WAV, estimated {estimate}")
    assert abs(wavs - estimate) < 0.001 * estimate


def test_a_capture_folder_loads_with_its_knobs_and_splits(capture):
    info = read_dataset(capture.root)
    assert info.effect == "my_drive" and info.latency_samples == 0
    assert [k.name for k in info.knobs] == ["drive_db", "tone_hz", "level_db"]
    assert sorted({p.split for p in info.pairs}) == ["Test", "Train", "Val"]
    train = PairSet(capture.root, "Train")
    assert len(train.pairs) == 4
    assert sorted(tuple(p.knobs) for p in train.pairs) == sorted(tuple(v) for v in capture.state["plan"])
    # every split's input is its own stretch of its setting's program (no audio in two splits or settings)
    assert len({p.source for p in info.pairs}) == 3 * 4


def test_a_knob_knocked_during_a_pass_and_a_humming_cable_are_caught(capture):
    sig, level, plan = capture.signal, capture.level, capture.state["plan"]
    played = sig.audio * level
    rng = np.random.default_rng(1)
    knocked = pedal_return(played, plan[0], rng)
    half = sig.regions["gap"][0]  # the second repeat plays at another setting
    knocked[half + LATENCY:] = pedal_return(played, plan[1], rng)[half + LATENCY:]
    check = check_pass(sig, knocked, level, Limits(), LATENCY)
    print(check.summary(LATENCY))
    assert "drift" in [p.split(":")[0] for p in check.problems]  # (the end clicks moved too: the tone's delay)
    hum = pedal_return(played, plan[0], rng, noise_dbfs=-30.0)
    check = check_pass(sig, hum, level, Limits(), LATENCY)
    print(check.summary(LATENCY))
    assert any(p.startswith("noise floor") for p in check.problems)
    assert check_pass(sig, pedal_return(played, plan[0], rng), level, Limits(), LATENCY).ok


def test_the_plans_coverage_benchmark_runs_without_training(tmp_path, capsys):
    """make bench-capture's --nearest mode (no training): a row per effect, size and plan, the
    nearest captured setting answering every held-out one; captured settings answer themselves."""
    from training.bench_capture import main, nearest_setting

    main(["--nearest", "--effects", "drive", "--settings", "4", "8", "--plans", "lhs", "lhs0", "random",
          "--plan-seeds", "1", "--test-settings", "4", "--seconds", "8", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "capture-nearest.json").read_text())["rows"]
    assert [(r["settings"], r["plan"]) for r in rows] == [(n, p) for n in (4, 8) for p in ("lhs", "lhs0", "random")]
    assert all(0 < r["cover_mean"] <= r["cover_worst"] and np.isfinite(r["esr_mean"]) for r in rows)
    assert "| drive | lhs0 | 8 |" in (tmp_path / "capture-nearest.md").read_text()
    effect = CATALOGUE["drive"]
    plan = make_plan(list(effect.knobs), 4)
    x = np.random.default_rng(0).standard_normal(4800).astype(np.float32) * 0.1
    row = nearest_setting(effect, 4, "lhs", 0, plan, lambda s: effect.render(x, 48000, list(s)), (0, 4800),
                          np.random.default_rng(0).uniform(0, 1, (100, 3)))
    assert row["esr_worst"] == 0.0  # the held-out settings are the captured ones


def test_active_learning_proposes_where_an_ensemble_disagrees_and_the_capture_takes_them(capture, tmp_path):
    """training.propose with two models of different seeds (untrained here: they disagree anyway;
    the arithmetic is the same) -> a settings file -> the capture's plan grows by those settings,
    pending, ordered for few moves, the captured ones untouched."""
    import shutil

    import torch

    from device.capture.session import Capture, add_settings
    from training.model import SignalTrainPi, tier_config
    from training.propose import main as propose_main
    from training.train import TrainConfig, save_checkpoint

    root = tmp_path / "cap"
    shutil.copytree(capture.root, root)
    train_set = PairSet(root, "Train")
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = SignalTrainPi(tier_config("small", n_knobs=3, sample_rate=48000))
        runs.append(tmp_path / f"run{seed}")
        runs[-1].mkdir()
        save_checkpoint(runs[-1] / "best.pt", model, TrainConfig(seed=seed), train_set, {})
    assert propose_main(["--data", str(root), "--runs", *map(str, runs), "--add", "3", "--candidates", "24",
                         "--seconds", "0.5"]) == 0
    d = json.loads((root / "proposed.json").read_text())
    assert d["knobs"] == ["drive_db", "tone_hz", "level_db"] and len(d["settings"]) == 3
    assert d["disagreement"] == sorted(d["disagreement"], reverse=True) and d["disagreement"][-1] > 0
    cap = Capture.load(root)
    before = [list(r) for r in cap.state["plan"]]
    assert not any(s in before for s in d["settings"])
    csv_before = (root / "knobs.csv").read_text()
    assert add_settings(cap, root / "proposed.json") == 3
    cap = Capture.load(root)  # what the next run of the box reads
    assert cap.state["plan"][:4] == before and sorted(cap.state["plan"][4:]) == sorted(d["settings"])
    assert cap.pending == [4, 5, 6] and cap.state["plan_info"]["added"][0]["settings"] == 3
    assert (root / "knobs.csv").read_text() == csv_before
    assert add_settings(cap, root / "proposed.json") == 0  # the same file again: nothing new
