"""The daemon's faults and operations, run in this process against an in-memory sound card that
keeps real time (memcard.MemCard: the test double of AlsaDuplex) and the real TFLite engine.

Each fault shows that the sound goes on (or, with the card gone, comes back) and that the
daemon recovers, with numbers; the JACK tests (test_jack*.py) show the same through real ALSA.
"""
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

import device.daemon as daemon_mod
from device.bundle import load_bundle
from device.daemon import AutomationKnobs, Daemon, query_status, sd_notify
from device.engine import Engine
from device.switches import StatusLED

from .conftest import REPO, needs_real_time
from .helpers import max_step, wait_for
from .memcard import MemCard

SR = 48000
P = 256  # the in-memory card's period: 5.3 ms (a slower pace keeps these threads light on a busy machine)
SQUASHED = dict(threshold_db=-50.0, ratio=2.0, attack_ms=2.0, release_ms=100.0)  # wet far from dry


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path)


def sine(seconds=1.0, level=0.5):
    n = int(seconds * SR) // 256 * 256
    return (level * np.sin(2 * np.pi * 187.5 * np.arange(n) / SR)).astype(np.float32)


def knob_row(bundle, **values):
    return np.array([k.to_normalized(values.get(k.name, k.default)) for k in bundle.manifest.knobs], np.float32)


def make_daemon(bundle, card, led=None, sock=None, **kw):
    engine = Engine(bundle)
    row = knob_row(bundle, **SQUASHED)
    knobs = AutomationKnobs(row[None, :])
    engine.prime(row)
    return Daemon(engine, card, knobs, sock, led=led, **kw)


@contextlib.contextmanager
def running(daemon):
    """The daemon's two threads, as `python -m device run` starts them."""
    daemon.running = True
    monitor = threading.Thread(target=daemon.monitor, kwargs={"interval_s": 0.02}, daemon=True)
    audio = threading.Thread(target=daemon.run, daemon=True)
    monitor.start()
    audio.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        audio.join(5)
        monitor.join(5)






def played(card, k0, k1):
    """The input periods k0..k1 the daemon processed (a late loop can skip one), what it played for them."""
    ks = [k for k in range(k0, k1) if card.written[k]]
    x = np.concatenate([card.input(k) for k in ks])
    y = np.concatenate([card.out[k * P:(k + 1) * P] for k in ks])
    return x, y


