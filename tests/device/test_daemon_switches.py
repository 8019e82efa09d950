"""The footswitch, the LED and the pots inside the running daemon, end to end.

Each test writes a pedal.toml and runs ``python -m device run --config`` (``device.__main__.main``)
in this process, so the Footswitch, StatusLED, KnobPoller, bundles_dir and Daemon are wired exactly
as on the box. Only the hardware is stood in for: gpiozero's MockFactory pins (PWM, so the LED
can dim and blink), an emulated ADS1115 on a fake I2C bus (test_pots.FakeADS1115Bus, through the
real ADS1115Pot), and the in-memory sound card (memcard.MemCard) instead of AlsaDuplex.

The output is checked sample for sample against the engine run offline on what the card played
in, and for clicks: across every crossfade the largest sample-to-sample step stays within that of
the signals on either side.
"""
import contextlib
import logging
import signal
import sys
import threading
import time

import numpy as np
import pytest
import smbus2
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

import device.audio as audio_mod
import device.daemon as daemon_mod
import device.knobsetup as knobsetup
from device.__main__ import main
from device.bundle import load_bundle
from device.engine import Engine
from device.pots import ADS1115Pot

from .conftest import needs_real_time
from .helpers import max_step, wait_for
from .memcard import MemCard
from .test_pots import FakeADS1115Bus

SR, P = 48000, 256  # rate, the card's period (audio.period_frames)
SWITCH_PIN, LED_PIN = 17, 18
LONG_PRESS_S = 0.3
SQUASHED = dict(threshold_db=-50.0, ratio=2.0, attack_ms=2.0, release_ms=100.0)  # wet far from dry
KNOBS = ("threshold_db", "ratio", "attack_ms", "release_ms")  # ADS1115 AIN0..AIN3

CONFIG = """
[audio]
capture_device = "mem"
playback_device = "mem"
period_frames = {period}
periods = 2
dry_crossfade_ms = 10.0

[model]
bundle = "{bundle}"
bundles_dir = "{bundles_dir}"

[knobs]
source = "ads1115"
poll_hz = 100
smoothing_ms = 0.0
{pots}
[footswitch]
enabled = true
gpio = {switch}
long_press_s = {long_press}

[led]
enabled = true
gpio = {led}

[realtime]
priority = 0
lock_memory = false

[status]
socket = ""

[watchdog]
enabled = false
"""


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path)


@pytest.fixture
def pins():
    Device.pin_factory = MockFactory(pin_class=MockPWMPin)
    yield Device.pin_factory
    Device.pin_factory.reset()


def sine(seconds=1.0, level=0.5):
    n = int(seconds * SR) // P * P
    return (level * np.sin(2 * np.pi * 187.5 * np.arange(n) / SR)).astype(np.float32)






class Pedal:
    """A running ``python -m device run --config`` and its stand-in hardware."""

    def __init__(self, daemon, card, bus, pins):
        self.d, self.card, self.bus, self.pins = daemon, card, bus, pins
        self.switch, self.led_pin = pins.pin(SWITCH_PIN), pins.pin(LED_PIN)

    @property
    def led(self):
        return self.d.led

    def stomp(self, hold_s=0.08):
        """A short press: the switch to ground for ``hold_s``, then released (bypass toggles on release).
        -> (card.k before the release, card.k after it)."""
        self.switch.drive_low()
        time.sleep(hold_s)
        k0 = self.card.k
        self.switch.drive_high()
        return k0, self.card.k

    def hold(self, until, what):
        """A long press: held until ``until()`` (the daemon acted on it), then released."""
        k0 = self.card.k
        self.switch.drive_low()
        wait_for(until, 3.0, what)
        time.sleep(0.05)
        self.switch.drive_high()
        return k0

    def periods(self, k0, k1):
        """Input periods k0..k1 that the daemon processed (a late loop can skip one)."""
        return [k for k in range(k0, k1) if self.card.written[k]]

    def x(self, ks):
        return np.concatenate([self.card.input(k) for k in ks])

    def out(self, ks):
        return np.concatenate([self.card.out[k * P:(k + 1) * P] for k in ks])

    def led_blinks(self, seconds=0.8):
        self.led_pin.clear_states()
        time.sleep(seconds)
        return [s.state for s in self.led_pin.states[1:]]


