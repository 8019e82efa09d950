"""Knobs: from a wiper voltage on an ADC to the position the model sees, against mock hardware."""
import io
import math
import os
import time

import numpy as np
import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockSPIDevice

from device.knobspec import KnobSpec
from device.pots import (ADS1115Pot, FileKnobs, KnobPoller, KnobProcessor, MCP3008Pot, MidiCCKnobs,
                         PotCalibration, TerminalKnobs)

POLL_HZ = 200.0
DT = 1.0 / POLL_HZ
DRIVE = KnobSpec("drive_db", "dB", 0.0, 40.0, 10.0)
ATTACK = KnobSpec("attack_ms", "ms", 1.0, 100.0, 10.0, taper="log")
TONE = KnobSpec("tone", "", 0.0, 1.0, 0.5)


class ScriptedPot:
    """A pot whose reading the test sets; ``fail`` makes read() raise like an unplugged ADC."""

    def __init__(self, value=0.5):
        self.value, self.fail, self.reads = value, None, 0

    def read(self):
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return self.value


def run_polls(poller, n, t0=0.0):
    """n polls at POLL_HZ in simulated time; returns the positions after each poll and the next time."""
    out = []
    for k in range(n):
        poller.poll_once(now=t0 + k * DT)
        out.append(poller.positions.copy())
    return np.array(out), t0 + n * DT


# --- calibration and taper ---------------------------------------------------------------------

def test_calibration_maps_the_pots_real_travel_onto_0_to_1_and_clamps():
    cal = PotCalibration(raw_min=0.1, raw_max=0.9)
    assert [cal(r) for r in (0.1, 0.3, 0.5, 0.9)] == pytest.approx([0.0, 0.25, 0.5, 1.0])
    assert cal(0.02) == 0.0 and cal(0.97) == 1.0
    rev = PotCalibration(raw_min=0.1, raw_max=0.9, reversed=True)
    assert [rev(r) for r in (0.1, 0.3, 0.9)] == pytest.approx([1.0, 0.75, 0.0])


def test_calibration_from_the_end_stops_finds_the_direction():
    cal = PotCalibration.from_extremes(raw_ccw=0.92, raw_cw=0.08, margin=0.0)
    assert (cal.raw_min, cal.raw_max, cal.reversed) == (pytest.approx(0.08), pytest.approx(0.92), True)
    assert cal(0.92) == 0.0 and cal(0.08) == 1.0
    with pytest.raises(ValueError, match="wiper"):
        PotCalibration.from_extremes(0.50, 0.52)


def test_a_log_knob_at_mid_travel_gives_the_geometric_mean():
    pot = ScriptedPot(0.5)
    proc = KnobProcessor([DRIVE, ATTACK], {"attack_ms": pot}, poll_hz=POLL_HZ)
    poller = KnobPoller(proc)
    poller.poll_once(now=0.0)
    values = proc.values(poller.positions)
    assert values["attack_ms"] == pytest.approx(math.sqrt(1.0 * 100.0), rel=1e-6)  # 10 ms
    assert values["drive_db"] == pytest.approx(10.0)  # no pot: stays at its default


def test_knobs_without_a_pot_sit_at_their_default_and_unknown_names_are_refused():
    proc = KnobProcessor([DRIVE, ATTACK, TONE], {"tone": ScriptedPot(0.9)}, poll_hz=POLL_HZ)
    poller = KnobPoller(proc)
    assert poller.positions.dtype == np.float32 and poller.positions.shape == (3,)
    run_polls(poller, 5)
    assert poller.positions.tolist() == pytest.approx([0.25, 0.5, 0.9])
    with pytest.raises(ValueError, match="volume"):
        KnobProcessor([DRIVE], {"volume": ScriptedPot()})


# --- deadband and smoothing ----------------------------------------------------------------------