def reference(bundle, x):
    """What a fresh engine makes of ``x`` with the test's knobs."""
    rows = np.tile(knob_row(bundle, **SQUASHED), (len(x) // 64, 1))
    return Engine(bundle).render(x, rows)


# --- the sound card goes away --------------------------------------------------------------------

def test_a_lost_sound_card_is_retried_with_back_off_and_the_sound_fades_back_in(bundle, caplog):
    caplog.set_level(logging.INFO, logger="pedal")
    card = MemCard(sine(), period=P)
    d = make_daemon(bundle, card)
    with running(d):
        wait_for(lambda: d.periods_done > 60, what="audio")
        k_before = card.k
        card.lose(refusals=3)  # unplugged; the first three reopen attempts find nothing
        wait_for(lambda: d.device_back == 1, what="the card to come back")
        k_lost = int(np.flatnonzero(~card.written[k_before:card.k])[0]) + k_before
        k_back = card.k
        wait_for(lambda: card.k > k_back + 100, what="audio after the card came back")
        st = d.status()
    assert d.device_lost == 1 and st["device_lost"] == 1 and not st["device_down"]
    assert len(card.reopen_times) == 4  # 3 refused, then it answered
    waits = np.diff(card.reopen_times)
    print(f"reopen attempts {len(card.reopen_times)}, waits between them {np.round(waits * 1000)} ms")
    assert np.all(waits[1:] / waits[:-1] > 1.5)  # back-off: each wait about twice the last (50, 100, 200, 400 ms)
    # while the card was gone nothing was written; then it plays again
    k_resume = int(np.flatnonzero(card.written[k_lost:])[0]) + k_lost
    assert k_resume > k_lost + 10
    x, out = played(card, k_resume, k_resume + 60)
    # ... exactly the model's output on the new input, fresh state, faded in over 10 ms (480 samples)
    ref = reference(bundle, x)
    fade = np.minimum(np.arange(1, len(ref) + 1) / 480, 1.0).astype(np.float32)
    np.testing.assert_allclose(out, ref * fade, atol=1e-6)
    assert max_step(out[:2 * P]) <= max_step(ref) + 1e-4  # no click where the sound comes back
    text = caplog.text
    assert "ALSA device lost: capture 'mem': No such device" in text
    assert "ALSA device still missing after 1 tries" in text and "ALSA device back after" in text


def test_a_hung_sound_card_starves_the_systemd_watchdog_and_a_live_one_feeds_it(bundle, tmp_path):
    """READY=1 once audio flows, WATCHDOG=1 every 0.5 s while the audio loop turns; a read that
    never returns (a dead driver) stops the pings, so systemd (WatchdogSec=5) restarts the daemon."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    got = []

    def listen():
        while not stop.is_set():
            try:
                got.append((time.monotonic(), sock.recv(4096).decode(), d.periods_done))
            except socket.timeout:
                pass
    stop = threading.Event()
    card = MemCard(sine(), period=P)
    d = make_daemon(bundle, card)
    os.environ["NOTIFY_SOCKET"] = path
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        with running(d):
            time.sleep(1.5)
            card.hang_s = 3.5
            t_hang = time.monotonic()
            time.sleep(5.0)
    finally:
        stop.set()
        listener.join()
        sock.close()
        del os.environ["NOTIFY_SOCKET"]
    assert got[0][1].startswith("READY=1\nSTATUS=playing comp4") and got[0][2] > 0  # after the first period
    pings = np.array([t for t, msg, _ in got if msg == "WATCHDOG=1"])
    gaps = np.diff(pings)
    during = gaps[(pings[1:] > t_hang) & (pings[:-1] < t_hang + 3.5)]
    print(f"{len(pings)} watchdog pings; largest gap while alive {gaps[pings[1:] < t_hang].max():.2f} s, "
          f"while the card hung {during.max():.2f} s")
    assert gaps[pings[1:] < t_hang].max() < 1.0  # alive: fed at least every second
    assert during.max() > 2.5  # hung: starved (systemd would restart us after WatchdogSec)
    assert pings[-1] > t_hang + 3.6  # and fed again once the loop turns


def test_sd_notify_speaks_to_abstract_sockets_too(tmp_path, monkeypatch):
    name = f"pedaltest-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert sd_notify("WATCHDOG=1")
    assert sock.recv(100) == b"WATCHDOG=1"
    sock.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")  # not under systemd: nothing to do


# --- bundles ---------------------------------------------------------------------------------------

@pytest.fixture
def pins():
    Device.pin_factory = MockFactory(pin_class=MockPWMPin)
    yield Device.pin_factory
    Device.pin_factory.reset()


def broken_bundles(bundle_path, tmp_path):
    truncated = tmp_path / "truncated.pedal"
    truncated.write_bytes(bundle_path.read_bytes()[:100_000])
    tampered_dir = tmp_path / "tampered"
    with tarfile.open(bundle_path) as tar:  # a bundle we made ourselves (and no filter=: bookworm's 3.11.2 lacks it)
        tar.extractall(tampered_dir)
    root = next(p.parent for p in tampered_dir.rglob("manifest.json"))
    model = next(root.glob("step_float32.tflite"))
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte: the checksum no longer matches
    model.write_bytes(bytes(data))
    return {"missing": tmp_path / "nope.pedal", "truncated": truncated, "tampered": root}


def test_a_bad_or_missing_bundle_is_refused_the_current_one_plays_on_and_the_led_blinks(
        bundle, bundle_path, tmp_path, pins, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="pedal")
    monkeypatch.setattr(daemon_mod, "FAULT_LED_S", 1.0)
    led = StatusLED(18, blink_hz=10.0)
    card = MemCard(sine(), period=P)
    d = make_daemon(bundle, card, led=led)
    engine = d.engine
    with running(d):
        wait_for(lambda: d.periods_done > 20, what="audio")
        k0 = card.k
        for what, path in broken_bundles(bundle_path, tmp_path).items():
            d.load_async(path).join()
            assert d.last_load["ok"] is False, what
            assert d.pending is None and d.engine is engine, what  # refused; the current engine plays on
            wait_for(lambda: led.state == "fault", 2.0, "the LED to show the fault")
        pins.pin(18).clear_states()
        time.sleep(0.3)
        blinks = [s.state for s in pins.pin(18).states]
        wait_for(lambda: led.state == "on", 3.0, "the LED back to on")
        k1 = card.k
    # not one sample differed from the model's output, refusals or not
    x, out = played(card, 0, k1)
    np.testing.assert_allclose(out, reference(bundle, x), atol=1e-6)
    assert k1 - k0 > 100  # ... over more than half a second of refusals
    assert blinks.count(1.0) >= 2 and blinks.count(0.0) >= 2  # it blinked
    refusals = [r.message for r in caplog.records if "bundle refused" in r.message]
    print("\n".join(refusals))
    assert len(refusals) == 3
    assert "no such bundle" in refusals[0]
    assert "checksum" in refusals[2].lower() or "sha-256" in refusals[2].lower()
    led.close()


@needs_real_time  # a real-time card, or a poller given a fixed time
def test_a_good_bundle_hot_swaps_with_a_crossfade(bundle, bundle_path):
    card = MemCard(sine(), period=P)
    d = make_daemon(bundle, card)
    with running(d):
        wait_for(lambda: d.periods_done > 100, what="audio")
        k0 = card.k
        d.load_async(bundle_path).join()
        wait_for(lambda: d.swaps == 1 and d.engine.mix == 1.0, what="the swap")
        k_swapped = card.k
        wait_for(lambda: card.k > k_swapped + 100, what="audio after the swap")
        k1 = card.k
    assert d.last_load["ok"] and d.swaps == 1
    out = card.out[k0 * P:k1 * P]
    wet = card.out[(k1 - 40) * P:k1 * P]
    dry = np.concatenate([card.input(k) for k in range(k1 - 40, k1)])
    fresh = reference(bundle, played(card, k_swapped - 4, k_swapped + 20)[0])  # a new model starting up, alone
    threshold = 1.05 * max(max_step(wet), max_step(dry), max_step(fresh)) + 1e-4
    gap = float(np.abs(wet - dry).max())
    print(f"hot swap: largest step {max_step(out):.4f}, allowed {threshold:.4f}, a hard switch would jump {gap:.4f}")
    assert gap > 2 * threshold
    assert max_step(out) <= threshold


# --- the model misbehaves -----------------------------------------------------------------------------

class NaNAt:
    """The real runner, but hop ``n`` returns NaN (a model blowing up); notes the card's sample then."""

    def __init__(self, runner, n, card):
        self.runner, self.n, self.i, self.card = runner, n, 0, card
        self.hop = runner.hop
        self.nan = np.full(runner.hop, np.nan, np.float32)
        self.at_sample = None

    def reset(self):
        self.runner.reset()

    def step(self, audio, knobs):
        self.i += 1
        y = self.runner.step(audio, knobs)
        if self.i == self.n:
            self.at_sample = self.card.k * P + (self.n - 1) % (P // self.hop) * self.hop
            return self.nan
        return y


@needs_real_time  # a real-time card, or a poller given a fixed time
def test_nan_out_of_the_model_goes_dry_without_a_burst_and_the_daemon_recovers(bundle, pins, caplog):
    caplog.set_level(logging.INFO, logger="pedal")
    led = StatusLED(18)
    card = MemCard(sine(), period=P)
    d = make_daemon(bundle, card, led=led)
    d.engine.runner = nan = NaNAt(d.engine.runner, 400, card)
    led_states = []
    with running(d):
        wait_for(lambda: d.engine.fault_hops > 0, what="the fault")
        wait_for(lambda: led.state == "fault", 1.0, "the LED")
        led_states.append(led.state)
        assert d.status()["in_fault"]
        wait_for(lambda: d.engine.fault_hops == 0 and d.engine.mix == 1.0, 5.0, "recovery")
        wait_for(lambda: led.state == "on", 1.0, "the LED back on")
        k1 = card.k
    out = card.out[:k1 * P]
    x = np.concatenate([card.input(k) for k in range(k1)])  # out[i] was played for x[i] (where written)
    assert np.isfinite(out).all() and np.abs(out).max() <= np.abs(x).max() + 1e-6  # no NaN, no burst
    fault = nan.at_sample
    # 10 ms after the fault the output is the dry input, until the model is trusted again (0.25 s)
    span = slice(fault + 480 + 64, fault + int(0.2 * SR))
    written = np.repeat(card.written[:k1], P)[span]
    np.testing.assert_allclose(out[span][written], x[span][written], atol=1e-6)
    wet = [card.out[fault - 40 * P:fault - P], card.out[(k1 - 40) * P:k1 * P]]  # before, and after recovery
    threshold = 1.05 * max(max_step(wet[0]), max_step(wet[1]), max_step(x)) + 1e-4
    print(f"NaN: largest step from the fault on {max_step(out[fault - P:]):.4f}, allowed {threshold:.4f}")
    assert max_step(out[fault - P:]) <= threshold  # no click either way
    assert "engine: model output not finite or out of range: dry, state reset" in caplog.text
    assert "engine: model back: crossfade to wet" in caplog.text
    assert d.engine.counts["nonfinite"] == 1
    led.close()


# --- the status socket and the status command ---------------------------------------------------

def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "device", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_the_status_command_talks_to_a_running_daemon(bundle, bundle_path, tmp_path):
    sock = f"/tmp/pd-{os.getpid()}-status.sock"
    card = MemCard(sine(), period=P)
    d = make_daemon(bundle, card, sock=sock)
    try:
        with running(d):
            wait_for(lambda: os.path.exists(sock) and d.periods_done > 20, what="the socket")
            r = run_cli("status", "--socket", sock)
            assert r.returncode == 0, r.stderr
            print(r.stdout)
            assert "effect    comp4" in r.stdout and "round trip 10.67 ms (512 frames)" in r.stdout
            st = json.loads(run_cli("status", "--socket", sock, "--json").stdout)
            assert st["periods"] > 20 and st["xruns"] == 0 and st["knobs"]["threshold_db"] == pytest.approx(-50.0)
            r = run_cli("status", "--socket", sock, "--bypass", "on")
            assert json.loads(r.stdout) == {"ok": True, "bypassed": True} and d.user_bypass
            assert query_status(sock, "bypass toggle") == {"ok": True, "bypassed": False} and not d.user_bypass
            assert query_status(sock, "sparkle")["ok"] is False
            assert query_status(sock, "stall 50")["ok"] is False  # test hooks are off unless PEDAL_TEST_HOOKS=1
            r = run_cli("status", "--socket", sock, "--load", str(tmp_path / "nope.pedal"))
            assert r.returncode == 0 and json.loads(r.stdout)["loading"].endswith("nope.pedal")
            wait_for(lambda: d.last_load is not None, what="the refusal")
            r = run_cli("status", "--socket", sock)
            assert "last load REFUSED" in r.stdout and "no such bundle" in r.stdout
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # a client that says nothing gets status
                s.connect(sock)
                s.shutdown(socket.SHUT_WR)
                assert json.loads(s.makefile().readline())["effect"] == "comp4"
    finally:
        assert not os.path.exists(sock)  # removed when the daemon stops
    r = run_cli("status", "--socket", sock)
    assert r.returncode == 1 and "no daemon answers" in r.stderr


HELPERS_SCRIPT = """
import os, threading, time
import numpy  # noqa: F401  (its OpenBLAS pool starts here, under the process's SCHED_FIFO 70)
stop = threading.Event()
early = threading.Thread(target=stop.wait)  # a thread some library started before the daemon ran
early.start()
from device.daemon import helpers_priority
had, sched = helpers_priority(70)
late = threading.Thread(target=stop.wait)  # a helper the daemon starts afterwards
late.start()
me = threading.get_native_id()
rows = []
for tid in map(int, os.listdir("/proc/self/task")):
    rows.append((tid == me, os.sched_getscheduler(tid) == os.SCHED_FIFO, os.sched_getparam(tid).sched_priority))
stop.set()
print(had, sched, "|", rows)
"""


def test_threads_started_before_the_daemon_do_not_keep_the_audio_threads_priority():
    """systemd starts the whole process at SCHED_FIFO 70 (pedal.service); threads started at import
    (numpy's OpenBLAS pool: in a booted container, one sat at FIFO 70 beside the audio thread) and
    the helpers started after helpers_priority all end at the helpers' FIFO 1."""
    try:
        subprocess.run(["chrt", "-f", "70", "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("SCHED_FIFO 70 cannot be had here (chrt -f 70 refused)")
    out = subprocess.run(["chrt", "-f", "70", sys.executable, "-c", HELPERS_SCRIPT], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    had, rows = out.split("|")
    assert had.split()[0] == "70"
    rows = eval(rows)  # noqa: S307  (our own subprocess's repr of a list of tuples)
    assert len(rows) >= 3
    assert all(fifo and prio == 1 for main, fifo, prio in rows), rows
