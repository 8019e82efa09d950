"""Every catalogue effect goes the whole way, as `make demo EFFECT=x` does: data -> train (a tiny
budget) -> parts chosen from the data -> convert -> device self-test -> device render, which
matches PyTorch. So no effect can silently break again (drive once could not even load its data)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from device.bundle import load_bundle
from device.selftest import snr_db
from tests.host.test_recorded_pedal import run_device
from training.data import build_dataset
from training.effects import CATALOGUE, get_effect

# every catalogue effect; the two inverse tasks in their learnable direction (forward `timing`
# plays audio early: no causal model can; forward `noise` is the trivial one)
TASKS = [n for n in CATALOGUE if n not in ("timing", "noise")] + ["noise_inv", "timing_inv"]
EXPECTED_PARTS = {"comp4": {"gain"}, "echo": {"delay"}, "drive": {"shaper"}, "timing_inv": {"delay"}}


@pytest.mark.parametrize("task", TASKS)
def test_every_effect_trains_converts_and_plays_on_the_device(task, tmp_path):
    from convert.pipeline import convert
    from training.train import TrainConfig, load_checkpoint, train

    base, inverse = (task[:-4], True) if task.endswith("_inv") else (task, False)
    data = build_dataset(get_effect(base), tmp_path / "data", n_midi=4, n_synth=3, seconds_each=4.0,
                         settings_per_segment=2, inverse=inverse, log=lambda *a: None)
    run, out = tmp_path / "run", tmp_path / "build" / task
    train(TrainConfig(data=str(data), out=str(run), minutes=5.0, max_steps=6, tier="nano", batch=2, tail_s=0.1,
                      val_every_s=1e9, val_chunks=2), log=lambda *a: None)
    model, ck = load_checkpoint(run / "best.pt")
    parts = set(model.cfg.parts)
    assert EXPECTED_PARTS.get(task, set()) <= parts, f"{task}: parts {sorted(parts)} from the data"
    if task == "comp4":
        assert parts == {"gain"}  # a compressor is a time-varying gain: nothing else

    convert(run / "best.pt", data, out, log=lambda *a: None, quantize=False, timing_hops=50)
    pedal = out.with_suffix(".pedal")
    m = load_bundle(pedal).manifest
    assert m.training["parts"] == model.cfg.parts
    assert {p["name"] for p in m.state_layout} >= (({"delay_lines"} if "delay" in parts else set())
                                                   | ({"mod_phase", "mod_x"} if "mod" in parts else set()))

    st = run_device("selftest", "--bundle", str(pedal))
    verdicts = [ln for ln in st.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert sum("golden vectors" in ln and ln.startswith("PASS") for ln in verdicts) == len(m.models), st.stdout + st.stderr

    # the device engine renders held-out audio at a fixed setting; PyTorch agrees within the bundle's float32 tolerance
    g = load_bundle(pedal).golden()
    x = g["input"][: len(g["input"]) // m.hop * m.hop]
    sf.write(tmp_path / "in.wav", x, m.sample_rate, subtype="FLOAT")
    values = g["knob_values"][0]
    (tmp_path / "knobs.csv").write_text("time_s," + ",".join(k.name for k in m.knobs) + "\n0," +
                                        ",".join(f"{v:.9g}" for v in values) + "\n")
    r = run_device("render", "--bundle", str(pedal), "--input", str(tmp_path / "in.wav"), "--knobs",
                   str(tmp_path / "knobs.csv"), "--precision", "float32", "--out", str(tmp_path / "out.wav"))
    assert r.returncode == 0, r.stdout + r.stderr
    y_dev, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    pos = torch.tensor([[k.to_normalized(float(v)) for k, v in zip(m.knobs, values)]], dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None], pos)[0].numpy()
    assert np.abs(ref).max() > 1e-3
    assert snr_db(ref, y_dev[: len(ref)]) >= m.tolerances["float32"]["snr_db_min"]
