"""Datasets on disk: our builds, SignalTrain's LA-2A layout, a user's CSV of recordings, the
inverse switch and the full tier. Real renders, tiny sizes, numbers asserted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.knobspec import KnobSpec
from training import sources
from training.data import (MAX_REDRAWS, SIGNALTRAIN_KNOBS, TARGET_PEAK, BuildError, PairSet, assign_splits,
                           build_dataset, read_dataset, read_pairs)
from training.effects import CATALOGUE, get_effect, onset_error_ms
from training.recordings import RecordingError, check_pair

SR = 48000
REPO = Path(__file__).resolve().parents[2]
TINY = dict(seconds_each=2.0, n_midi=4, n_synth=3, segment_s=1.0, settings_per_segment=2, test_seconds=1.0,
            log=lambda m: None)  # 7 items: 5 Train, 1 Val, 1 Test


@pytest.fixture(scope="module")
def comp4_set(tmp_path_factory) -> Path:
    return build_dataset(get_effect("comp4"), tmp_path_factory.mktemp("comp4"), **TINY)


# --- our builds ----------------------------------------------------------------------------------
def test_a_tiny_demo_build_has_every_split_and_describes_itself(comp4_set):
    meta = json.loads((comp4_set / "dataset.json").read_text())
    assert meta["effect"] == "comp4" and meta["tier"] == "demo" and meta["inverse"] is False
    assert meta["latency_samples"] == 0 and meta["sample_rate"] == SR
    counts = {s: sum(p["split"] == s for p in meta["pairs"]) for s in ("Train", "Val", "Test")}
    assert counts == {"Train": 5 * 2 * 2, "Val": 2, "Test": 16}  # 5 items x 2 segments x 2 settings; 16 = 2^4 grid
    assert meta["seconds"] == {"Train": 20.0, "Val": 2.0, "Test": 16.0}
    for p in meta["pairs"]:
        assert (comp4_set / p["input"]).is_file() and (comp4_set / p["target"]).is_file()


def test_splits_never_share_a_source_item(comp4_set):
    info = read_dataset(comp4_set)
    split_of = {}
    for p in info.pairs:
        assert split_of.setdefault(p.source, p.split) == p.split, p.source
    assert set(split_of.values()) == {"Train", "Val", "Test"}
    # and the loader's splits hold disjoint audio
    train, val = PairSet(comp4_set, "Train"), PairSet(comp4_set, "Val")
    train_inputs = {x.tobytes()[:4000] for x in train.x}
    assert not any(x.tobytes()[:4000] in train_inputs for x in val.x)


def test_pairs_of_one_segment_share_one_input_file(comp4_set):
    meta = json.loads((comp4_set / "dataset.json").read_text())
    test_inputs = {os.stat(comp4_set / p["input"]).st_ino for p in meta["pairs"] if p["split"] == "Test"}
    assert len(test_inputs) == 1  # 16 grid settings on one test clip: 16 names, one file
    assert os.stat(comp4_set / meta["pairs"][0]["input"]).st_nlink == 2  # 2 settings per train segment


def test_the_loader_gives_chunks_with_their_knob_positions(comp4_set):
    data = PairSet(comp4_set, "Train")
    xs, ys, ks = data.batch(np.random.default_rng(0), 8, 24000)
    assert xs.shape == ys.shape == (8, 24000) and ks.shape == (8, 4) and xs.dtype == np.float32
    assert (ks >= 0).all() and (ks <= 1).all()
    a, b = data.fixed_chunks(24000, 4), data.fixed_chunks(24000, 4)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    mapped = PairSet(comp4_set, "Train", mmap=True)
    assert isinstance(mapped.x[0], np.memmap)
    for u, v in zip(mapped.batch(np.random.default_rng(1), 4, 1000), data.batch(np.random.default_rng(1), 4, 1000)):
        np.testing.assert_array_equal(u, v)


def test_no_file_clips_even_where_the_effect_would_push_past_full_scale(tmp_path):
    rng = np.random.default_rng(0)
    loud = [(f"sweep{i}", "sweep", (sources.sweep(rng, 2.0, SR) / 0.5 * 0.89).astype(np.float32)) for i in range(7)]
    root = build_dataset(get_effect("echo"), tmp_path / "echo", sources=loud, **{**TINY, "settings_per_segment": 3})
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["tier"] == "custom"
    turned_down = [p for p in meta["pairs"] if "input_gain_db" in p]
    assert turned_down, "a -1 dBFS sweep through feedback echoes must pass full scale somewhere"
    for p in meta["pairs"]:
        for f in ("input", "target"):
            assert np.abs(sf.read(root / p[f])[0]).max() <= TARGET_PEAK + 1e-6


def test_the_inverse_switch_swaps_input_and_target(tmp_path):
    noise = get_effect("noise")
    fwd = build_dataset(noise, tmp_path / "fwd", **TINY)
    inv = build_dataset(noise, tmp_path / "inv", inverse=True, **TINY)
    mf, mi = (json.loads((d / "dataset.json").read_text()) for d in (fwd, inv))
    assert mi["effect"] == "noise_inv" and mi["base_effect"] == "noise" and mi["inverse"] is True
    assert all("_noise_inv__" in p["target"] for p in mi["pairs"])
    for pf, pi in list(zip(mf["pairs"], mi["pairs"]))[::5]:
        np.testing.assert_array_equal(sf.read(fwd / pf["input"])[0], sf.read(inv / pi["target"])[0])  # clean
        np.testing.assert_array_equal(sf.read(fwd / pf["target"])[0], sf.read(inv / pi["input"])[0])  # noisy
    data = PairSet(inv, "Train")  # the de-noiser's loader: knob = how much noise there is to remove
    assert data.effect == "noise_inv" and [k.name for k in data.knob_specs] == ["noise_db"]


def test_the_inverse_switch_on_the_command_line(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "training.data", "--effect", "noise", "--inverse", "--out", str(out),
                        "--n-midi", "3", "--n-synth", "3", "--seconds-each", "2"],
                       cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "dataset.json").read_text())["effect"] == "noise_inv"
    assert list((out / "Train").glob("target_*_noise_inv__*.wav"))


def test_a_rebuild_replaces_the_previous_files(tmp_path):
    build_dataset(get_effect("comp4"), tmp_path, **TINY)
    build_dataset(get_effect("chorus"), tmp_path, **TINY)
    assert not list(tmp_path.glob("*/target_*_comp4__*.wav"))


# --- every effect builds, and every pair it writes loads -----------------------------------------
BUILDS = [(name, False) for name in CATALOGUE] + [("noise", True), ("timing", True)]


@pytest.mark.parametrize("name,inverse", BUILDS, ids=[n + ("_inv" if i else "") for n, i in BUILDS])
def test_every_effect_builds_a_demo_set_that_loads_without_a_refusal(tmp_path, name, inverse):
    root = build_dataset(get_effect(name), tmp_path / name, inverse=inverse, **TINY)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["effect"] == name + ("_inv" if inverse else "") and meta["base_effect"] == name
    n_grid = 2 ** len(get_effect(name).knobs)
    counts = {s: len(PairSet(root, s, log=lambda m: None).pairs) for s in ("Train", "Val", "Test")}  # raises on any error
    assert counts == {"Train": 20, "Val": 2, "Test": n_grid}


def test_timing_inverse_pairs_are_pushed_input_and_on_grid_target(tmp_path):
    """The time-alignment task: the input plays push_ms early, the target is on the grid; the
    onset measure sees the push in the input and nothing in the target."""
    root = build_dataset(get_effect("timing"), tmp_path / "t", inverse=True, **{**TINY, "test_seconds": 2.0})
    test = PairSet(root, "Test")
    assert [p.source for p in test.pairs] == ["midi003_drums"] * 2 and [p.knobs for p in test.pairs] == [[6.0], [24.0]]
    for p, x, y in zip(test.pairs, test.x, test.y):
        assert onset_error_ms(y, x, SR) == pytest.approx(p.knobs[0], abs=0.1)  # measured: 6.02 and 24.02 ms
        assert onset_error_ms(y, y, SR) < 0.05


def test_drive_quiet_low_segment_at_low_drive_and_level_renders_a_silent_target():
    """The cause of the refused drive pair (demo tier, pair 335): the first 2 s of the log sweep
    item (30..144 Hz, rising) scaled to a -51 dBFS peak, through the 200 Hz high-pass (-4.5 dB at
    144 Hz, more below), 0.5 dB of drive (tanh still linear) and a -23.8 dB level: -80.7 dBFS."""
    x = sources.sweep(np.random.default_rng(0), 8.0, SR)[:2 * SR]
    x = (x / np.abs(x).max() * 10 ** (-51.3 / 20)).astype(np.float32)
    y = get_effect("drive").render(x, SR, [0.499, 1600.2, -23.83])
    assert -82 < 20 * np.log10(np.abs(y).max()) < -80
    errors = check_pair(x, SR, y, SR, "input", "target", SR).errors
    assert [e.message.split(":")[0] for e in errors] == ["target is silent"]


def test_a_pair_the_loader_would_refuse_is_drawn_again(tmp_path):
    rng = np.random.default_rng(0)
    low = 10 ** (-60 / 20) * np.sin(2 * np.pi * 40 * np.arange(SR) / SR)  # 1 s at 40 Hz, -60 dBFS: the 200 Hz
    items = []  # high-pass takes 14 dB, so drive + level under about -6 dB leaves a target under -80 dBFS
    for i in range(7):
        pluck = sources.plucks(rng, 1.0, SR)
        items.append((f"item{i}", "plucks", np.concatenate([low, pluck / np.abs(pluck).max() * 0.1]).astype(np.float32)))
    log = []
    root = build_dataset(get_effect("drive"), tmp_path / "d", sources=items, **{**TINY, "log": log.append})
    meta = json.loads((root / "dataset.json").read_text())
    redrawn = [p for p in meta["pairs"] if "redrawn" in p]
    assert redrawn and meta["redrawn_pairs"] == len(redrawn)
    assert all("target is silent" in r for p in redrawn for r in p["redrawn"])
    assert {p["split"] for p in redrawn} == {"Train", "Test"}  # new knobs; the same grid setting on another window
    assert any("drawn again" in line for line in log)
    for split in ("Train", "Val", "Test"):
        PairSet(root, split, log=lambda m: None)  # every pair loads


def test_a_pair_that_cannot_be_drawn_into_an_acceptable_one_stops_the_build_with_its_reasons(tmp_path):
    silent = [(f"silent{i}", "steps", np.zeros(2 * SR, np.float32)) for i in range(7)]
    with pytest.raises(BuildError, match=rf"pair 1 \(Train, source silent0\) would be refused by the loader's checks "
                                         rf"after {MAX_REDRAWS} re-draws:\n  segment at 0 s, knobs .*input is silent"):
        build_dataset(get_effect("comp4"), tmp_path / "s", sources=silent, **TINY)


# --- SignalTrain's LA-2A layout ------------------------------------------------------------------
LA2A_KNOBS = [KnobSpec("limit", "switch", 0.0, 1.0, 0.0), KnobSpec("peak_reduction", "", 0.0, 100.0, 50.0)]


def write_la2a(root: Path, sr: int = 44100) -> dict[str, list[float]]:
    """A synthetic dataset named like SignalTrain's LA-2A release: knob values only in the names."""
    rng = np.random.default_rng(5)
    expected, pid = {}, 100
    for split, settings in (("Train", [(0, 0), (1, 65), (0, 100), (1, 35)]), ("Val", [(0, 40)]), ("Test", [(1, 90), (0, 5)])):
        (root / split).mkdir(parents=True)
        for limit, peak in settings:
            pid += 7
            x = (rng.normal(0, 0.1, sr) * np.linspace(0.1, 1, sr)).astype(np.float32)
            y = np.tanh(x * (1 + peak / 50)).astype(np.float32) * 0.5
            sf.write(root / split / f"input_{pid}_.wav", x, sr, subtype="FLOAT")
            name = f"target_{pid}_LA2A_2c__{limit}__{peak}.wav"
            sf.write(root / split / name, y, sr, subtype="PCM_24")
            expected[name] = [float(limit), float(peak)]
    return expected