def test_a_resting_knob_does_not_jitter_but_a_turned_one_moves():
    # +-0.3 % of travel of ADC noise: 0.6 % peak to peak, so a deadband of 0.7 % holds it wherever
    # within the noise the first reading lands; here at the worst place, an extreme.
    pot = ScriptedPot(0.503)
    poller = KnobPoller(KnobProcessor([TONE], {"tone": pot}, deadband=0.007, poll_hz=POLL_HZ))
    poller.poll_once(now=0.0)
    rest = poller.positions[0]
    rng = np.random.default_rng(0)
    trace = []
    t = DT
    for noise in rng.uniform(-0.003, 0.003, size=2000):  # 10 s at rest
        pot.value = 0.5 + noise
        poller.poll_once(now=t)
        t += DT
        trace.append(poller.positions[0])
    assert np.all(np.array(trace) == rest)  # not one bit of movement
    pot.value = 0.6  # a real turn
    for _ in range(100):
        poller.poll_once(now=t)
        t += DT
    assert poller.positions[0] == pytest.approx(0.6, abs=1e-4)


def test_a_knob_reaches_its_end_stops_through_the_deadband():
    pot = ScriptedPot(0.003)
    poller = KnobPoller(KnobProcessor([TONE], {"tone": pot}, deadband=0.004, poll_hz=POLL_HZ))
    poller.poll_once(now=0.0)
    pot.value = 0.0
    run_polls(poller, 200, t0=DT)
    assert poller.positions[0] == pytest.approx(0.0, abs=1e-6)


def test_smoothing_reaches_63_percent_after_one_time_constant_in_small_steps():
    tau_ms = 30.0
    pot = ScriptedPot(0.2)
    poller = KnobPoller(KnobProcessor([TONE], {"tone": pot}, smoothing_ms=tau_ms, poll_hz=POLL_HZ))
    poller.poll_once(now=0.0)
    pot.value = 0.8
    n_tau = round(tau_ms / 1000 * POLL_HZ)  # 6 polls
    trace, _ = run_polls(poller, 60, t0=DT)
    trace = np.concatenate([[0.2], trace[:, 0]])
    assert (trace[n_tau] - 0.2) / 0.6 == pytest.approx(1 - math.exp(-1), abs=0.01)
    max_step = 0.6 * (1 - math.exp(-DT * 1000 / tau_ms))  # the one-pole's first, largest step: 0.092
    assert np.max(np.abs(np.diff(trace))) <= max_step + 1e-6
    assert trace[-1] == pytest.approx(0.8, abs=1e-3)


# --- faults: the ADC goes away and comes back ------------------------------------------------------

def test_an_adc_that_goes_away_holds_the_last_position_and_recovers():
    pot = ScriptedPot(0.7)
    poller = KnobPoller(KnobProcessor([TONE], {"tone": pot}, poll_hz=POLL_HZ), max_backoff_s=0.5)
    _, t = run_polls(poller, 10)
    assert poller.positions[0] == pytest.approx(0.7)

    pot.fail = OSError(121, "Remote I/O error")  # what smbus2 raises for a missing I2C device
    reads_before = pot.reads
    trace, t = run_polls(poller, 400, t0=t)  # 2 s without an ADC
    assert np.all(trace[:, 0] == np.float32(0.7))
    assert poller.faulty and poller.in_fault == [True]
    attempts = pot.reads - reads_before
    assert poller.fault_counts[0] == attempts
    assert 5 <= attempts <= 15  # back-off 5, 10, 20 ... 500 ms: a dozen tries, not 400
    warnings = list(poller.messages)
    assert len(warnings) == 1 and "tone" in warnings[0] and "holding position 0.700" in warnings[0]

    pot.fail, pot.value = None, 0.3
    _, t = run_polls(poller, 200, t0=t)  # within one max back-off the pot is read again
    assert not poller.faulty
    assert poller.positions[0] == pytest.approx(0.3, abs=1e-3)
    assert "works again" in poller.messages[-1]


def test_a_nan_reading_is_a_fault_not_a_position():
    pot = ScriptedPot(0.4)
    poller = KnobPoller(KnobProcessor([TONE], {"tone": pot}, poll_hz=POLL_HZ))
    poller.poll_once(now=0.0)
    pot.value = float("nan")
    run_polls(poller, 20, t0=DT)
    assert poller.positions[0] == pytest.approx(0.4) and poller.faulty and poller.fault_counts[0] >= 1


