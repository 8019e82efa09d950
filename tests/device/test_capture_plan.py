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
    ("tone=4..3,clock", "4:00 to 3:00 o'clock runs backwards"),
    ("tone=2:30..2:30,clock", "2:30 to 2:30 o'clock is no travel"),
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
    # another program: other program parts, every fixed part (clicks, quiet, repeats, gaps) the same
    c = make_signal(8.0, program=3)
    assert c.regions == a.regions and np.array_equal(c.audio, make_signal(8.0, program=3).audio)
    for name, (lo, hi) in a.regions.items():
        same = np.array_equal(a.audio[lo:hi], c.audio[lo:hi])
        assert same == (name not in ("train", "val", "test")), name
    corr = np.corrcoef(a.region("train"), c.region("train"))[0, 1]
    assert abs(corr) < 0.1, corr
    for k in range(12):  # a short part all rests is drawn again (programs 2 and 3 at 6 s were silent in a split)
        s = make_signal(6.0, program=k)
        assert min(float(np.abs(s.audio[lo:hi]).max()) for lo, hi in s.split_ranges().values()) > 0.01, k
    # a part whose last item would be under a sample long ends there (program 29 at 60 s stopped with
    # "zero-size array" when a 64-setting capture reached it)
    s = make_signal(60.0, program=29)
    assert min(float(np.abs(s.audio[lo:hi]).max()) for lo, hi in s.split_ranges().values()) > 0.01


@pytest.fixture
def pins():
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()


def test_the_footswitch_or_enter_confirms_q_stops_and_keys_typed_during_a_pass_do_not_count(pins):
    r, w = os.pipe()
    with os.fdopen(r) as stream, os.fdopen(w, "w") as keys:
        confirm = Confirm(footswitch_gpio=17, stream=stream)

        def later(action, delay_s=0.15):
            threading.Timer(delay_s, action).start()

        def type_(text):
            keys.write(text)
            keys.flush()

        pin = pins.pin(17)
        later(pin.drive_low, 0.1)
        later(pin.drive_high, 0.15)  # a stomp
        t0 = time.monotonic()
        assert confirm.wait() is True and time.monotonic() - t0 >= 0.14
        type_("\n\n")  # Enter, twice, while the pass plays: ignored
        later(lambda: type_("\n"))
        t0 = time.monotonic()
        assert confirm.wait() is True and time.monotonic() - t0 >= 0.14  # it waited for the new Enter
        later(lambda: type_("q\n"))
        assert confirm.wait() is False
        confirm.close()


def test_an_answer_the_moment_the_prompt_shows_counts_and_end_of_input_stops(monkeypatch):
    """The lines typed during a pass are dropped before the prompt is printed, never after: a person
    (or test_capture's Player) who answers the instant the prompt appears is not ignored."""
    r, w = os.pipe()
    with os.fdopen(r) as stream, os.fdopen(w, "w") as keys:
        confirm = Confirm(stream=stream)
        keys.write("q\n")  # typed while the pass played: must not stop the capture
        keys.flush()

        class Terminal:  # the prompt appears, and Enter comes back at once
            def write(self, text):
                if "set the knobs" in text:
                    keys.write("\n")
                    keys.flush()
                return len(text)

            def flush(self):
                pass

        monkeypatch.setattr("sys.stdout", Terminal())
        t0 = time.monotonic()
        assert confirm.wait("pass 1/3: set the knobs") is True and time.monotonic() - t0 < 1.0
    r, w = os.pipe()
    os.close(w)
    with os.fdopen(r) as stream:
        assert Confirm(stream=stream).wait() is False  # the terminal closed, no footswitch: stop


def test_a_busy_sound_card_names_the_daemon():
    from types import SimpleNamespace

    from device.audio import AlsaError
    from device.capture.checks import Limits
    from device.capture.session import Session

    def busy():
        raise AlsaError("cannot open ALSA capture 'hw:0' / playback 'hw:0': [Errno 16] Device or resource busy")

    def missing():
        raise AlsaError("cannot open ALSA capture 'hw:9' / playback 'hw:9': No such file or directory")

    cap = SimpleNamespace(state={"limits": Limits().__dict__}, signal=SimpleNamespace(sample_rate=48000))
    with pytest.raises(AlsaError, match="systemctl stop pedal"):
        Session(cap, busy, None, 0, 3, False).play(np.zeros(10))
    with pytest.raises(AlsaError) as e:
        Session(cap, missing, None, 0, 3, False).play(np.zeros(10))
    assert "daemon" not in str(e.value)


def test_a_line_half_typed_on_the_terminal_during_a_pass_is_dropped_too():
    """On a terminal a line reaches the program only with its Enter: a 'q' typed during the pass and
    an Enter after the prompt would read as 'q' (stop). The tty's queue is flushed before the prompt."""
    import pty

    master, slave = pty.openpty()
    try:
        confirm = Confirm(stream=os.fdopen(slave, closefd=False))
        os.write(master, b"q")
        time.sleep(0.05)
        threading.Timer(0.15, lambda: os.write(master, b"\n")).start()
        assert confirm.wait() is True
    finally:
        os.close(master)
        os.close(slave)


def test_settings_added_to_a_plan_are_dialled_checked_and_ordered_on_from_its_last():
    from device.capture.plan import extend_plan

    specs = [parse_knob(s) for s in ("drive=0..10", "tone=clock")]
    plan = [[0.0, 7.0], [5.0, 12.0]]
    new = extend_plan(specs, plan, [[10, 17], [5.1, 12.05], [5, 17], [0, 7]], "x")
    assert new == [[5.0, 17.0], [10.0, 17.0]]  # 5.1 -> 5 (dialled) is in the plan already; [0, 7] too
    with pytest.raises(ValueError, match="drive = 11 lies outside 0..10"):
        extend_plan(specs, plan, [[11, 12]], "x")
    with pytest.raises(ValueError, match="expected 2 values"):
        extend_plan(specs, plan, [[1]], "x")