@pytest.mark.parametrize("given", ["knobs", "builtin"])
def test_signaltrain_la2a_names_round_trip(tmp_path, given):
    expected = write_la2a(tmp_path)
    pairs, specs, sr, effect = read_pairs(tmp_path, knobs=LA2A_KNOBS if given == "knobs" else None)
    assert effect == "LA2A_2c" and sr == 44100 and [k.name for k in specs] == ["limit", "peak_reduction"]
    assert {p.target.name: p.knobs for p in pairs} == expected
    assert {p.split for p in pairs} == {"Train", "Val", "Test"}
    data = PairSet(tmp_path, "Train", knobs=LA2A_KNOBS if given == "knobs" else None)
    by_name = {p.target.name: row for p, row in zip(data.pairs, data.knobs)}
    np.testing.assert_allclose(by_name["target_121_LA2A_2c__0__100.wav"], [0.0, 1.0])
    np.testing.assert_allclose(by_name["target_114_LA2A_2c__1__65.wav"], [1.0, 0.65])
    assert data.latency_samples == 0  # estimated (SignalTrain folders declare none) and found aligned


def test_signaltrain_names_of_an_unknown_effect_ask_for_knob_specs(tmp_path):
    (tmp_path / "Train").mkdir()
    sf.write(tmp_path / "Train" / "input_1_.wav", np.zeros(100, np.float32), SR)
    sf.write(tmp_path / "Train" / "target_1_Fuzz_1c__3.wav", np.zeros(100, np.float32), SR)
    with pytest.raises(ValueError, match=r"no knob specs for effect 'Fuzz_1c'.*knobs.json"):
        read_pairs(tmp_path)
    assert "LA2A_2c" in SIGNALTRAIN_KNOBS


