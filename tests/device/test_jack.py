"""The daemon in real time, through a JACK dummy server standing in for the sound card.

The daemon runs as the real program (``python -m device run``) under ``chrt -f 60``; the test
process is the sound card: it plays a known signal into the ports the daemon captures and
records what the daemon plays back (device.jackrig.FakeCard). The chain is the Pi's, with JACK
in place of the codec: card -> JACK -> ALSA (type jack) -> daemon -> ALSA -> JACK -> card.

How a click is judged: the test signal is a 187.5 Hz sine, 256 samples a cycle, so a steady
output repeats every 256 samples to float precision. A click is a jump: a sample-to-sample step
larger than any the output makes on its own. The steady outputs on both sides of a change (knob
before and after, wet and dry) bound the steps the waveform itself makes; the test allows 5 %
above the larger of the two, and checks that a hard switch between them would have jumped far
more than that (so the test could see one). This machine stalls for milliseconds at times
(RECIPES.md); a change measured across an xrun is not judged, and is tried again.
"""
import shutil
import time

import numpy as np
import pytest

from device.bundle import load_bundle
from device.jackrig import FakeCard, JackServer, write_asoundrc

from .helpers import max_step
from .jackkit import (CYCLE, SR, Pedal, click_train, jack_env, knob_positions, outside, short_socket_path,
                      sine, steady, watch, write_config, write_knob_file, xrun_zones)

pytestmark = pytest.mark.skipif(shutil.which("jackd") is None, reason="needs jackd (apt-get install jackd2)")

PERIOD = 128
SLACK = 1.05  # allowed step above the larger of the two steady outputs' own largest step
# Settings whose outputs are far apart, so a hard switch between them would jump far more than
# the output ever steps on its own (each test checks that: at least twice the allowed step).
LOW = dict(threshold_db=-35.0, ratio=9.0, attack_ms=2.0, release_ms=100.0)
HIGH = dict(threshold_db=-15.0, ratio=9.0, attack_ms=2.0, release_ms=100.0)
SQUASHED = dict(threshold_db=-50.0, ratio=2.0, attack_ms=2.0, release_ms=100.0)  # wet far quieter than dry


@pytest.fixture(scope="module")
def jack_server(tmp_path_factory):
    with JackServer(period=PERIOD, log_path=tmp_path_factory.mktemp("jack") / "jackd.log") as server:
        yield server


@pytest.fixture
def asoundrc(tmp_path):
    return write_asoundrc(tmp_path / "asoundrc")


@pytest.fixture(scope="module")
def specs(bundle_path):
    return load_bundle(bundle_path).manifest.knobs


