"""Knobs you can turn: potentiometers through an ADC, or MIDI/file/terminal sources for development.

    pot (raw fraction 0..1) -> PotCalibration -> deadband -> one-pole smoothing -> knob position 0..1

A *pot source* is any object with ``read() -> float | None``: the wiper as a fraction of the ADC's
travel (0 = one end, 1 = the other), or ``None`` when it has nothing yet (a MIDI knob before its
first CC). Positions are what the model consumes, one per KnobSpec in bundle order; the spec's
taper turns a position into a physical value (``spec.from_normalized``), so the pots themselves are
10k *linear*.

``KnobPoller`` reads every pot on its own thread (default 200 Hz) and writes positions into a
preallocated float32 array, ``poller.positions``, which the audio thread reads without locks: one
writer, and each element is a single aligned 4-byte store. A pot that fails (ADC unplugged, I2C
error, NaN) holds its last good position, is counted and reported, and is retried with back-off.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from .knobspec import KnobSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PotCalibration:
    """Raw ADC fraction -> knob position 0..1: the pot's real end stops and its direction.

    A pot rarely reaches the ADC's rails (wiper and track resistance), so ``raw_min..raw_max`` is
    the span it really covers; readings beyond are clamped, so both ends are reachable.
    ``reversed`` is for a pot wired with its ends swapped (clockwise = lower voltage).
    """
    raw_min: float = 0.0
    raw_max: float = 1.0
    reversed: bool = False

    def __post_init__(self):
        if not (0.0 <= self.raw_min < self.raw_max <= 1.0):
            raise ValueError(f"calibration needs 0 <= raw_min < raw_max <= 1, got {self.raw_min}..{self.raw_max}")

    @classmethod
    def from_extremes(cls, raw_ccw: float, raw_cw: float, margin: float = 0.01) -> "PotCalibration":
        """From readings taken with the knob fully counter-clockwise and fully clockwise.

        ``margin`` (fraction of travel) pulls both ends in, so noise at the stops still reads 0 and 1.
        """
        lo, hi = sorted((float(raw_ccw), float(raw_cw)))
        span = hi - lo
        if span < 0.1:
            raise ValueError(f"pot travel {lo:.3f}..{hi:.3f} is too small: is the wiper connected?")
        return cls(lo + margin * span, hi - margin * span, reversed=raw_ccw > raw_cw)

    def __call__(self, raw: float) -> float:
        p = (raw - self.raw_min) / (self.raw_max - self.raw_min)
        p = min(max(p, 0.0), 1.0)
        return 1.0 - p if self.reversed else p


# ---------------------------------------------------------------------------------------------
# Pot sources: hardware


class MCP3008Pot:
    """One channel of an MCP3008 (10-bit, 8 channels, SPI) through gpiozero.

    gpiozero speaks the protocol; for the record, one conversion is three bytes, MSB first
    (datasheet DS21295, fig. 6-1):

        Byte        0        1        2
        Tx   00000001 SCCCxxxx xxxxxxxx    start bit, S = 1 single-ended, CCC = channel
        Rx   xxxxxxxx xxxxx0RR RRRRRRRR    null bit, then the 10-bit result

    Result = 1024 * V_in / V_ref (at most 1023), so with VREF tied to the pot's 3.3 V, raw/1023 is
    the wiper's fraction of the track to within one code.
    Default is SPI0 with CE0 (GPIO8); ``device=1`` through ``spi_args`` selects CE1 (GPIO7).
    """

    def __init__(self, channel: int, pin_factory=None, **spi_args):
        from gpiozero import MCP3008  # here, so a box without gpiozero can still use MIDI/file knobs
        self.channel = channel
        self._adc = MCP3008(channel=channel, pin_factory=pin_factory, **spi_args)

    def read(self) -> float:
        return self._adc.raw_value / 1023.0

    def close(self):
        self._adc.close()

    def __repr__(self):
        return f"MCP3008Pot(channel={self.channel})"


# ADS1115 (TI SBAS444): four 16-bit registers behind a pointer byte.
ADS1115_CONVERSION = 0x00  # last result, 16-bit two's complement, MSB first
ADS1115_CONFIG = 0x01
# Config register bits (SBAS444 table 8-3):
#   15     OS        write 1: start a single conversion; read 0: converting, 1: idle (result ready)
#   14:12  MUX       100..111 = AIN0..AIN3 against GND (single-ended)
#   11:9   PGA       full scale: 000 6.144 V, 001 4.096 V, 010 2.048 V, 011 1.024 V, 100 0.512 V, 101 0.256 V
#   8      MODE      1 = single-shot, then power-down
#   7:5    DR        000 8, 001 16, 010 32, 011 64, 100 128, 101 250, 110 475, 111 860 samples/s
#   4:2    comparator mode, polarity, latch: unused here (0)
#   1:0    COMP_QUE  11 = comparator off
ADS1115_OS = 0x8000
ADS1115_PGA = {6.144: 0b000, 4.096: 0b001, 2.048: 0b010, 1.024: 0b011, 0.512: 0b100, 0.256: 0b101}
ADS1115_DR = {8: 0b000, 16: 0b001, 32: 0b010, 64: 0b011, 128: 0b100, 250: 0b101, 475: 0b110, 860: 0b111}


class ADS1115Pot:
    """One single-ended input (AIN0..AIN3) of an ADS1115 (16-bit, I2C), read as a single-shot conversion.

    ``bus`` is an ``smbus2.SMBus(1)`` or anything with its ``write_i2c_block_data`` and
    ``read_i2c_block_data``. The address is set by the ADDR pin: GND 0x48, VDD 0x49, SDA 0x4A, SCL 0x4B.
    The pot spans 0..``vdd_v``; the ±4.096 V range is the smallest that holds 3.3 V, leaving
    3.3/4.096 * 32768 = 26400 codes of travel. One read costs a conversion, 1/860 s at the fastest
    rate, so four pots at 860 SPS take ~5 ms: poll no faster than ~150 Hz.
    """

    def __init__(self, bus, channel: int = 0, address: int = 0x48, *, vdd_v: float = 3.3,
                 full_scale_v: float = 4.096, data_rate_sps: int = 860):
        if not 0 <= channel <= 3:
            raise ValueError(f"ADS1115 channel must be 0..3 (AIN0..AIN3), got {channel}")
        if full_scale_v not in ADS1115_PGA or data_rate_sps not in ADS1115_DR:
            raise ValueError(f"full_scale_v must be one of {list(ADS1115_PGA)}, "
                             f"data_rate_sps one of {list(ADS1115_DR)}")
        if vdd_v > full_scale_v:
            raise ValueError(f"a {vdd_v} V pot does not fit the ±{full_scale_v} V range")
        self.bus, self.channel, self.address = bus, channel, address
        self.config = (ADS1115_OS | (0b100 | channel) << 12 | ADS1115_PGA[full_scale_v] << 9 | 1 << 8
                       | ADS1115_DR[data_rate_sps] << 5 | 0b11)
        self._code_at_vdd = vdd_v / full_scale_v * 32768
        # DR is accurate to ±10 % (SBAS444 7.3), plus ~25 us to wake from power-down.
        self._conversion_s = 1.1 / data_rate_sps + 25e-6

    def read(self) -> float:
        self.bus.write_i2c_block_data(self.address, ADS1115_CONFIG, [self.config >> 8, self.config & 0xFF])
        time.sleep(self._conversion_s)
        deadline = time.monotonic() + 10 * self._conversion_s
        while True:
            hi, lo = self.bus.read_i2c_block_data(self.address, ADS1115_CONFIG, 2)
            if hi << 8 & ADS1115_OS:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"ADS1115 at {self.address:#04x}: conversion never finished")
            time.sleep(self._conversion_s / 4)
        hi, lo = self.bus.read_i2c_block_data(self.address, ADS1115_CONVERSION, 2)
        code = int.from_bytes(bytes((hi, lo)), "big", signed=True)  # near GND it can read a few codes below 0
        return min(max(code / self._code_at_vdd, 0.0), 1.0)

    def __repr__(self):
        return f"ADS1115Pot(address={self.address:#04x}, channel={self.channel})"


# ---------------------------------------------------------------------------------------------
# Pot sources for development: a table of named values that something else fills in


class _TablePot:
    def __init__(self, table: "KnobTable", name: str):
        self.table, self.name = table, name

    def read(self) -> float | None:
        self.table.refresh()
        return self.table.values.get(self.name)

    def __repr__(self):
        return f"{type(self.table).__name__}.pot({self.name!r})"


class KnobTable:
    """Named values 0..1 filled in by a development source; ``pot(name)`` is a pot source reading one."""

    def __init__(self):
        self.values: dict[str, float] = {}

    def pot(self, name: str | int) -> _TablePot:
        """A pot reading the value stored under ``name`` (a knob name, or a channel number)."""
        return _TablePot(self, str(name))

    def set(self, name: str, value: float):
        self.values[name] = min(max(float(value), 0.0), 1.0)

    def refresh(self):
        """Pull new values if the source is polled (a file); others push them from their own thread."""


class FileKnobs(KnobTable):
    """Knob values from a file you edit while the pedal plays; re-read whenever it changes.

    Either JSON, ``{"drive": 0.7, "tone": 0.25}`` or ``[0.7, 0.25]`` (keys "0", "1": channels),
    or lines of ``name value`` / ``name = value`` (``#`` starts a comment). Values are raw
    fractions 0..1. A missing or half-written file keeps
    the previous values and is tried again on the next check (every ``check_s``).
    """

    def __init__(self, path, check_s: float = 0.05):
        super().__init__()
        self.path, self.check_s = os.fspath(path), check_s
        self._stamp = None
        self._next_check = 0.0
        self.refresh()

    def refresh(self):
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_s
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            with open(self.path) as f:
                values = self.parse(f.read())
        except (OSError, ValueError):
            return  # stamp not recorded: tried again next check
        for name, value in values.items():
            self.set(name, value)
        self._stamp = stamp

    @staticmethod
    def parse(text: str) -> dict[str, float]:
        if text.lstrip()[:1] in ("{", "["):
            data = json.loads(text)
            items = enumerate(data) if isinstance(data, list) else data.items()
            return {str(k): float(v) for k, v in items}
        values = {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].replace("=", " ").split()
            if line:
                name, value = line  # ValueError on anything else: the file is not done yet
                values[name] = float(value)
        return values


class TerminalKnobs(KnobTable):
    """Type ``drive 0.7`` and Enter: a reader thread sets knobs from lines on a text stream (stdin)."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream if stream is not None else sys.stdin
        self._thread = threading.Thread(target=self._run, name="terminal-knobs", daemon=True)
        self._thread.start()

    def _run(self):
        for line in self.stream:
            try:
                for name, value in FileKnobs.parse(line).items():
                    self.set(name, value)
            except ValueError:
                print(f"? {line.strip()!r}: type a knob name and a value 0..1, e.g. 'drive 0.7'", file=sys.stderr)


class MidiCCKnobs(KnobTable):
    """Knobs from a MIDI controller: control change number -> knob name, value/127.

    ``port`` is a mido input port name (None: the system default). Only ``open()`` needs a MIDI
    backend (python-rtmidi); messages can also be fed to ``handle`` directly.
    """

    def __init__(self, ccs: dict[int, str], port: str | None = None, channel: int | None = None,
                 open_port: bool = True):
        super().__init__()
        self.ccs, self.port_name, self.channel = dict(ccs), port, channel
        self._port = None
        if open_port:
            self.open()

    def open(self):
        try:
            import mido
            self._port = mido.open_input(self.port_name, callback=self.handle)
        except Exception as e:  # no mido, no backend (ImportError), unknown port (OSError), rtmidi errors
            raise RuntimeError(f"cannot open MIDI input {self.port_name or '(default)'}: {e}. MIDI knobs need "
                               "mido with a backend (pip install python-rtmidi) and a connected controller") from e

    def handle(self, msg):
        if msg.type != "control_change" or msg.control not in self.ccs:
            return
        if self.channel is None or msg.channel == self.channel:
            self.set(self.ccs[msg.control], msg.value / 127.0)

    def close(self):
        if self._port is not None:
            self._port.close()
            self._port = None


# ---------------------------------------------------------------------------------------------
# From raw readings to knob positions


class KnobProcessor:
    """Per knob: calibration -> deadband -> one-pole smoothing, at a fixed poll rate.

    ``pots`` maps knob names of the bundle to pot sources; a knob without a pot stays at its
    spec's default position. ``deadband`` is a fraction of travel: a change smaller than this
    around the last accepted value is ignored (hysteresis), so a resting knob does not jitter if
    the deadband is a little above the peak-to-peak noise of a resting pot (a 10-bit MCP3008 on a
    quiet supply: 2 to 4 codes, 0.2 to 0.4 %); the end stops are always accepted. ``smoothing_ms``
    is the time constant of the one-pole that follows the accepted value, so a turned knob moves
    the model's input in small steps.
    """

    def __init__(self, specs: list[KnobSpec], pots: dict, calibrations: dict | None = None,
                 deadband: float = 0.004, smoothing_ms: float = 30.0, poll_hz: float = 200.0):
        self.specs = list(specs)
        self.names = [s.name for s in self.specs]
        calibrations = dict(calibrations or {})
        unknown = (set(pots) | set(calibrations)) - set(self.names)
        if unknown:
            raise ValueError(f"pots or calibrations for knobs {sorted(unknown)} that the bundle does not have "
                             f"(it has {self.names})")
        self.pots = [(i, name, pots[name]) for i, name in enumerate(self.names) if name in pots]
        self.calibrations = [calibrations.get(name, PotCalibration()) for name in self.names]
        self.deadband, self.poll_hz = float(deadband), float(poll_hz)
        # One-pole y += a (x - y) at poll_hz: after tau the step has covered 1 - 1/e = 63 %.
        self.alpha = 1.0 - math.exp(-1000.0 / (smoothing_ms * poll_hz)) if smoothing_ms > 0 else 1.0
        self.defaults = [s.to_normalized(s.default) for s in self.specs]
        self._accepted: list[float | None] = [None] * len(self.specs)
        self._smoothed = list(self.defaults)

    def update(self, i: int, raw: float) -> float:
        """One raw reading of knob ``i`` -> its new position. The first reading is taken as is."""
        x = self.calibrations[i](raw)
        a = self._accepted[i]
        if a is None:
            self._accepted[i] = self._smoothed[i] = x
            return x
        if abs(x - a) > self.deadband or (x in (0.0, 1.0) and x != a):
            self._accepted[i] = a = x
        self._smoothed[i] += self.alpha * (a - self._smoothed[i])
        return self._smoothed[i]

    def positions(self) -> np.ndarray:
        return np.array(self._smoothed, dtype=np.float32)

    def accepted(self, i: int) -> float | None:
        """Knob ``i``'s last reading past the deadband (None before the first): it changes only when the pot is turned."""
        return self._accepted[i]

    def values(self, positions) -> dict[str, float]:
        """Positions -> physical values by name, through each spec's taper (for display and logs)."""
        return {s.name: s.from_normalized(float(p)) for s, p in zip(self.specs, positions)}


class KnobPoller:
    """Reads the pots on a thread off the audio path and keeps ``positions`` current.

    ``positions`` (float32, one per knob in bundle order) is allocated once; the audio thread only
    reads it. A pot whose read raises or returns a non-finite value keeps its last good position;
    the fault is counted (``fault_counts``), reported once per episode to the log and to
    ``messages`` (for the daemon), and the pot is retried after a back-off that doubles from one
    poll period up to ``max_backoff_s``. With ``stuck_s`` set, a pot whose raw reading has not
    changed by a single bit for that long is also reported (off by default: a quiet ADC on a
    resting knob can read the same code for ever).
    """

    def __init__(self, processor: KnobProcessor, max_backoff_s: float = 1.0, stuck_s: float | None = None):
        self.processor = processor
        self.period_s = 1.0 / processor.poll_hz
        self.max_backoff_s, self.stuck_s = max_backoff_s, stuck_s
        self.positions = processor.positions()
        n = len(self.positions)
        self.fault_counts = [0] * n
        self.in_fault = [False] * n
        self.messages: collections.deque[str] = collections.deque(maxlen=64)
        self._backoff_s = [0.0] * n
        self._retry_at = [0.0] * n
        self._last_raw: list[float | None] = [None] * n
        self._raw_since = [0.0] * n
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Virtual knobs (a remote panel): knob i held at _held_at[i] while the pot's accepted
        # reading stays _held_mark[i]; nan = not held.
        self._held_at = [math.nan] * n
        self._held_mark: list[float | None] = [None] * n

    @property
    def faulty(self) -> bool:
        return any(self.in_fault)

    def override(self, i: int, position: float) -> None:
        """A virtual knob sets knob ``i`` to ``position`` (0..1). Last mover wins: it holds while
        the pot stays where it is; once the pot moves past its deadband, the pot takes over."""
        self._held_mark[i] = self.processor.accepted(i)
        self._held_at[i] = float(position)
        self.positions[i] = position

    def release(self, i: int) -> None:
        """Hand knob ``i`` back to its pot now."""
        self._held_at[i] = math.nan

    def overridden(self, i: int) -> bool:
        return not math.isnan(self._held_at[i])

    def poll_once(self, now: float | None = None):
        """Read every pot that is due once and update its position."""
        now = time.monotonic() if now is None else now
        for i, name, pot in self.processor.pots:
            if now < self._retry_at[i]:
                continue
            try:
                raw = pot.read()
                if raw is None:
                    continue
                raw = float(raw)
                if not math.isfinite(raw):
                    raise ValueError(f"read {raw}")
            except Exception as e:  # any failure of a pot must not stop the others
                self._fault(i, name, pot, repr(e), now)
                continue
            if raw != self._last_raw[i]:
                self._last_raw[i], self._raw_since[i] = raw, now
            elif self.stuck_s is not None and now - self._raw_since[i] >= self.stuck_s:
                if not self.in_fault[i]:  # one fault per stuck episode; keep reading to see it move
                    self._fault(i, name, pot, f"stuck at {raw:.4f} for {now - self._raw_since[i]:.0f} s", now,
                                backoff=False)
                continue
            if self.in_fault[i]:
                self._note(logging.INFO, f"knob {name!r}: {pot!r} works again after "
                                         f"{self.fault_counts[i]} faults so far")
                self.in_fault[i], self._backoff_s[i] = False, 0.0
            position = self.processor.update(i, raw)
            held = self._held_at[i]
            if held == held:  # a virtual knob holds this one (not nan)
                if self.processor.accepted(i) == self._held_mark[i]:
                    self.positions[i] = held  # the pot has not moved: the virtual knob stays
                    continue
                self._held_at[i] = math.nan
                self._note(logging.INFO, f"knob {name!r}: the pot moved; it takes over from the virtual knob")
            self.positions[i] = position

    def _fault(self, i, name, pot, why, now, backoff=True):
        self.fault_counts[i] += 1
        if not self.in_fault[i]:
            self.in_fault[i] = True
            self._note(logging.WARNING, f"knob {name!r}: {pot!r} failed ({why}); "
                                        f"holding position {self.positions[i]:.3f} and retrying")
        if backoff:
            self._backoff_s[i] = min(max(2 * self._backoff_s[i], self.period_s), self.max_backoff_s)
            self._retry_at[i] = now + self._backoff_s[i]

    def _note(self, level, message):
        log.log(level, message)
        self.messages.append(message)

    def start(self) -> "KnobPoller":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="knob-poller", daemon=True)
        self._thread.start()
        return self

    def _run(self):
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.poll_once()
            next_t += self.period_s
            delay = next_t - time.monotonic()
            if delay < 0:  # a slow bus: skip ahead rather than poll in a burst
                next_t, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    def stop(self, timeout_s: float = 2.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise RuntimeError("knob poller did not stop: a pot read is hanging")
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