def test_knob_values_outside_their_range_are_refused(tmp_path):
    write_la2a(tmp_path)
    os.rename(tmp_path / "Val" / "target_135_LA2A_2c__0__40.wav", tmp_path / "Val" / "target_135_LA2A_2c__0__140.wav")
    with pytest.raises(RecordingError, match=r"Val/target_135_LA2A_2c__0__140.wav: knob peak_reduction = 140 outside its range 0..100"):
        read_pairs(tmp_path)


# --- a user's recordings with a CSV of knob values -----------------------------------------------
def write_csv_set(root: Path, rows: list[dict], knobs_file: str | None = "json", header: list[str] | None = None):
    """Recordings: each input a few knob settings, the target a soft clip whose drive is the knob."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    inputs = {}
    for row in rows:
        if row["input"] not in inputs:
            inputs[row["input"]] = (rng.normal(0, 0.1, SR // 2)).astype(np.float32)
            sf.write(root / row["input"], inputs[row["input"]], SR, subtype="FLOAT")
        drive = float(row["fuzz"]) if str(row["fuzz"]).replace(".", "").isdigit() else 1.0
        sf.write(root / row["target"], np.tanh(inputs[row["input"]] * drive) * 0.5, SR, subtype="FLOAT")
    header = header or list(rows[0])
    lines = [",".join(header)] + [",".join(str(r.get(h, "")) for h in header) for r in rows]
    (root / "knobs.csv").write_text("\n".join(lines) + "\n")
    spec = {"name": "fuzz", "unit": "", "minimum": 1, "maximum": 10, "default": 5, "taper": "log"}
    if knobs_file == "json":
        (root / "knobs.json").write_text(json.dumps({"effect": "my_fuzz", "knobs": [spec]}))
    elif knobs_file == "toml":
        (root / "knobs.toml").write_text('effect = "my_fuzz"\n[[knobs]]\nname = "fuzz"\nunit = ""\nminimum = 1\n'
                                         'maximum = 10\ndefault = 5\ntaper = "log"\n')


def fuzz_rows(n_inputs: int = 10, per_input: int = 3):
    return [{"input": f"di_{i}.wav", "target": f"out_{i}_{j}.wav", "fuzz": [1, 3, 10][j % 3]}
            for i in range(n_inputs) for j in range(per_input)]


@pytest.mark.parametrize("knobs_file", ["json", "toml"])
def test_a_csv_of_recordings_loads_with_splits_by_input_file(tmp_path, knobs_file):
    write_csv_set(tmp_path, fuzz_rows(), knobs_file)
    info = read_dataset(tmp_path)
    assert info.form == "csv" and info.effect == "my_fuzz" and info.latency_samples is None
    assert [k.name for k in info.knobs] == ["fuzz"] and info.knobs[0].taper == "log"
    split_of = {}
    for p in info.pairs:
        assert split_of.setdefault(p.input.name, p.split) == p.split  # all settings of one input together
    assert sorted(split_of.values()).count("Test") == 1 and sorted(split_of.values()).count("Val") == 1
    data = PairSet(tmp_path, "Train")
    assert len(data.pairs) == 8 * 3
    np.testing.assert_allclose(sorted(set(data.knobs[:, 0])), [0.0, np.log(3) / np.log(10), 1.0], atol=1e-6)


def test_a_split_column_is_honoured_and_a_leak_refused(tmp_path):
    rows = [{**r, "split": ["train", "Val", "TEST"][i // 3 % 3]} for i, r in enumerate(fuzz_rows(3))]
    write_csv_set(tmp_path / "ok", rows)
    assert [p.split for p in read_dataset(tmp_path / "ok").pairs] == ["Train"] * 3 + ["Val"] * 3 + ["Test"] * 3
    rows[1]["split"] = "test"  # di_0.wav in Train and in Test
    write_csv_set(tmp_path / "leak", rows)
    with pytest.raises(RecordingError, match=r"di_0.wav: source appears in splits \['Test', 'Train'\]"):
        read_pairs(tmp_path / "leak")


@pytest.mark.parametrize("change,message", [
    (lambda rows: rows[2].update(fuzz="loud"), r"knobs.csv line 4: fuzz = 'loud' is not a number"),
    (lambda rows: rows[4].update(fuzz=11), r"out_1_1.wav: knob fuzz = 11 outside its range 1..10"),
    (lambda rows: rows[0].update(split="holdout"), r"knobs.csv line 2: split 'holdout' is not one of Train, Val, Test"),
], ids=["not-a-number", "out-of-range", "unknown-split"])
def test_bad_csv_rows_are_refused_with_the_line_and_value(tmp_path, change, message):
    rows = fuzz_rows(3)
    header = ["input", "target", "fuzz", "split"]
    for r in rows:
        r["split"] = "Train"
    change(rows)
    write_csv_set(tmp_path, rows, header=header)
    with pytest.raises((ValueError, RecordingError), match=message):
        read_pairs(tmp_path)


def test_a_csv_without_knob_specs_or_with_wrong_columns_says_what_is_missing(tmp_path):
    write_csv_set(tmp_path / "nospec", fuzz_rows(3), knobs_file=None)
    with pytest.raises(ValueError, match=r"no knob specs.*add .*knobs.json"):
        read_pairs(tmp_path / "nospec")
    write_csv_set(tmp_path / "cols", fuzz_rows(3))
    (tmp_path / "cols" / "knobs.json").write_text(json.dumps({"effect": "drive"}))  # catalogue specs, other names
    with pytest.raises(ValueError, match=r"knob columns \['fuzz'\] do not match the knob specs \['drive_db', 'tone_hz', 'level_db'\]"):
        read_pairs(tmp_path / "cols")


def test_splits_are_assigned_per_file_deterministically():
    groups = [f"take{i}.wav" for i in range(20)]
    a = assign_splits(groups)
    assert a == assign_splits(list(reversed(groups)))
    assert sorted(a.values()).count("Test") == 2 and sorted(a.values()).count("Val") == 2


# --- the full tier -------------------------------------------------------------------------------
def test_the_full_tier_without_its_soundfont_names_the_file_and_the_apt_package(tmp_path, monkeypatch):
    missing = tmp_path / "FluidR3_GM.sf2"
    monkeypatch.setattr(sources, "FLUID_R3", missing)
    with pytest.raises(FileNotFoundError, match=rf"{missing} not found.*apt-get install fluid-soundfont-gm"):
        build_dataset(get_effect("comp4"), tmp_path / "full", tier="full", **TINY)
    assert not list((tmp_path / "full").glob("*/*.wav")) if (tmp_path / "full").exists() else True
    r = subprocess.run([sys.executable, "-m", "training.data", "--tier", "full", "--out", str(tmp_path / "cli"),
                        "--soundfont", str(missing)], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "fluid-soundfont-gm" in r.stderr and "Traceback" not in r.stderr


def test_the_full_tier_code_path_builds_a_tiny_set(tmp_path):
    """With FluidR3 when apt installed it, else with the pip soundfont standing in for it."""
    sf2 = sources.FLUID_R3 if sources.FLUID_R3.is_file() else sources.soundfont_path()
    root = build_dataset(get_effect("comp4"), tmp_path, tier="full", soundfont=sf2, progress=True,
                         **{**TINY, "seconds_each": 1.5, "n_midi": 5})
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["tier"] == "full" and len(meta["sources"]) == 8
    assert {"guitar", "bass", "keys", "drums", "mix", "steps"} <= set(meta["sources"].values())
    assert any("_straight" in s for s in meta["sources"])
    PairSet(root, "Train")  # passes the checks: no silence, no NaN, no DC


def test_full_tier_items_are_independent_and_reproducible():
    sf2 = sources.soundfont_path()
    a = list(sources.full_sources(3, SR, 1.0, n_midi=6, n_synth=1, sf2=sf2, drums_sf2s=()))
    b = list(sources.full_sources(3, SR, 1.0, n_midi=6, n_synth=1, sf2=sf2, drums_sf2s=()))
    assert [n for n, _, _ in a] == [n for n, _, _ in b]
    for (_, _, x), (_, _, y) in zip(a, b):
        np.testing.assert_array_equal(x, y)
    styles = {n.split("_")[2] for n, _, _ in a if n.startswith("midi")}
    assert styles == {"straight", "swing"}  # item 5 starts the second style round
    for name, kind, audio in a:
        assert np.abs(audio).max() > 10 ** (-31 / 20), name