@contextlib.contextmanager
def pedal(tmp_path, monkeypatch, pins, bundle_path, bundles=None):
    """Write a pedal.toml, start `python -m device run --config` on a thread, yield a Pedal once
    audio flows; stop it (as SIGTERM would) and check it shut down cleanly."""
    bundles_dir = tmp_path / "bundles"
    bundles_dir.mkdir()
    for name, make in (bundles or {"1-tiny.pedal": "link"}).items():
        if make == "link":
            (bundles_dir / name).symlink_to(bundle_path.resolve())
        else:
            (bundles_dir / name).write_bytes(make)
    first = sorted(bundles_dir.glob("*.pedal"))[0]
    pots = "".join(f"\n[[knobs.pot]]\nknob = \"{name}\"\nchannel = {ch}\n" for ch, name in enumerate(KNOBS))
    cfg = tmp_path / "pedal.toml"
    cfg.write_text(CONFIG.format(period=P, bundle=first, bundles_dir=bundles_dir, pots=pots, switch=SWITCH_PIN,
                                 long_press=LONG_PRESS_S, led=LED_PIN))

    spec = {k.name: k for k in load_bundle(bundle_path).manifest.knobs}
    bus = FakeADS1115Bus()
    bus.volts = [spec[name].to_normalized(SQUASHED[name]) * 3.3 for name in KNOBS]
    want = np.array([ADS1115Pot(bus, ch).read() for ch in range(4)], np.float32)  # calibration is 0..1: raw = position
    monkeypatch.setattr(smbus2, "SMBus", lambda n: bus)

    card = MemCard(sine(), period=P, seconds=20.0)
    opened = []

    def open_card(*args):
        opened.append(args)
        return card
    monkeypatch.setattr(audio_mod, "AlsaDuplex", open_card)

    def start_poller(config, specs):
        # cmd_run primes the engine with the positions right after starting the poller: wait for
        # its first reading, so the whole run has one knob row and an offline render to compare with
        poller = real_start_poller(config, specs)
        wait_for(lambda: np.array_equal(poller.positions, want), 5.0, "the first pot readings")
        return poller
    real_start_poller = knobsetup.start_poller
    monkeypatch.setattr(knobsetup, "start_poller", start_poller)

    made = []

    class Daemon(daemon_mod.Daemon):  # the real one; remembered so the test can look inside
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)
    monkeypatch.setattr(daemon_mod, "Daemon", Daemon)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # cmd_run runs off the main thread here

    switch_interval, root = sys.getswitchinterval(), logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    result = {}

    def run():
        try:
            result["rc"] = main(["run", "--config", str(cfg), "--overrun-budget", "0"])  # no dry fallback on a busy box
        except BaseException as e:  # noqa: B036 - reported by the test below
            result["error"] = e
    thread = threading.Thread(target=run, name="pedal-main", daemon=True)
    thread.start()
    try:
        wait_for(lambda: (made and made[0].periods_done > 40) or not thread.is_alive(), 30.0, "audio")
        assert made and thread.is_alive(), f"the daemon did not start: {result}"
        d = made[0]
        assert opened[0][1:4] == ("mem", SR, P)  # the config's [audio] reached the card
        assert d.led.state == "on" and pins.pin(LED_PIN).state == 1.0
        assert d.bundles == sorted(bundles_dir.glob("*.pedal")) and d.bundle_index == 0
        yield Pedal(d, card, bus, pins)
    finally:
        if made:
            made[0].stop()
        thread.join(10.0)
        sys.setswitchinterval(switch_interval)
        root.setLevel(root_level)
        for h in root.handlers[:]:
            if h not in root_handlers:
                root.removeHandler(h)
    assert not thread.is_alive() and result == {"rc": 0}, result
    assert made[0].poller._thread is None  # the poller, footswitch, LED and card were closed
    assert made[0].led.led.closed and card.closed >= 1


def wet_dry_threshold(*signals):
    """The largest step a crossfade may make: that of the signals it fades between, and a little."""
    return 1.05 * max(max_step(s) for s in signals) + 1e-4


def render(bundle, x, prime_row, row, ramp_in=False):
    """What a fresh engine (cmd_run's settings) plays for ``x``: primed with ``prime_row``, then fed
    ``row`` every hop; ``ramp_in``: started dry and fading in, as a hot-swapped engine starts."""
    e = Engine(bundle, crossfade_ms=10.0)
    e.bypassed = ramp_in
    e.prime(prime_row)
    e.set_bypass(False)
    return np.concatenate([e.process_hop(x[i:i + e.hop], row).copy() for i in range(0, len(x), e.hop)])


# --- 1. a stomp: bypass and back -----------------------------------------------------------------

