"""A pedal made of JACK, in its own process, for test_capture.py:

    python -m tests.device.fake_pedal --server NAME --latency 37

It owns the ports the box's ALSA ``type jack`` PCMs connect to (``card:playback_N``: what the box
plays; ``card:capture_N``: what the box records, device/jackrig.write_asoundrc), runs
``DriveEffect`` on what the box plays and sends it back ``latency`` samples later.

Its own process, so that its JACK callback never waits for the GIL held by a test thread that
the loaded machine has descheduled (in the test's process that cost a period of garbage now and
then). Commands, one per line on stdin, each answered ``ok`` on stdout once it is in force:

    knobs DRIVE_DB TONE LEVEL   set the knobs
    bypass 0|1                  the effect off: the signal passes, still ``latency`` late
    fault NAME                  none | clip (the box's input clips) | silent (a cable out) |
                                late (a JACK period more latency: a buffer slipped)
    missed                      -> the number of JACK cycles its callback missed so far
    xruns                       -> the xruns the JACK server reported so far (any client's: the
                                   box's ALSA plugin runs a JACK thread too, and one not scheduled
                                   in time leaves a period of stale audio that ALSA never reports)

The effect is numpy alone (the device environment has no pedalboard) and renders offline with the
same code (``render_offline``), so the test can compare a capture with the pedal sample for sample.
"""
from __future__ import annotations

import argparse
import sys
import threading

import numpy as np

CLOCK_MIN = 7.0  # device.capture.plan's dial: 7 o'clock .. 5 o'clock = 7 .. 17
TAPS = 8


class DriveEffect:
    """A drive pedal: tanh(gain x), a tone control that blends in a short low-pass, and a level.
    Block by block (with its state) or all at once, the same numbers."""

    def __init__(self):
        self.set(drive_db=10.0, tone=12.0, level=6.0)
        self.hist = np.zeros(TAPS - 1)

    def set(self, drive_db: float, tone: float, level: float) -> None:
        h = 0.6 ** np.arange(TAPS)
        self.gain, self.mix, self.level, self.h = 10 ** (drive_db / 20), 0.6 * (tone - CLOCK_MIN) / 10, level / 10, h / h.sum()

    def process(self, x: np.ndarray) -> np.ndarray:
        s = np.tanh(self.gain * np.asarray(x, np.float64))
        padded = np.concatenate([self.hist, s])
        lp = np.convolve(padded, self.h, "valid")
        self.hist = padded[len(padded) - (TAPS - 1):]
        return self.level * ((1 - self.mix) * s + self.mix * lp)


def render_offline(x: np.ndarray, knobs) -> np.ndarray:
    fx = DriveEffect()
    fx.set(*knobs)
    return fx.process(x)


class FakePedal:
    def __init__(self, server_name: str, latency: int, period: int, name: str = "card"):
        import jack
        self.client = jack.Client(name, servername=server_name, no_start_server=True)
        self.ins = [self.client.inports.register(f"playback_{i + 1}") for i in range(2)]
        self.outs = [self.client.outports.register(f"capture_{i + 1}") for i in range(2)]
        self.fx = DriveEffect()
        self.latency, self.period = latency, period
        self.delay = np.zeros(latency)
        self.fault, self.bypass = "none", False
        self.next_frame, self.missed, self.xruns = None, 0, 0
        self.lock = threading.Lock()  # commands change several fields; the callback sees them all or none
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)

    def _xrun(self, delayed_usecs: float) -> None:  # JACK's notification thread, not the audio one
        self.xruns += 1

    def _process(self, frames: int) -> None:
        t = self.client.last_frame_time
        if self.next_frame is not None and t != self.next_frame:
            self.missed += (t - self.next_frame) // frames
        self.next_frame = t + frames
        with self.lock:
            x = self.ins[0].get_array()
            y = np.array(x, np.float64) if self.bypass else self.fx.process(x)
            want = self.latency + (self.period if self.fault == "late" else 0)
            if len(self.delay) != want:
                self.delay = np.concatenate([np.zeros(max(0, want - len(self.delay))), self.delay])[-want:]
            buf = np.concatenate([self.delay, y])
            out, self.delay = buf[:frames], buf[frames:]
            if self.fault == "clip":
                out = np.clip(out * 30.0, -1.0, 1.0)
            elif self.fault == "silent":
                out = np.zeros(frames)
        self.outs[0].get_array()[:] = out
        self.outs[1].get_array().fill(0.0)

    def command(self, line: str) -> str:
        word, *args = line.split()
        with self.lock:
            if word == "knobs":
                self.fx.set(*map(float, args))
            elif word == "bypass":
                self.bypass = args[0] == "1"
            elif word == "fault":
                self.fault = args[0]
            elif word == "missed":
                return f"ok {self.missed}"
            elif word == "xruns":
                return f"ok {self.xruns}"
            else:
                return f"error: unknown command {line!r}"
        return "ok"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--latency", type=int, required=True)
    ap.add_argument("--period", type=int, required=True, help="the JACK period (the 'late' fault adds one)")
    a = ap.parse_args()
    pedal = FakePedal(a.server, a.latency, a.period)
    pedal.client.activate()
    print("ready", flush=True)
    for line in sys.stdin:  # blocked in read(): the GIL is free for the JACK callback
        if line.strip():
            print(pedal.command(line), flush=True)
    pedal.client.deactivate()
    pedal.client.close()


if __name__ == "__main__":
    main()
