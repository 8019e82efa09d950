"""A sound card made of JACK, for tests and benchmarks on a machine without one (not used by the daemon).

    with JackServer(period=128) as server:                    # jackd -d dummy: real-time pacing, real xruns
        rc = write_asoundrc(tmp / "asoundrc", card="card")    # ALSA PCMs "jackcap" / "jackplay"
        card = FakeCard(server.name, signal, record_s=10)     # plays `signal`, records what comes back
        card.start()
        subprocess.run([... "python", "-m", "device", "run", "--capture", "jackcap", "--playback", "jackplay" ...],
                       env={**os.environ, **server.env(), **alsa_env(rc)})
        card.stop(); card.recording, card.xruns

The chain is the one a Pi has, with JACK in place of the codec:
FakeCard (JACK client) -> JACK -> ALSA ``type jack`` PCM -> daemon -> ALSA ``type jack`` PCM -> JACK -> FakeCard.
The card's recording is sample-exact (FLOAT_LE through JACK is lossless), so a click played at
frame f comes back at frame f + round trip, every time, and an xrun shows as a break.

The server gets its own name (``JACK_DEFAULT_SERVER``), so it cannot clash with another JACK
server on the machine or with a parallel test run, and ``JACK_NO_AUDIO_RESERVATION=1`` keeps it
off D-Bus. ``jack`` (JACK-Client) is imported only when a card is made.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np


def chrt_prefix(priority: int = 60) -> list[str]:
    """``["chrt", "-f", "60"]`` where SCHED_FIFO can be had (root, or rtprio limits), else []."""
    chrt = shutil.which("chrt")
    if chrt is None:
        return []
    ok = subprocess.run([chrt, "-f", str(priority), "true"], capture_output=True).returncode == 0
    return [chrt, "-f", str(priority)] if ok else []


class JackServer:
    """``jackd -d dummy``: a JACK server with no hardware, paced by a timer."""

    def __init__(self, period: int = 128, rate: int = 48000, name: str | None = None, priority: int = 70,
                 log_path: str | Path | None = None):
        self.period, self.rate = period, rate
        self.name = name or f"pedaltest-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.priority = priority
        self.log_path = Path(log_path) if log_path else Path(f"/tmp/{self.name}.jackd.log")
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {"JACK_DEFAULT_SERVER": self.name, "JACK_NO_AUDIO_RESERVATION": "1"}

    def start(self, timeout_s: float = 10.0) -> "JackServer":
        jackd = shutil.which("jackd")
        if jackd is None:
            raise RuntimeError("jackd not found: apt-get install --no-install-recommends jackd2")
        cmd = [jackd, "-n", self.name]
        cmd += ["-R", "-P", str(self.priority)] if self.priority > 0 else ["-r"]
        cmd += ["-d", "dummy", "-r", str(self.rate), "-p", str(self.period)]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.env()})
        deadline = time.monotonic() + timeout_s
        import jack
        jack.set_error_function(lambda msg: None)  # "cannot connect to server" while it starts: expected
        try:
            self._wait_up(jack, deadline, timeout_s)
        finally:
            jack.set_error_function(None)
        return self

    def _wait_up(self, jack, deadline, timeout_s) -> None:
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jackd exited ({self.proc.returncode}): {self.log_path.read_text()[-2000:]}")
            try:
                probe = jack.Client("probe", servername=self.name, no_start_server=True)
                probe.close()
                return
            except jack.JackError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"jackd did not come up in {timeout_s} s: {self.log_path.read_text()[-2000:]}")
                time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def write_asoundrc(path: str | Path, card: str = "card", channels: int = 2) -> Path:
    """ALSA PCMs ``jackcap`` and ``jackplay``: the daemon's side of the fake card's ports,
    wrapped in ``plug`` so any format and channel count the daemon asks for is converted."""
    cap = " ".join(f'{i} "{card}:capture_{i + 1}"' for i in range(channels))
    play = " ".join(f'{i} "{card}:playback_{i + 1}"' for i in range(channels))
    path = Path(path)
    path.write_text(f"pcm.jackcap {{ type plug slave.pcm {{ type jack capture_ports {{ {cap} }} }} }}\n"
                    f"pcm.jackplay {{ type plug slave.pcm {{ type jack playback_ports {{ {play} }} }} }}\n")
    return path


def alsa_env(asoundrc: str | Path) -> dict[str, str]:
    return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{asoundrc}"}


class FakeCard:
    """A JACK client standing in for the sound card: ``capture_N`` ports carry ``signal`` (what the
    guitar plays; mono on capture_1, silence on the others), ``playback_N`` ports are recorded.

    ``signal`` loops when ``loop`` (a soak), else silence follows it. The recording (first
    playback channel, ``record_s`` long; 0: none) and the play position share one clock: frame f
    of ``recording`` came back while frame f of the (looped) signal went out. ``xruns`` counts the
    JACK server's xrun notifications, ``xrun_frames`` says where they fell.
    """

    def __init__(self, server_name: str, signal: np.ndarray, record_s: float = 10.0, rate: int = 48000,
                 channels: int = 2, name: str = "card", loop: bool = True):
        import jack
        self.signal = np.ascontiguousarray(signal, np.float32)
        self.loop = loop
        self.client = jack.Client(name, servername=server_name, no_start_server=True)
        if self.client.samplerate != rate:
            raise RuntimeError(f"JACK runs at {self.client.samplerate} Hz, not {rate}")
        self.outs = [self.client.outports.register(f"capture_{i + 1}") for i in range(channels)]
        self.ins = [self.client.inports.register(f"playback_{i + 1}") for i in range(channels)]
        self.recording = np.zeros(int(record_s * rate), np.float32)
        self.recording_ch2 = np.zeros(len(self.recording), np.float32)
        self.pos = 0
        self.xruns = 0
        self.xrun_frames: list[int] = []
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)

    def _process(self, frames: int) -> None:
        p, sig, n = self.pos, self.signal, len(self.signal)
        out = self.outs[0].get_array()
        if self.loop:
            i = p % n
            if i + frames <= n:
                out[:] = sig[i:i + frames]
            else:
                k = n - i
                out[:k] = sig[i:]
                out[k:] = sig[:frames - k]
        elif p + frames <= n:
            out[:] = sig[p:p + frames]
        else:
            out.fill(0.0)
            if p < n:
                out[:n - p] = sig[p:]
        for port in self.outs[1:]:
            port.get_array().fill(0.0)
        if p + frames <= len(self.recording):
            self.recording[p:p + frames] = self.ins[0].get_array()
            if len(self.ins) > 1:
                self.recording_ch2[p:p + frames] = self.ins[1].get_array()
        self.pos = p + frames

    def _xrun(self, delayed_usecs: float) -> None:
        self.xruns += 1
        self.xrun_frames.append(self.pos)

    def start(self) -> "FakeCard":
        self.client.activate()
        return self

    def stop(self) -> None:
        try:
            self.client.deactivate()
        finally:
            self.client.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
