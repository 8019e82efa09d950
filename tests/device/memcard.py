"""A sound card in memory, for the daemon tests that run it in this process (test_daemon*.py).

``MemCard`` stands in for ``device.audio.AlsaDuplex``: it has the same methods, keeps real time
(period k of the input arrives (k + 1) periods after the start, and while the card is gone the
guitar keeps playing), records what the daemon wrote for each input period, and fails on demand:
``lose()`` makes every read raise DeviceLost, as an unplugged USB card does, until ``reopen``
has been refused ``refusals`` times; ``hang_s`` makes one read block, like a driver that stops
answering.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from device.audio import AlsaError, DeviceLost


class MemCard:
    def __init__(self, signal: np.ndarray, period: int = 256, periods: int = 2, rate: int = 48000,
                 seconds: float = 20.0):
        self.signal = np.asarray(signal, np.float32)
        self.period, self.periods, self.rate = period, periods, rate
        self.period_s = period / rate
        self.mono_in = np.zeros(period, np.float32)
        self.enc = np.zeros(period, np.float32)
        n = int(seconds * rate) // period * period
        self.out = np.zeros(n, np.float32)
        self.written = np.zeros(n // period, bool)
        self.t_in = 0.0
        self.k = -1  # the input period being processed
        self.t0 = None
        self.lost = False
        self.refusals = 0
        self.reopen_times: list[float] = []
        self.closed = self.recovers = 0
        self.hang_s = 0.0
        self.reading = threading.Event()

    def info(self) -> str:
        return f"in-memory card: {self.rate} Hz, period {self.period} x {self.periods}"

    def input(self, k: int) -> np.ndarray:
        """Input period k (the signal, looped)."""
        idx = (np.arange(k * self.period, (k + 1) * self.period)) % len(self.signal)
        return self.signal[idx]

    def lose(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.lost = True

    def read(self) -> int:
        if self.t0 is None:
            self.t0 = time.monotonic()
        if self.lost:
            raise DeviceLost("capture 'mem': No such device")
        if self.hang_s:
            hang, self.hang_s = self.hang_s, 0.0
            time.sleep(hang)
        now = time.monotonic()
        k = max(self.k + 1, int((now - self.t0) / self.period_s) - 1)  # after an outage: whatever plays now
        delay = self.t0 + (k + 1) * self.period_s - now
        if delay > 0:
            time.sleep(delay)
        self.k = k
        self.mono_in[:] = self.input(k)
        self.t_in = time.perf_counter()
        return self.period

    def encode(self, mono: np.ndarray) -> None:
        self.enc[:] = mono

    def write_encoded(self) -> int:
        k = self.k
        if (k + 1) * self.period <= len(self.out):
            self.out[k * self.period:(k + 1) * self.period] = self.enc
            self.written[k] = True
        return self.period

    def write(self, mono: np.ndarray) -> int:
        self.encode(mono)
        return self.write_encoded()

    def recover(self) -> None:
        self.recovers += 1

    def reopen(self) -> None:
        self.reopen_times.append(time.monotonic())
        if self.refusals > 0:
            self.refusals -= 1
            raise AlsaError("cannot open ALSA capture 'mem': No such device")
        self.lost = False

    def close(self) -> None:
        self.closed += 1