@needs_real_time  # a real-time card, or a poller given a fixed time
def test_a_stomp_crossfades_to_the_dry_input_and_a_second_one_back_to_the_model(
        bundle, bundle_path, tmp_path, monkeypatch, pins, caplog):
    caplog.set_level(logging.INFO)
    with pedal(tmp_path, monkeypatch, pins, bundle_path) as p:
        d, engine = p.d, p.d.engine
        row = p.d.poller.positions.copy()
        k_on, k_on_after = p.stomp()
        assert d.user_bypass and engine.bypassed
        wait_for(lambda: p.led.state == "bypass", 0.5, "the LED to dim")  # (the monitor may repaint once)
        assert p.led_pin.state == pytest.approx(0.1)
        wait_for(lambda: engine.mix == 0.0, 2.0, "the crossfade to dry")
        wait_for(lambda: p.card.k > k_on_after + 60, what="bypassed audio")
        k_off, k_off_after = p.stomp()
        assert not d.user_bypass and not engine.bypassed
        wait_for(lambda: p.led.state == "on", 0.5, "the LED on again")
        assert p.led_pin.state == 1.0
        wait_for(lambda: engine.mix == 1.0, 2.0, "the crossfade back to the model")
        wait_for(lambda: p.card.k > k_off_after + 60, what="audio after the second stomp")
        k_end = p.card.k
        assert p.led.state == "on"  # the monitor keeps it so
    ks = p.periods(0, k_end)
    x, out = p.x(ks), p.out(ks)
    ref = render(bundle, x, row, row)  # the model, never bypassed (it keeps running under bypass)
    nth = np.repeat(np.arange(len(ks)), P)  # each sample's period, counted in periods played
    first = lambda k: int(np.searchsorted(ks, k))  # noqa: E731 - the first period played from input period k on
    # A stomp acts on the first hop after its release: in the period being played (card.k) or the
    # next; the 10 ms (480 samples) crossfade is over within the one after that.
    before = nth < first(k_on)
    bypassed = (nth >= first(k_on_after) + 3) & (nth < first(k_off))
    after = nth >= first(k_off_after) + 3
    assert bypassed.sum() > 50 * P and after.sum() > 50 * P
    np.testing.assert_allclose(out[before], ref[before], atol=1e-6)  # the model, until the stomp
    np.testing.assert_array_equal(out[bypassed], x[bypassed])  # then exactly the dry input
    np.testing.assert_allclose(out[after], ref[after], atol=1e-6)  # then the model again, where it is now
    threshold = wet_dry_threshold(ref, x)
    gap = float(np.abs(ref - x).max())
    print(f"bypass: largest step {max_step(out):.4f}, allowed {threshold:.4f}, a hard switch would jump {gap:.4f}")
    assert gap > 2 * threshold  # wet and dry differ: switching without a crossfade would click
    assert max_step(out) <= threshold  # both crossfades are click-free
    assert caplog.text.count("engine: bypass on") == 1 and caplog.text.count("engine: bypass off") == 1


# --- 2. a long press: the next bundle of bundles_dir ---------------------------------------------

