"""Virtual knobs (the web page's) against pots: last mover wins. A knob set from the page holds
while its pot rests, even with the pot's reading jittering inside its deadband; the pot takes over
as soon as it is turned; "knob NAME pot" hands it back at once. Plus the socket commands'
refusals and the level meter's arithmetic."""
import numpy as np
import pytest

from device.knobspec import KnobSpec
from device.pots import KnobPoller, KnobProcessor
from device.remote import level_db

SPECS = [KnobSpec("threshold_db", "dB", -50.0, 0.0, -20.0), KnobSpec("ratio", ":1", 1.5, 10.0, 4.0, "log")]


class Pot:
    def __init__(self, raw):
        self.raw = raw

    def read(self):
        return self.raw


def poller(pot):
    proc = KnobProcessor(SPECS, {"threshold_db": pot}, deadband=0.01, smoothing_ms=0.0, poll_hz=200)
    p = KnobPoller(proc)
    p.poll_once(now=0.0)
    return p


def test_a_virtual_knob_holds_while_the_pot_rests_and_the_pot_wins_once_it_is_turned():
    pot = Pot(0.5)
    p = poller(pot)
    assert p.positions[0] == pytest.approx(0.5)
    p.override(0, 0.9)
    assert p.overridden(0) and p.positions[0] == pytest.approx(0.9)
    for k, jitter in enumerate([0.004, -0.003, 0.009, 0.0]):  # a resting pot's noise, inside the deadband
        pot.raw = 0.5 + jitter
        p.poll_once(now=0.01 * (k + 1))
        assert p.positions[0] == pytest.approx(0.9), "a resting pot took the knob back"
    pot.raw = 0.3  # the player turns the pot: it wins, from where it is
    p.poll_once(now=0.1)
    assert not p.overridden(0) and p.positions[0] == pytest.approx(0.3)
    assert any("pot moved" in m for m in p.messages)


def test_a_virtual_knob_set_again_later_wins_again_and_can_be_handed_back():
    pot = Pot(0.2)
    p = poller(pot)
    p.override(0, 0.7)
    pot.raw = 0.6
    p.poll_once(now=0.01)  # pot moved: pot
    p.override(0, 0.1)  # the page moves last: the page
    p.poll_once(now=0.02)
    assert p.positions[0] == pytest.approx(0.1)
    p.release(0)
    p.poll_once(now=0.03)
    assert not p.overridden(0) and p.positions[0] == pytest.approx(0.6)


def test_a_knob_without_a_pot_keeps_what_the_page_sets():
    pot = Pot(0.5)
    p = poller(pot)
    p.override(1, 0.25)  # ratio has no pot: nobody else moves it
    for k in range(5):
        p.poll_once(now=0.01 * (k + 1))
    assert p.positions[1] == pytest.approx(0.25)


def test_level_meter_reads_dbfs():
    assert level_db(np.full(128, 0.5, np.float32)) == (pytest.approx(-6.0, abs=0.1), pytest.approx(-6.0, abs=0.1))
    sine = np.sin(2 * np.pi * np.arange(256) / 64).astype(np.float32)
    peak, rms = level_db(sine)
    assert peak == pytest.approx(0.0, abs=0.1) and rms == pytest.approx(-3.0, abs=0.1)
    assert level_db(np.zeros(128, np.float32)) == (-120.0, -120.0)


def test_the_daemon_answers_a_remote_panel_on_its_socket_commands(bundle_path, caplog):
    """In this process, on the in-memory card: `knob` sets a knob with no pot (it holds), `panel`
    reports it with its unit and source, the meters read the card's -6 dBFS sine, the log tail has
    the change; bad names, values and automation-driven knobs are refused."""
    import logging
    import threading

    from device.bundle import load_bundle
    from device.daemon import AutomationKnobs, Daemon, LiveKnobs
    from device.engine import Engine

    from .memcard import MemCard
    caplog.set_level(logging.INFO, logger="pedal")
    bundle = load_bundle(bundle_path)
    specs = bundle.manifest.knobs
    defaults = np.array([k.to_normalized(k.default) for k in specs], np.float32)
    signal = (0.5 * np.sin(2 * np.pi * 187.5 * np.arange(48000) / 48000)).astype(np.float32)
    engine = Engine(bundle)
    engine.prime(defaults)
    daemon = Daemon(engine, MemCard(signal, period=256), LiveKnobs(defaults.copy()), None)
    daemon.running = True
    audio = threading.Thread(target=daemon.run, kwargs={"max_periods": 60}, daemon=True)
    audio.start()
    try:
        reply = daemon.command("knob threshold_db -50")
        assert reply == {"ok": True, "knob": "threshold_db", "value": -50.0, "position": 0.0, "source": "web"}
        assert daemon.command("knob ratio 99")["value"] == 10.0  # clamped to the knob's range
        assert not daemon.command("knob drive 3")["ok"] and "knobs: threshold_db" in daemon.command("knob drive 3")["error"]
        assert not daemon.command("knob threshold_db loud")["ok"]
        assert not daemon.command("knob threshold_db inf")["ok"]
        assert not daemon.command("knob threshold_db")["ok"]
        audio.join(5)
        panel = daemon.command("panel")
    finally:
        daemon.stop()
    knobs = {k["name"]: k for k in panel["knob_specs"]}
    assert knobs["threshold_db"]["value"] == -50.0 and knobs["threshold_db"]["unit"] == "dB"
    assert knobs["threshold_db"]["source"] == "web" and knobs["attack_ms"]["source"] == "fixed"
    assert panel["knobs"]["threshold_db"] == pytest.approx(-50.0, abs=0.5)  # what the engine plays, after its glide
    assert panel["levels"]["in_peak_db"] == pytest.approx(-6.0, abs=0.1)
    assert panel["levels"]["out_peak_db"] > -60
    assert any("knob threshold_db set to -50 dB" in line for line in panel["log"])
    assert daemon.command("knob threshold_db pot")["source"] == "fixed"  # no pot: nothing to hand back to

    auto = Daemon(Engine(bundle), MemCard(signal, period=256), AutomationKnobs(defaults[None, :]), None)
    assert "automation" in auto.command("knob threshold_db -30")["error"]
