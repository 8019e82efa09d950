"""`python -m device knobs`: live pot readings in raw, calibrated and physical terms, and the
calibration walk-through that writes each pot's end stops into the config."""
import builtins
import os
import re
import subprocess
import sys
import time

import pytest

from device.__main__ import main
from device.config import load_config
from device.pots import PotCalibration

from .conftest import REPO, needs_real_time

CONFIG = """# my pedal
[audio]
capture_device = "pedal"
playback_device = "pedal"

[model]
bundle = "{bundle}"

[knobs]
source = "file"
file = "{knob_file}"
poll_hz = 200
smoothing_ms = 0.0      # no glide: the readings below are exact

[[knobs.pot]]
knob = "threshold_db"   # the big knob
channel = 0
raw_min = 0.1
raw_max = 0.9

[[knobs.pot]]
knob = "ratio"
channel = 1

[[knobs.pot]]
knob = "attack_ms"
channel = 2
reversed = true

[[knobs.pot]]
knob = "release_ms"
channel = 3

[led]
enabled = false
"""


@pytest.fixture
def setup(tmp_path, bundle_path):
    knob_file = tmp_path / "knobs.txt"
    cfg = tmp_path / "pedal.toml"
    cfg.write_text(CONFIG.format(bundle=bundle_path.resolve(), knob_file=knob_file))
    return cfg, knob_file


def test_knobs_shows_raw_position_and_value_with_its_unit(setup):
    cfg, knob_file = setup
    knob_file.write_text("0 0.25\n1 0.5\n2 0.0\n3 1.0\n")
    r = subprocess.run([sys.executable, "-m", "device", "knobs", "--config", str(cfg), "--once"], capture_output=True,
                       text=True, timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    rows = {m[0]: m[1:] for m in re.findall(r"^(\w+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(.+)$", r.stdout, re.M)}
    # threshold: raw 0.25 on a pot calibrated 0.1..0.9 -> position 0.1875 -> -50 + 0.1875 * 50 dB
    assert rows["threshold_db"] == ("0", "0.2500", "0.1875", "-40.62 dB")
    assert rows["ratio"][2:] == ("0.5000", "3.873 :1")  # log taper: the geometric mean of 1.5 and 10
    assert rows["attack_ms"][2:] == ("1.0000", "1000 ms")  # reversed pot: raw 0 is full clockwise
    assert rows["release_ms"][2:] == ("1.0000", "1000 ms")


@needs_real_time  # a real-time card, or a poller given a fixed time
def test_calibration_walks_through_each_pot_and_writes_its_end_stops_into_the_config(setup, monkeypatch, capsys):
    cfg, knob_file = setup
    original = cfg.read_text()
    # what each pot reads at its stops: (counter-clockwise, clockwise); attack is wired backwards
    stops = {"threshold_db": (0.04, 0.96), "ratio": (0.02, 0.99), "attack_ms": (0.95, 0.03), "release_ms": (0.1, 0.8)}
    channel = {"threshold_db": 0, "ratio": 1, "attack_ms": 2, "release_ms": 3}
    readings = {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5}
    prompts = []

    def turn(prompt=""):
        """The player turns the knob the prompt names to the stop it names, then presses Enter."""
        prompts.append(prompt)
        knob = next(k for k in stops if k in prompt)
        readings[channel[knob]] = stops[knob][0 if "COUNTER" in prompt else 1]
        knob_file.write_text("".join(f"{c} {v}\n" for c, v in readings.items()))
        time.sleep(0.08)  # the file source looks for changes every 50 ms
        return ""

    knob_file.write_text("0 0.5\n1 0.5\n2 0.5\n3 0.5\n")
    monkeypatch.setattr(builtins, "input", turn)
    assert main(["knobs", "--config", str(cfg), "--calibrate", "--write"]) == 0
    out = capsys.readouterr().out
    assert len(prompts) == 8 and "COUNTER-CLOCKWISE" in prompts[0] and "CLOCKWISE" in prompts[1]
    assert "wrote 4 calibrations" in out
    new = load_config(cfg)
    for pot in new.knobs.pots:
        want = PotCalibration.from_extremes(*stops[pot.knob])
        assert (pot.raw_min, pot.raw_max, pot.reversed) == (pytest.approx(want.raw_min, abs=1e-4),
                                                            pytest.approx(want.raw_max, abs=1e-4), want.reversed)
    assert [p.reversed for p in new.knobs.pots] == [False, False, True, False]
    text = cfg.read_text()
    assert "# my pedal" in text and "# the big knob" in text and "# no glide" in text  # comments kept
    assert text.count("raw_min") == 4 and text.count("reversed") == 4  # replaced, not added twice
    assert (cfg.parent / "pedal.toml.bak").read_text() == original


@needs_real_time  # a real-time card, or a poller given a fixed time
def test_calibration_refuses_a_pot_that_does_not_move(setup, monkeypatch, capsys):
    cfg, knob_file = setup
    knob_file.write_text("0 0.5\n1 0.5\n2 0.5\n3 0.5\n")  # nobody turns anything
    monkeypatch.setattr(builtins, "input", lambda prompt="": "")
    assert main(["knobs", "--config", str(cfg), "--calibrate", "--write"]) == 1
    out = capsys.readouterr().out
    assert out.count("not calibrated: pot travel 0.500..0.500 is too small: is the wiper connected?") == 4
    assert "raw_min = 0.1\n" in cfg.read_text()  # nothing written
