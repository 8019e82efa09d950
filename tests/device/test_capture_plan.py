"""The capture's plan, knobs and prompts, without audio: what a person at the pedal is asked to do.

(The capture itself, through ALSA and a pedal made of JACK: test_capture.py.)
"""
import os
import threading
import time

import numpy as np
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device.capture.plan import (format_clock, format_value, make_plan, min_distance, moves, parse_clock, parse_knob)
from device.capture.session import Confirm
from device.capture.signal import SIGNAL_VERSION, make_signal

SPECS = ["drive=0..10", "tone=clock", "time_ms=40..800,ms,log", "level=9..3,clock"]


def test_knobs_in_the_pedals_units_and_in_clock_positions():
    drive, tone, time_ms, level = (parse_knob(s) for s in SPECS)
    assert (drive.minimum, drive.maximum, drive.unit, drive.taper, drive.default) == (0, 10, "", "lin", 5)
    assert (tone.minimum, tone.maximum, tone.unit) == (7, 17, "o'clock") and format_value(tone, 14.5) == "2:30 o'clock"
    assert (time_ms.unit, time_ms.taper, time_ms.default) == ("ms", "log", 180)
    assert (level.minimum, level.maximum) == (9, 15)  # 9 o'clock to 3 o'clock
    assert [format_clock(h) for h in (7, 9.5, 12, 12.25, 17)] == ["7:00", "9:30", "12:00", "12:15", "5:00"]
    assert parse_clock("2:30", "x") == 14.5 and parse_clock("12", "x") == 12


@pytest.mark.parametrize("arg, words", [
    ("drive", "expected NAME=MIN..MAX"),
    ("drive=10..0", "range 10..0 is empty"),
    ("drive=a..b", "'a..b' is not two numbers"),
    ("drive=0-10", "must be MIN..MAX"),
    ("tone=6..3,clock", "dead zone"),
    ("tone=clock,log", "a clock knob is linear"),
    ("time=0..800,ms,log", "log taper needs a positive minimum"),
    ("bad name=0..1", "letters, digits and '_'"),
])
def test_a_bad_knob_is_refused_with_the_value_named(arg, words):
    with pytest.raises(ValueError) as e:
        parse_knob(arg)
    assert words in str(e.value) and (arg.split("=")[0] in str(e.value))


def test_the_plan_is_a_balanced_hypercube_that_moves_few_knobs():
    specs = [parse_knob(s) for s in SPECS]
    plan = np.array(make_plan(specs, 20))
    for j, k in enumerate(specs):  # 5 positions per knob, each used 4 times
        positions = np.round([k.to_normalized(v) for v in plan[:, j]], 2)
        assert sorted(set(positions)) == [0.0, 0.25, 0.5, 0.75, 1.0], (k.name, positions)
        assert all(np.count_nonzero(positions == p) == 4 for p in set(positions))
    assert len({tuple(r) for r in plan}) == 20  # no setting twice
    lhs_moves = np.mean(moves(plan.tolist()))
    random_moves = np.mean(moves(make_plan(specs, 20, kind="random")))
    pos = lambda p: np.array([[k.to_normalized(v) for k, v in zip(specs, r)] for r in p])  # noqa: E731
    print(f"knobs moved per pass: hypercube {lhs_moves:.2f}, random {random_moves:.2f}; closest two settings "
          f"{min_distance(pos(plan)):.3f} vs {min_distance(pos(make_plan(specs, 20, kind='random'))):.3f}")
    assert lhs_moves <= 2.5 < random_moves
    assert make_plan(specs, 20) == plan.tolist()  # deterministic from the seed


def test_the_signal_is_versioned_and_made_the_same_every_time():
    a, b = make_signal(8.0), make_signal(8.0)
    assert a.version == SIGNAL_VERSION and np.array_equal(a.audio, b.audio)
    assert float(np.abs(a.audio).max()) <= 10 ** (-1 / 20) + 1e-6
    ra, rb = a.region("repeat_a"), a.region("repeat_b")
    assert np.array_equal(ra, rb) and np.array_equal(a.region("clicks_a"), a.region("clicks_b"))
    (s0, s1), (v0, v1), (t0, t1) = a.split_ranges().values()
    assert s1 == v0 and v1 == t0  # three stretches, no overlap


@pytest.fixture
def pins():
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()


def test_the_footswitch_or_enter_confirms_and_q_stops(pins):
    r, w = os.pipe()
    with os.fdopen(r) as stream, os.fdopen(w, "w") as keys:
        confirm = Confirm(footswitch_gpio=17, stream=stream)
        got = []
        t = threading.Thread(target=lambda: got.append(confirm.wait()))
        t.start()
        time.sleep(0.1)
        assert t.is_alive()  # waiting
        pin = pins.pin(17)
        pin.drive_low()
        time.sleep(0.05)
        pin.drive_high()  # a stomp
        t.join(2)
        assert got == [True]
        keys.write("\n")
        keys.flush()
        assert confirm.wait() is True
        keys.write("q\n")
        keys.flush()
        assert confirm.wait() is False
        confirm.close()