def cycle_start(frame: int) -> int:
    """The next frame at the start of a 256-sample cycle of the output (the card's clock)."""
    return -(-frame // CYCLE) * CYCLE


def judge_change(rec, t_change, before_s=0.25, settle_s=0.40, after_s=0.15):
    """Around a change made at card frame ``t_change``: the steady output before and after it,
    the largest step across the change, and what a hard switch would have jumped."""
    a = cycle_start(t_change - int(before_s * SR))
    b = cycle_start(t_change + int(settle_s * SR))
    n = int(after_s * SR) // CYCLE * CYCLE
    before, after, window = rec[a:t_change], rec[b:b + n], rec[a:b + n]
    m = min(len(before), len(after))
    # "steady": no break (an xrun jumps by ~0.3 or more); a compressor's gain may still be settling
    # by a few thousandths after a change (release, and the model's long memory)
    return {"steady": steady(before, tol=0.02) and steady(after, tol=0.02), "step": max_step(window),
            "own_step": max(max_step(before), max_step(after)),
            "hard_switch": float(np.abs(before[:m] - after[:m]).max()),  # same phase: b - a is whole cycles
            "window": (a, b + n)}


def assert_click_free(r: dict, what: str, fault: str) -> None:
    """A change judged by judge_change: its largest step stays within the steady outputs' own
    (times SLACK), where a hard switch would have jumped visibly further."""
    print(f"{what}: largest step {r['step']:.4f}, steady outputs' own {r['own_step']:.4f}, "
          f"a hard switch would jump {r['hard_switch']:.4f}")
    threshold = SLACK * r["own_step"] + 1e-4
    assert r["hard_switch"] > 2 * threshold, f"the test could not see a click here: {r}"
    assert r["step"] <= threshold, f"{fault}: step {r['step']:.4f} > {threshold:.4f}: {r}"


def clean(card, window, xruns_before, xruns_after) -> bool:
    return xruns_after == xruns_before and not any(window[0] <= f <= window[1] for f in card.xrun_frames)


def test_a_knob_turned_during_playback_makes_no_zipper_noise(jack_server, asoundrc, tmp_path, bundle_path, specs):
    """The player turns threshold from -15 to -35 dB and back (a knob file stands in for the pot)."""
    knob_file = tmp_path / "knobs.txt"
    write_knob_file(knob_file, knob_positions(specs, **HIGH))
    sock = short_socket_path()
    cfg = write_config(tmp_path / "pedal.toml", bundle_path, knob_file, sock, specs, period=PERIOD)
    with FakeCard(jack_server.name, sine(), record_s=20) as card:
        pedal = Pedal(["--config", str(cfg)], jack_env(jack_server, asoundrc), tmp_path, sock=sock)
        try:
            pedal.wait_settled()
            judged = []
            for turn, setting in enumerate([LOW, HIGH, LOW, HIGH, LOW]):
                time.sleep(0.3)
                x0, t_change = pedal.status()["xruns"], card.pos
                write_knob_file(knob_file, knob_positions(specs, **setting))
                time.sleep(0.7)
                st = pedal.status()
                assert st["knobs"]["threshold_db"] == pytest.approx(setting["threshold_db"], abs=0.1)
                r = judge_change(card.recording, t_change)
                if clean(card, r["window"], x0, st["xruns"]):
                    assert r["steady"], f"turn {turn}: output not steady before/after the change: {r}"
                    judged.append(r)
                if len(judged) >= 2:
                    break
        finally:
            log = pedal.stop()
    assert judged, f"every knob turn overlapped an xrun (card xruns at {card.xrun_frames}):\n{log}"
    for r in judged:
        assert_click_free(r, "knob turn", "zipper noise or a click")


def test_bypass_toggles_without_a_click(jack_server, asoundrc, tmp_path, bundle_path, specs):
    """Bypass on and off through the status socket (the footswitch calls the same code), with
    knobs set so that the wet signal is far from the dry one: only the crossfade stands between
    them. Bypassed, the output is the input, one round trip late."""
    knobs = tmp_path / "squashed.csv"
    knobs.write_text("time_s," + ",".join(s.name for s in specs) + "\n0," +
                     ",".join(str(SQUASHED.get(s.name, s.default)) for s in specs) + "\n")
    x = sine()
    with FakeCard(jack_server.name, x, record_s=20) as card:
        pedal = Pedal(["--bundle", str(bundle_path), "--capture", "jackcap", "--playback", "jackplay",
                       "--period", str(PERIOD), "--knobs", str(knobs), "--priority", "60"],
                      jack_env(jack_server, asoundrc), tmp_path)
        try:
            st = pedal.wait_settled()
            latency = st["latency_frames"]
            judged, dry_checked = [], False
            for turn, on in enumerate([True, False, True, False, True, False]):
                time.sleep(0.3)
                x0, t_change = pedal.status()["xruns"], card.pos
                assert pedal.command("bypass " + ("on" if on else "off")) == {"ok": True, "bypassed": on}
                time.sleep(0.6)
                st = pedal.status()
                assert st["bypassed"] is on and st["mix"] == (0.0 if on else 1.0)
                r = judge_change(card.recording, t_change)
                if not clean(card, r["window"], x0, st["xruns"]):
                    continue
                assert r["steady"], f"toggle {turn}: output not steady before/after: {r}"
                judged.append(r)
                if on and not dry_checked:  # bypassed = the input itself, exactly, one round trip late
                    a, b = r["window"][1] - 2 * CYCLE, r["window"][1]
                    src = np.arange(a - latency, b - latency) % len(x)
                    np.testing.assert_array_equal(card.recording[a:b], x[src])
                    dry_checked = True
                if len(judged) >= 2 and dry_checked:
                    break
        finally:
            log = pedal.stop()
    assert judged and dry_checked, f"every toggle overlapped an xrun (card xruns at {card.xrun_frames}):\n{log}"
    for r in judged:
        assert_click_free(r, "bypass toggle", "bypass clicked")


def click_latencies(rec, every, start, end, level=0.25):
    """(input click frame, round trip in frames) for every click that came back between start and end."""
    peaks = np.flatnonzero(rec[start:end] > level) + start
    return [(int(k - k % every), int(k % every)) for k in peaks]


@pytest.mark.parametrize("periods", [2, 3])
def test_round_trip_latency_is_periods_times_period_for_every_click(jack_server, asoundrc, tmp_path, bundle_path,
                                                                     periods):
    """A click every 50 ms through card -> ALSA -> daemon (model on) -> ALSA -> card. The model's
    64-sample latency is its hop's buffering, which the period (a whole number of hops) already
    holds, so it adds nothing: the round trip is the ALSA periods and nothing else. Clicks near
    an xrun (the machine's stalls) are left out; every other one must be exactly on time."""
    m = load_bundle(bundle_path).manifest
    every = 2400
    with FakeCard(jack_server.name, click_train(every), record_s=20) as card:
        pedal = Pedal(["--bundle", str(bundle_path), "--capture", "jackcap", "--playback", "jackplay",
                       "--period", str(PERIOD), "--periods", str(periods), "--priority", "60"],
                      jack_env(jack_server, asoundrc), tmp_path)
        try:
            st = pedal.wait_settled()
            start = card.pos
            brackets = watch(pedal, card, 1.5)
            end = card.pos
        finally:
            log = pedal.stop()
    expected = periods * PERIOD + max(0, m.latency_samples - m.hop)
    assert st["latency_frames"] == expected  # what the daemon says ...
    zones = xrun_zones(card, brackets)
    got = [(c, lat) for c, lat in click_latencies(card.recording, every, start + every, end - every)
           if outside(c, zones)]
    print(f"periods {periods}: {len(got)} clicks judged, round trips {sorted({lat for _, lat in got})} frames; "
          f"xruns: {len(brackets)} on the ALSA side, {len(card.xrun_frames)} on the JACK side")
    assert len(got) >= 15, f"too few clicks away from xruns ({len(got)}):\n{log}"
    assert {lat for _, lat in got} == {expected}, f"round trips seen: {sorted({lat for _, lat in got})}"  # ... is so


def test_a_stall_gives_counted_logged_xruns_and_the_sound_comes_back_with_the_same_latency(
        jack_server, asoundrc, tmp_path, bundle_path):
    """The audio thread sleeps 50 ms in its loop (a test hook: the box was late for 19 periods).
    Whole-process stalls (SIGSTOP) freeze the ALSA plugin's JACK clients too, so ALSA sees no
    xrun at all: the daemon's own thread being late is the case that matters."""
    every = 2400
    with FakeCard(jack_server.name, click_train(every), record_s=20) as card:
        pedal = Pedal(["--bundle", str(bundle_path), "--capture", "jackcap", "--playback", "jackplay",
                       "--period", str(PERIOD), "--priority", "60"],
                      {**jack_env(jack_server, asoundrc), "PEDAL_TEST_HOOKS": "1"}, tmp_path)
        try:
            st0 = pedal.wait_settled()
            t0 = card.pos
            brackets = watch(pedal, card, 0.5)
            t_stall = card.pos
            assert pedal.command("stall 50")["ok"]
            time.sleep(0.15)
            st1 = pedal.status()
            t_back = card.pos
            brackets += watch(pedal, card, 1.0)
            t_end, st2 = card.pos, pedal.status()
        finally:
            log = pedal.stop()
    assert st1["xruns"] >= st0["xruns"] + 1, (st0, st1)  # the stall was counted ...
    xrun_lines = [line for line in log.splitlines() if "WARNING xrun:" in line]
    assert xrun_lines and "both streams restarted" in xrun_lines[-1]  # ... and logged (by the monitor thread)
    assert st2["periods"] > st1["periods"] + 300  # and it kept playing
    zones = xrun_zones(card, brackets)
    before = [(c, lat) for c, lat in click_latencies(card.recording, every, t0 + every, t_stall) if outside(c, zones)]
    after = [(c, lat) for c, lat in click_latencies(card.recording, every, t_back, t_end - every)
             if outside(c, zones)]
    print(f"stall: {st1['xruns'] - st0['xruns']} xrun(s) counted; round trip before {sorted({l for _, l in before})}, "
          f"after {sorted({l for _, l in after})} frames ({len(after)} clicks after)")
    assert {lat for _, lat in before} == {2 * PERIOD}
    assert {lat for _, lat in after} == {2 * PERIOD}, f"round trip after the stall: {sorted({l for _, l in after})}"
    # every click played after the stall came back (except near another xrun): the sound is back
    expected = {c for c in range(0, t_end, every) if t_back <= c and c + 2 * PERIOD < t_end - every and outside(c, zones)}
    assert len(expected) >= 10 and expected <= {c for c, _ in after}, "clicks missing after the stall"