def test_a_long_press_swaps_to_the_next_bundle_and_a_broken_one_is_refused_with_the_led_blinking(
        bundle, bundle_path, tmp_path, monkeypatch, pins, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(daemon_mod, "FAULT_LED_S", 1.0)
    bundles = {"1-tiny.pedal": "link",  # the configured bundle (the test bundle, by a link)
               "2-tiny-copy.pedal": bundle_path.read_bytes(),  # the same model, another file
               "3-broken.pedal": bundle_path.read_bytes()[:100_000]}  # cut short in the copy
    with pedal(tmp_path, monkeypatch, pins, bundle_path, bundles) as p:
        d, old = p.d, p.d.engine
        row = d.poller.positions.copy()
        p.hold(lambda: d.bundle_index == 1, "the long press")  # fires while held, not on release
        wait_for(lambda: d.swaps == 1 and d.engine.mix == 1.0, 15.0, "the hot swap")
        new = d.engine
        assert new is not old and new.bundle.source.name == "2-tiny-copy.pedal"
        assert d.last_load["ok"] and not d.user_bypass  # a long press is no stomp
        assert p.led.state == "on"
        k_swapped = p.card.k
        wait_for(lambda: p.card.k > k_swapped + 60, what="audio after the swap")

        p.hold(lambda: d.bundle_index == 2, "the second long press")
        wait_for(lambda: d.last_load["ok"] is False, 15.0, "the refusal")
        assert d.engine is new and d.pending is None and d.swaps == 1  # the current bundle plays on
        assert "3-broken.pedal" in d.last_load["path"]
        wait_for(lambda: p.led.state == "fault", 1.0, "the LED to show the fault")
        assert d.status()["led"] == "fault"
        blinks = p.led_blinks()  # 4 Hz
        wait_for(lambda: p.led.state == "on", 3.0, "the LED back on (FAULT_LED_S)")
        k_end = p.card.k
        assert d.engine is new and not d.user_bypass
    assert blinks.count(1.0) >= 2 and blinks.count(0.0) >= 2, blinks
    ks = p.periods(0, k_end)
    n_old = old.counts["hops"] // (P // old.hop)  # periods the first engine played: the rest are the new one's
    k_swap = ks[n_old]
    x_old, out_old = p.x(ks[:n_old]), p.out(ks[:n_old])
    x_new, out_new = p.x(ks[n_old:]), p.out(ks[n_old:])
    # from the swap to the end, refusal included: exactly a fresh engine of the new bundle, fading in
    ref_new = render(bundle, x_new, old.knobs.copy(), row, ramp_in=True)
    np.testing.assert_allclose(out_new, ref_new, atol=1e-5)
    assert np.abs(out_new[P * 40:] - x_new[P * 40:]).max() > 0.05  # the model, not dry
    # the old engine faded out to dry before the swap, without a click
    ref_old = render(bundle, x_old, row, row)
    span = slice(len(x_old) - 40 * P, len(x_old) + 60 * P)
    out, x, ref = (np.concatenate(pair)[span] for pair in ((out_old, out_new), (x_old, x_new), (ref_old, ref_new)))
    fresh = render(bundle, x_new[:20 * P], row, row)  # the new model starting up, alone
    threshold = wet_dry_threshold(out_old[:-40 * P], out_new[-40 * P:], x, fresh)
    gap = float(np.abs(out_new[-40 * P:] - x_new[-40 * P:]).max())
    print(f"long press: swapped at period {k_swap}; largest step {max_step(out):.4f}, allowed {threshold:.4f}, "
          f"a hard switch would jump {gap:.4f}")
    assert gap > 2 * threshold
    assert max_step(out) <= threshold
    refusals = [r.message for r in caplog.records if "bundle refused" in r.message]
    assert len(refusals) == 1 and "3-broken.pedal" in refusals[0] and "not a readable bundle archive" in refusals[0]
    assert any("2-tiny-copy.pedal passed its self-check" in r.message for r in caplog.records)


# --- 3. a pot that fails ---------------------------------------------------------------------------

@needs_real_time  # the in-memory card must keep pace: under qemu a third of the periods came late
def test_an_unplugged_knob_adc_holds_the_knobs_blinks_the_led_and_recovers(
        bundle, bundle_path, tmp_path, monkeypatch, pins, caplog):
    caplog.set_level(logging.INFO)
    with pedal(tmp_path, monkeypatch, pins, bundle_path) as p:
        d, poller = p.d, p.d.poller
        row = poller.positions.copy()
        knobs_before = d.status()["knobs"]
        assert knobs_before["threshold_db"] == pytest.approx(-50.0, abs=0.01)
        p.bus.gone = True  # the ADS1115 drops off the bus: every read is OSError 121
        p.bus.volts[0] = 0.5 * 3.3  # ... and the player turns the threshold knob meanwhile
        wait_for(lambda: p.led.state == "fault", 2.0, "the LED to show the fault")
        blinks = p.led_blinks()
        k_fault = p.card.k
        wait_for(lambda: p.card.k > k_fault + 60, what="audio during the fault")
        st = d.status()
        assert st["knobs_in_fault"] == list(KNOBS) and all(n > 0 for n in st["knob_faults"].values())
        assert st["knobs"] == knobs_before and np.array_equal(poller.positions, row)  # last good positions
        assert st["led"] == "fault" and not st["in_fault"]  # the sound is fine: only the knobs are stuck
        k_fix = p.card.k
        p.bus.gone = False  # plugged back in
        wait_for(lambda: not poller.faulty, 3.0, "the pots to work again")  # retried within the 1 s back-off
        wait_for(lambda: p.led.state == "on", 1.0, "the LED back on")
        assert poller.positions[0] == pytest.approx(0.5, abs=1e-4)  # where the knob was turned to
        wait_for(lambda: d.status()["knobs"]["threshold_db"] == pytest.approx(-25.0, abs=0.01), 2.0,
                 "the model to follow the knob")
        k_end = p.card.k
        st = d.status()
        assert st["knobs_in_fault"] == [] and st["led"] == "on"
    assert blinks.count(1.0) >= 2 and blinks.count(0.0) >= 2, blinks
    # the sound never stopped, and until the ADC came back it was the model with the last good knobs
    ks = p.periods(0, k_fix)
    assert len(p.periods(0, k_end)) >= 0.9 * k_end  # played on (a busy box may skip the odd late period)
    np.testing.assert_allclose(p.out(ks), render(bundle, p.x(ks), row, row), atol=1e-6)
    messages = list(poller.messages)
    logged = [r.message for r in caplog.records if r.name == "device.pots"]
    assert messages == logged and len(messages) == 8  # one fault and one recovery per pot, no more
    assert ("knob 'threshold_db': ADS1115Pot(address=0x48, channel=0) failed (OSError(121, 'Remote I/O error')); "
            "holding position 0.000 and retrying") in messages
    assert any(m.startswith("knob 'threshold_db': ADS1115Pot(address=0x48, channel=0) works again after")
               for m in messages)
    assert [r.levelname for r in caplog.records if r.name == "device.pots"].count("WARNING") == 4
