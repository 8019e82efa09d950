"""Recorded data all the way: a folder of recorded pairs of an effect the catalogue does not know
(knobs.csv + knobs.toml) is checked, trained, converted into a verified bundle whose golden vectors
are a recorded Test pair, self-tested on the device runtime and rendered by the device engine;
inverse datasets get recorded golden vectors the same way. (``make pedal DATA=DIR`` is this, with
a real training budget.)"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pedalboard as pb
import pytest
import soundfile as sf
import torch

from device.automation import load_automation, positions_per_hop
from device.bundle import load_bundle
from device.knobspec import KnobSpec
from device.selftest import esr, snr_db
from training import sources
from training.effects import CATALOGUE

REPO = Path(__file__).resolve().parents[2]
SR = 48000
EFFECT = "gainlp_3c"  # a user's pedal: gain -> low-pass -> compressor, three knobs
KNOBS = (KnobSpec("gain_db", "dB", 0.0, 12.0, 6.0, "lin"), KnobSpec("tone_hz", "Hz", 800.0, 8000.0, 2500.0, "log"),
         KnobSpec("threshold_db", "dB", -30.0, -5.0, -15.0, "lin"))
DESCRIPTION = "my gain + low-pass + compressor box, recorded through the interface"


def my_pedal(x: np.ndarray, gain_db: float, tone_hz: float, threshold_db: float) -> np.ndarray:
    """The unit being 'recorded': not in the catalogue, only its output is known to the project."""
    board = pb.Pedalboard([pb.Gain(gain_db), pb.LowpassFilter(tone_hz),
                           pb.Compressor(threshold_db=threshold_db, ratio=4.0, attack_ms=5.0, release_ms=60.0),
                           pb.Gain(-6.0)])
    return board(x[None].astype(np.float32), SR)[0].astype(np.float32)


def latin_hypercube_settings(n: int, rng: np.random.Generator) -> np.ndarray:
    """n knob settings (physical units), every knob's range cut into n strata, each used once."""
    pos = (np.arange(n)[:, None] + rng.uniform(0, 1, (n, len(KNOBS)))) / n
    for j in range(len(KNOBS)):
        pos[:, j] = pos[rng.permutation(n), j]
    return np.array([[k.from_normalized(p) for k, p in zip(KNOBS, row)] for row in pos])