def test_a_stuck_reading_is_reported_once_when_asked_for():
    pot = ScriptedPot(0.4)
    poller = KnobPoller(KnobProcessor([TONE], {"tone": pot}, poll_hz=POLL_HZ), stuck_s=1.0)
    run_polls(poller, 400)  # 2 s of the identical code
    assert poller.faulty and poller.fault_counts == [1]
    pot.value = 0.45
    poller.poll_once(now=3.0)
    assert not poller.faulty


# --- MCP3008 through gpiozero's mock SPI --------------------------------------------------------

class MockMCP3008(MockSPIDevice):
    """The chip's side of the SPI conversation, bit by bit (DS21295 fig. 6-1):
    wait for the start bit, read SGL/DIFF and D2..D0, then one clock to sample,
    a null bit and the 10-bit result MSB first."""

    def __init__(self, vref=3.3, **pins):
        super().__init__(clock_pin=11, mosi_pin=10, miso_pin=9, select_pin=8, **pins)
        self.vref, self.volts, self.state = vref, [0.0] * 8, "idle"

    def on_start(self):
        super().on_start()
        self.state = "idle"

    def on_bit(self):
        if self.state == "idle" and self.rx_buf[-1]:  # start bit
            self.state, self.rx_buf = "mode", []
        elif self.state == "mode" and len(self.rx_buf) == 4:  # SGL/DIFF, D2, D1, D0
            assert self.rx_buf[0] == 1, "expected a single-ended read"
            self.rx_buf = self.rx_buf[1:]
            code = min(int(1024 * self.volts[self.rx_word()] / self.vref), 1023)
            self.tx_word(code, 12)  # sample clock + null bit + 10 result bits
            self.state = "result"


@pytest.fixture
def mock_pins():
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()


def test_mcp3008_pots_read_the_wiper_fraction(mock_pins):
    with MockMCP3008() as chip:
        chip.volts[0], chip.volts[3] = 0.25 * 3.3, 0.9 * 3.3
        pots = [MCP3008Pot(0), MCP3008Pot(3), MCP3008Pot(5)]
        assert [p.read() for p in pots] == pytest.approx([0.25, 0.9, 0.0], abs=1.5 / 1023)
        assert pots[0].read() == 256 / 1023
        for p in pots:
            p.close()


def test_the_poller_thread_follows_an_mcp3008_pot_and_stops_cleanly(mock_pins):
    with MockMCP3008() as chip:
        chip.volts[2] = 0.6 * 3.3
        pot = MCP3008Pot(2)
        proc = KnobProcessor([DRIVE, TONE], {"tone": pot}, poll_hz=100.0, smoothing_ms=10.0)
        with KnobPoller(proc) as poller:
            positions = poller.positions  # the audio thread keeps this reference
            deadline = time.monotonic() + 3.0
            while abs(positions[1] - 0.6) > 2e-3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert positions[1] == pytest.approx(0.6, abs=2e-3)
            thread = poller._thread
        assert not thread.is_alive()
        assert positions is poller.positions and positions[0] == pytest.approx(0.25)
        pot.close()


# --- ADS1115 against an emulated register file ----------------------------------------------------

class FakeADS1115Bus:
    """An smbus2.SMBus with one ADS1115 on it: writing OS=1 to config converts the MUX'd input;
    the first config read after that still says 'converting'; the conversion register holds the
    16-bit two's-complement result, MSB first. No device at an address -> OSError 121, like smbus2."""

    PGA_V = {0: 6.144, 1: 4.096, 2: 2.048, 3: 1.024, 4: 0.512, 5: 0.256}

    def __init__(self, address=0x48):
        self.address, self.volts, self.gone = address, [0.0] * 4, False
        self.config, self.conversion, self.busy_reads, self.configs_written = 0x8583, 0, 0, []

    def _check(self, addr):
        if self.gone or addr != self.address:
            raise OSError(121, "Remote I/O error")

    def write_i2c_block_data(self, addr, register, data):
        self._check(addr)
        word = data[0] << 8 | data[1]
        assert register == 0x01
        self.configs_written.append(word)
        self.config = word & 0x7FFF
        if word & 0x8000:
            mux = word >> 12 & 0b111
            assert mux >= 0b100, "expected a single-ended input"
            code = round(self.volts[mux - 0b100] / self.PGA_V[word >> 9 & 0b111] * 32768)
            self.conversion = max(-32768, min(code, 32767)) & 0xFFFF
            self.busy_reads = 1

    def read_i2c_block_data(self, addr, register, length):
        self._check(addr)
        assert length == 2
        if register == 0x01:
            word = self.config | (0 if self.busy_reads else 0x8000)
            self.busy_reads = max(0, self.busy_reads - 1)
        else:
            assert register == 0x00
            word = self.conversion
        return [word >> 8, word & 0xFF]


