"""Helpers for the tests that run the daemon against a JACK dummy server (test_jack*.py).

The daemon runs as the real program (``python -m device run``), in its own process, under
``chrt -f 60`` where the system allows; the test process is the sound card (device.jackrig.FakeCard).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from device.daemon import query_status
from device.jackrig import alsa_env, chrt_prefix

from .conftest import REPO

SR = 48000
F_SINE = 187.5  # 256 samples a cycle: a steady output repeats every 256 samples, exactly
CYCLE = 256


def sine(seconds: float = 1.0, level: float = 0.5) -> np.ndarray:
    n = int(seconds * SR) // CYCLE * CYCLE  # whole cycles, so the loop is seamless
    return (level * np.sin(2 * np.pi * F_SINE * np.arange(n) / SR)).astype(np.float32)


def click_train(every: int = 2400, level: float = 0.5, seconds: float = 1.0) -> np.ndarray:
    x = np.zeros(int(seconds * SR) // every * every, np.float32)
    x[::every] = level
    return x



def steady(y: np.ndarray, cycle: int = CYCLE, tol: float = 1e-4) -> bool:
    """True when y repeats every ``cycle`` samples: a steady state, with no xrun or change inside."""
    return len(y) > 2 * cycle and float(np.abs(y[cycle:] - y[:-cycle]).max()) < tol


def short_socket_path() -> Path:
    return Path(tempfile.mkdtemp(prefix="pd", dir="/tmp")) / "s.sock"  # AF_UNIX paths must be short (108 bytes)


class Pedal:
    """The daemon as a process: start it, talk to its status socket, stop it, read its log."""

    def __init__(self, args: list[str], env: dict, workdir: Path, sock: Path | None = None, realtime: bool = True):
        self.sock = sock or short_socket_path()
        self.log_path = workdir / "daemon.log"
        self.args = list(args)
        if "--config" not in self.args:
            self.args += ["--status-socket", str(self.sock)]
        prefix = chrt_prefix(60) if realtime else []
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(prefix + [sys.executable, "-m", "device", "run"] + self.args,
                                     env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO,
                                     stdout=self.log_file, stderr=subprocess.STDOUT)

    def wait_playing(self, periods: int = 100, timeout_s: float = 20.0) -> dict:
        """Until the daemon answers and has played ``periods`` periods."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            try:
                st = query_status(self.sock)
                if st["periods"] >= periods:
                    return st
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon not playing after {timeout_s} s:\n{self.log()}")
            time.sleep(0.05)

    def wait_settled(self, quiet_s: float = 0.4, timeout_s: float = 20.0) -> dict:
        """Until the daemon plays and has had no xrun for ``quiet_s`` (JACK's graph changes when the
        daemon's two ALSA clients join, which costs a few xruns at start-up)."""
        st = self.wait_playing(timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        quiet_since, xruns = time.monotonic(), st["xruns"]
        while time.monotonic() - quiet_since < quiet_s:
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon still has xruns after {timeout_s} s:\n{self.log()}")
            time.sleep(0.05)
            st = self.status()
            if st["xruns"] != xruns:
                quiet_since, xruns = time.monotonic(), st["xruns"]
        return st

    def status(self) -> dict:
        return query_status(self.sock)

    def command(self, line: str) -> dict:
        return query_status(self.sock, line)

    def signal(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout_s: float = 10.0) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()
        shutil.rmtree(self.sock.parent, ignore_errors=True)
        return self.log()

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text()


def watch(pedal: Pedal, card, seconds: float, poll_s: float = 0.05) -> list[tuple[int, int]]:
    """Let the daemon play for ``seconds`` while asking it every ``poll_s`` for its xrun count;
    -> (card frame, card frame) brackets, each holding at least one xrun the daemon counted."""
    brackets = []
    pos, xruns = card.pos, pedal.status()["xruns"]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(poll_s)
        pos2, xruns2 = card.pos, pedal.status()["xruns"]
        if xruns2 != xruns:
            brackets.append((pos, pos2))
        pos, xruns = pos2, xruns2
    return brackets


def xrun_zones(card, brackets, before_s: float = 0.05, after_s: float = 0.15) -> list[tuple[int, int]]:
    """Stretches of the card's clock near an xrun (either side's): where a click may be lost or
    late. The latency guard needs 16 periods to see a slip, hence the longer tail."""
    zones = [(f - int(before_s * SR), f + int(after_s * SR)) for f in card.xrun_frames]
    zones += [(a - int(before_s * SR), b + int(after_s * SR)) for a, b in brackets]
    return zones


def outside(frame: int, zones) -> bool:
    return not any(a <= frame <= b for a, b in zones)


def jack_env(server, asoundrc) -> dict:
    return {**server.env(), **alsa_env(asoundrc)}


def knob_positions(specs, **values) -> list[float]:
    return [s.to_normalized(values.get(s.name, s.default)) for s in specs]


def write_knob_file(path: Path, positions) -> None:
    """The file knob source: one `channel value` line per pot, replaced atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{i} {p:.6f}\n" for i, p in enumerate(positions)))
    tmp.replace(path)


def write_config(path: Path, bundle: Path, knob_file: Path, sock: Path, specs, period: int = 128,
                 periods: int = 2, log_level: str = "info", precision: str = "float32", choice: Path | None = None) -> Path:
    """A daemon config on the JACK rig. The precision is pinned (float32 by default): the bundle's
    default is chosen by timing on the converting machine, and the tests that compare outputs
    sample for sample need the same model on every machine."""
    pots = "".join(f"\n[[knobs.pot]]\nknob = \"{s.name}\"\nchannel = {i}\n" for i, s in enumerate(specs))
    path.write_text(f"""
[audio]
capture_device = "jackcap"
playback_device = "jackplay"
sample_rate = 48000
period_frames = {period}
periods = {periods}
format = "FLOAT_LE"
capture_channels = 2
playback_channels = 2

[model]
bundle = "{Path(bundle).resolve()}"
precision = "{precision}"
choice = "{choice or ''}"

[knobs]
source = "file"
file = "{knob_file}"
poll_hz = 200
smoothing_ms = 30.0
{pots}
[realtime]
priority = 60
lock_memory = true

[status]
socket = "{sock}"
log_level = "{log_level}"

[watchdog]
enabled = false
""")
    return path