def write_recordings(root: Path, seconds: float = 2.0) -> Path:
    """di_{i}.wav through the pedal at a few settings each -> out_{i}_{j}.wav, knobs.csv (with a
    split column) and knobs.toml (the effect, its description, its knobs): the recorded form."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    kinds = ["plucks", "steps", "bursts", "sweep", "noise", "plucks", "steps"]
    splits = ["Train", "Train", "Train", "Train", "Val", "Test", "Test"]
    per = {"Train": 4, "Val": 2, "Test": 2}
    settings = iter(latin_hypercube_settings(sum(per[s] for s in splits), rng))
    lines = ["input,target," + ",".join(k.name for k in KNOBS) + ",split"]
    for i, (kind, split) in enumerate(zip(kinds, splits)):
        x = sources.SYNTHETIC[kind](rng, seconds, SR)
        x = (x * 10 ** (rng.uniform(-16, -6) / 20) / np.abs(x).max()).astype(np.float32)
        sf.write(root / f"di_{i}.wav", x, SR, subtype="FLOAT")
        for j in range(per[split]):
            v = next(settings)
            sf.write(root / f"out_{i}_{j}.wav", my_pedal(x, *v), SR, subtype="FLOAT")
            lines.append(f"di_{i}.wav,out_{i}_{j}.wav," + ",".join(f"{a:.6g}" for a in v) + f",{split}")
    (root / "knobs.csv").write_text("\n".join(lines) + "\n")
    knob_tables = "".join(f'\n[[knobs]]\nname = "{k.name}"\nunit = "{k.unit}"\nminimum = {k.minimum}\n'
                          f'maximum = {k.maximum}\ndefault = {k.default}\ntaper = "{k.taper}"\n' for k in KNOBS)
    (root / "knobs.toml").write_text(f'effect = "{EFFECT}"\ndescription = "{DESCRIPTION}"\n{knob_tables}')
    return root


def device_python() -> str:
    exe = REPO / ".venv-device" / "bin" / "python"
    if not exe.exists():
        pytest.skip("no device environment (.venv-device): `make envs` builds it")
    return str(exe)


def run_device(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([device_python(), "-m", "device", *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=str(REPO))


def engine_knobs(pos: np.ndarray, hop: int) -> np.ndarray:
    """Knob positions per hop as the device engine feeds them to the model: one-pole smoothed,
    starting at the first row (``Engine.prime``)."""
    import inspect
    from device.engine import Engine
    ms = inspect.signature(Engine.__init__).parameters["knob_smoothing_ms"].default
    coef = np.float32(np.exp(-hop / SR / (ms / 1000)))
    k, out = pos[0].astype(np.float32).copy(), np.empty_like(pos, np.float32)
    for t, row in enumerate(pos):
        k *= coef
        k += (np.float32(1) - coef) * row
        out[t] = k
    return out


def test_recordings_of_an_unknown_effect_become_a_verified_pedal(tmp_path):
    from convert.pipeline import convert
    from training.data import read_dataset
    from training.demo import prepare, report
    from training.evaluate import evaluate
    from training.recordings import check_dataset
    from training.train import TrainConfig, load_checkpoint, train

    assert EFFECT not in CATALOGUE
    data = write_recordings(tmp_path / "recordings")
    info = read_dataset(data)
    assert info.form == "csv" and info.effect == EFFECT and [k.name for k in info.knobs] == [k.name for k in KNOBS]
    rep = check_dataset(data)  # what `make pedal` runs first (python -m training.recordings)
    assert not rep.errors, rep.lines()

    run, out = tmp_path / "run", tmp_path / "build" / "mine"
    train(TrainConfig(data=str(data), out=str(run), minutes=5.0, max_steps=40, tier="nano", batch=4, lookback_s=0.1,
                      tail_s=0.1, val_every_s=1e9, val_chunks=4), log=lambda *a: None)
    evaluate(run / "best.pt", data, run, log=lambda *a: None)
    convert(run / "best.pt", data, out, report=run / "eval.json", log=lambda *a: None, calib_clips=4, calib_seconds=1.0,
            calib_per_clip=16, timing_hops=100)
    pedal = out.with_suffix(".pedal")
    b = load_bundle(pedal)
    m = b.manifest

    # the manifest: the dataset's own description, golden vectors from a recorded Test pair
    assert m.effect == EFFECT and m.description == DESCRIPTION
    assert [k.name for k in m.knobs] == [k.name for k in KNOBS]
    assert m.training["golden_target"] == "recorded" and "recorded" in m.golden["kind"]
    g = b.golden()
    test_targets = {ln.split(",")[1]: ln.split(",") for ln in (data / "knobs.csv").read_text().splitlines()[1:]
                    if ln.endswith(",Test")}
    row = test_targets[m.golden["source"]]  # the golden target is a recorded Test target file
    recorded, _ = sf.read(data / row[1], dtype="float32")
    n = len(g["input"])
    assert np.array_equal(g["target"], recorded[:n])
    assert np.array_equal(g["input"], sf.read(data / row[0], dtype="float32")[0][:n])
    # held at the setting it was recorded at, every hop
    assert np.allclose(g["knob_values"], np.array(row[2:5], np.float32)[None], rtol=1e-5)
    assert np.ptp(g["knob_positions"], axis=0).max() == 0

    # the device self-test passes with these golden vectors
    st = run_device("selftest", "--bundle", str(pedal))
    verdicts = [ln for ln in st.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert sum("golden vectors" in ln and ln.startswith("PASS") for ln in verdicts) == len(m.models), st.stdout + st.stderr
    # every check passes but, on a loaded host, real-time headroom (timing is for benchmarks, not pass/fail tests)
    assert all(ln.startswith("PASS") or "real-time headroom" in ln for ln in verdicts), st.stdout + st.stderr

    # the bundle's ESR vs the recorded target, as the manifest states it, is what the device computes
    sf.write(tmp_path / "golden_in.wav", g["input"], SR, subtype="FLOAT")
    with open(tmp_path / "golden_knobs.csv", "w") as f:
        f.write("time_s," + ",".join(k.name for k in KNOBS) + "\n0," + ",".join(row[2:5]) + "\n")
    r = run_device("render", "--bundle", str(pedal), "--input", str(tmp_path / "golden_in.wav"), "--knobs",
                   str(tmp_path / "golden_knobs.csv"), "--precision", "float32", "--out", str(tmp_path / "golden_out.wav"))
    assert r.returncode == 0, r.stdout + r.stderr
    y_dev, _ = sf.read(tmp_path / "golden_out.wav", dtype="float32")
    f32 = m.models["float32"].verified
    assert f32["esr_vs_target"] == pytest.approx(esr(recorded[:n], y_dev), abs=2e-5)
    assert m.training["bundle_esr_vs_target_golden"] == m.models[m.default_precision].verified["esr_vs_target"]
    assert m.training["pytorch_esr_vs_target_golden"] == pytest.approx(esr(g["target"], g["expected"]), abs=1e-5)
    assert np.isfinite(f32["esr_vs_target"])

    # the demo's ends on held-out recorded pairs: prepare, the device engine renders, report
    demo = tmp_path / "demo"
    desc = prepare(data, demo, m.hop)
    assert desc["kind"] == "recorded" and len(desc["clips"]) == 2  # one per held-out source, each at its setting
    r = run_device("render", "--bundle", str(pedal), "--input", str(demo / "input.wav"), "--knobs", str(demo / "knobs.csv"),
                   "--precision", "float32", "--out", str(demo / "model.wav"))
    assert r.returncode == 0, r.stdout + r.stderr
    x, _ = sf.read(demo / "input.wav", dtype="float32")
    y_dev, _ = sf.read(demo / "model.wav", dtype="float32")
    times, values = load_automation(demo / "knobs.csv", m.knobs)
    pos = positions_per_hop(times, values, m.knobs, len(x) // m.hop, m.hop, m.sample_rate)
    model, _ = load_checkpoint(run / "best.pt")
    with torch.no_grad():  # the knobs as the engine feeds them: smoothed (they glide in the silence between clips)
        ref = model(torch.from_numpy(x)[None], torch.from_numpy(engine_knobs(pos, m.hop))[None])[0].numpy()
    assert snr_db(ref, y_dev[: len(ref)]) >= m.tolerances["float32"]["snr_db_min"]
    # the clips are the recordings at their recorded settings
    target, _ = sf.read(demo / "target.wav", dtype="float32")
    c0 = desc["clips"][0]
    first, _ = sf.read(data / c0["target"], dtype="float32")
    k0 = int(c0["seconds"] * SR)
    assert np.array_equal(target[:k0], first[:k0])
    assert np.allclose([KNOBS[j].from_normalized(float(p)) for j, p in enumerate(pos[0])], list(c0["knobs"].values()),
                       rtol=1e-4)
    report(demo, run, out)
    text = (demo / "report.md").read_text()
    assert DESCRIPTION in text and "recorded" in text
    assert json.loads((demo / "demo.json").read_text())["demo"]["esr_model"] >= 0


def test_an_inverse_dataset_gets_recorded_golden_vectors(tmp_path):
    """noise_inv (a de-noiser): its targets are the clean inputs, which no catalogue effect renders."""
    from convert.pipeline import golden_vectors
    from training.data import build_dataset
    from training.demo import dataset_description, dataset_renderer, prepare
    from training.effects import get_effect
    from training.model import SignalTrainPi, tier_config

    rng = np.random.default_rng(2)
    items = [(f"s{i}", k, (0.3 * sources.SYNTHETIC[k](rng, 1.0, SR)).astype(np.float32))
             for i, k in enumerate(["plucks", "steps", "bursts", "sweep", "noise", "plucks", "steps"])]
    fwd = build_dataset(get_effect("noise"), tmp_path / "noise", sources=items, log=lambda *a: None)
    inv = build_dataset(get_effect("noise"), tmp_path / "noise_inv", sources=items, inverse=True, log=lambda *a: None)
    knobs = list(get_effect("noise").knobs)
    assert dataset_renderer(fwd) is CATALOGUE["noise"] and dataset_renderer(inv) is None
    assert "inverse" in dataset_description(inv, "noise_inv", knobs)
    assert dataset_description(tmp_path, "mystery", knobs) == "mystery: learned from recorded input/output pairs (1 knob: noise_db)"
    model = SignalTrainPi(tier_config("nano", n_knobs=1)).eval()
    g = golden_vectors(model, knobs, inv, seconds=0.5)
    assert "recorded" in str(g["kind"]) and np.ptp(g["knob_positions"]) == 0
    clean = next(p for p in json.loads((inv / "dataset.json").read_text())["pairs"] if p["target"].endswith(str(g["source"])))
    assert np.array_equal(g["target"], sf.read(inv / clean["target"], dtype="float32")[0][: len(g["target"])])
    assert g["knob_values"][0, 0] == pytest.approx(clean["knobs"][0])
    g = golden_vectors(model, knobs, fwd, seconds=0.5)  # the forward effect renders: a knob sweep
    assert "sweep" in str(g["kind"]) and np.ptp(g["knob_positions"]) > 0.5
    assert prepare(inv, tmp_path / "demo", model.cfg.hop, seconds_per_source=0.5)["kind"] == "recorded"