def test_ads1115_single_shot_reads_each_input_as_a_fraction_of_3v3():
    bus = FakeADS1115Bus()
    bus.volts = [1.65, 3.3, -0.01, 0.33]  # AIN2 a hair below ground: a negative code
    pots = [ADS1115Pot(bus, channel=c) for c in range(4)]
    assert [p.read() for p in pots] == pytest.approx([0.5, 1.0, 0.0, 0.1], abs=1 / 26400)
    # OS | MUX=AINn/GND | PGA 4.096 V | single-shot | 860 SPS | comparator off
    assert bus.configs_written == [0xC3E3, 0xD3E3, 0xE3E3, 0xF3E3]
    with pytest.raises(ValueError):
        ADS1115Pot(bus, channel=4)


def test_an_unplugged_ads1115_is_a_fault_and_comes_back():
    bus = FakeADS1115Bus()
    bus.volts[1] = 0.8 * 3.3
    poller = KnobPoller(KnobProcessor([TONE], {"tone": ADS1115Pot(bus, channel=1)}, poll_hz=POLL_HZ))
    _, t = run_polls(poller, 3)
    bus.gone = True
    _, t = run_polls(poller, 20, t0=t)
    assert poller.faulty and poller.positions[0] == pytest.approx(0.8, abs=1e-4)
    assert "Remote I/O error" in poller.messages[0]
    bus.gone = False
    run_polls(poller, 300, t0=t)
    assert not poller.faulty


# --- development sources: file, terminal, MIDI ------------------------------------------------------

def test_a_knob_file_is_re_read_when_it_changes(tmp_path):
    path = tmp_path / "knobs.json"
    path.write_text('{"tone": 0.25}')
    knobs = FileKnobs(path, check_s=0.0)
    tone, drive = knobs.pot("tone"), knobs.pot("drive_db")
    assert tone.read() == 0.25 and drive.read() is None  # no value yet: the knob stays put
    path.write_text("tone = 0.75  # brighter\ndrive_db 0.5\n")
    os.utime(path, ns=(0, 10**9))  # a new mtime even on a coarse clock
    assert tone.read() == 0.75 and drive.read() == 0.5
    path.write_text("tone 0.1 drive")  # caught half written: keep what we had
    os.utime(path, ns=(0, 2 * 10**9))
    assert tone.read() == 0.75 and drive.read() == 0.5


def test_a_knob_file_can_number_its_readings_like_adc_channels(tmp_path):
    path = tmp_path / "knobs.json"
    path.write_text("[0.1, 0.9]")
    knobs = FileKnobs(path)
    assert (knobs.pot(0).read(), knobs.pot(1).read(), knobs.pot(2).read()) == (0.1, 0.9, None)


def test_terminal_lines_set_knobs():
    knobs = TerminalKnobs(io.StringIO("tone 0.7\nnonsense\ndrive_db=1.5\n"))
    knobs._thread.join(1.0)
    assert knobs.values == {"tone": 0.7, "drive_db": 1.0}  # clamped to the travel


def test_midi_cc_moves_the_mapped_knob_only():
    import mido
    knobs = MidiCCKnobs({74: "tone"}, open_port=False)
    tone = knobs.pot("tone")
    assert tone.read() is None
    knobs.handle(mido.Message("control_change", control=74, value=127))
    knobs.handle(mido.Message("control_change", control=7, value=0))
    knobs.handle(mido.Message("note_on", note=60))
    assert tone.read() == 1.0
    knobs.handle(mido.Message("control_change", control=74, value=64))
    assert tone.read() == pytest.approx(64 / 127)
    with pytest.raises(RuntimeError, match="MIDI input"):
        MidiCCKnobs({74: "tone"}, port="no such controller")
