"""The pedal daemon: ALSA capture -> engine -> ALSA playback, knobs, footswitch, LED, faults.

Two threads. The audio thread does nothing but read a period, run the engine hop by hop and
write the period (no allocation of buffers, no file I/O, no logging, no locks; real-time
priority and locked memory where the system allows). The monitor thread does everything else:
logs the engine's and the knobs' events, counts xruns, answers status requests, pings the
systemd watchdog only while the audio thread is making progress, and loads new bundles.
"""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

from .audio import AlsaDuplex, AlsaError
from .bundle import BundleError, load_bundle
from .engine import Engine

log = logging.getLogger("pedal")


def setup_realtime(priority: int, lock_memory: bool, cpu: int = -1) -> list[str]:
    """Ask for SCHED_FIFO, mlockall and a CPU; -> what could not be had (said at start-up)."""
    missing = []
    if cpu >= 0:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as e:
            missing.append(f"CPU pinning to core {cpu} ({e.strerror})")
    if priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except (PermissionError, OSError) as e:
            missing.append(f"real-time priority SCHED_FIFO {priority} ({e.strerror or e}); "
                           "run under systemd (pedal.service) or with rtprio limits for group audio")
    if lock_memory:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.mlockall(1 | 2) != 0:  # MCL_CURRENT | MCL_FUTURE
            missing.append(f"locked memory ({os.strerror(ctypes.get_errno())}); raise LimitMEMLOCK")
    return missing


def sd_notify(message: str) -> bool:
    """systemd's notify protocol (READY=1, WATCHDOG=1, STATUS=...) without libsystemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
        return True
    except OSError:
        return False


class AutomationKnobs:
    """Knob positions per hop from an automation (files, tests, the demo): exact and repeatable."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows.astype(np.float32)

    def at(self, hop_index: int) -> np.ndarray:
        return self.rows[min(hop_index, len(self.rows) - 1)]


class LiveKnobs:
    """Knob positions from a KnobPoller (pots, MIDI, file): the poller thread writes, we read."""

    def __init__(self, positions: np.ndarray):
        self.positions = positions

    def at(self, hop_index: int) -> np.ndarray:
        return self.positions


class Daemon:
    def __init__(self, engine: Engine, duplex: AlsaDuplex, knobs, status_socket: Path | None = None,
                 bundles: list[Path] | None = None, engine_kwargs: dict | None = None, led=None):
        if duplex.period % engine.hop:
            raise AlsaError(f"period {duplex.period} frames is not a multiple of the model's hop {engine.hop}")
        self.engine, self.duplex, self.knobs = engine, duplex, knobs
        self.hops_per_period = duplex.period // engine.hop
        H = engine.hop
        self.in_views = [duplex.mono_in[h * H:(h + 1) * H] for h in range(self.hops_per_period)]
        self.out_period = np.zeros(duplex.period, np.float32)
        self.out_views = [self.out_period[h * H:(h + 1) * H] for h in range(self.hops_per_period)]
        self.period_s = duplex.period / duplex.rate
        self.work_s = np.zeros(1 << 16, np.float32)  # per-period work time ring (benchmarks, status)
        self.periods_done = 0
        self.xruns = 0
        self.running = False
        self.user_bypass = False
        self.pending: Engine | None = None
        self.status_socket = status_socket
        self.bundles = bundles or []
        self.bundle_index = 0
        self.engine_kwargs = engine_kwargs or {}
        self.led = led
        self.started = time.time()

    # --- audio thread ------------------------------------------------------------------------------
    def run(self, max_periods: int = 0) -> None:
        """The audio loop; returns after ``max_periods`` periods (0 = until ``stop``)."""
        d, hops, H = self.duplex, self.hops_per_period, self.engine.hop
        self.running = True
        d.prefill()
        gc.collect()
        gc.freeze()
        gc.disable()  # the loop creates no cyclic garbage; a collection would be a pause of our own making
        hop_index = 0
        try:
            while self.running and (max_periods == 0 or self.periods_done < max_periods):
                n = d.read()
                t0 = time.perf_counter()
                if n < 0:
                    self.xruns += 1
                    d.recover()
                    continue
                if self.pending is not None:
                    self._swap_step()
                engine = self.engine
                for h in range(hops):
                    self.out_views[h][:] = engine.process_hop(self.in_views[h], self.knobs.at(hop_index))
                    hop_index += 1
                self.work_s[self.periods_done & 0xFFFF] = time.perf_counter() - t0
                d.write(self.out_period)
                self.periods_done += 1
        finally:
            gc.enable()
            self.running = False

    def _swap_step(self) -> None:
        """Hot swap with a crossfade: fade the current engine to dry, then fade the new one in."""
        if self.engine.mix > 0.0:
            self.engine.set_bypass(True)
            return
        new, self.pending = self.pending, None
        new.bypassed = True
        new.prime(self.engine.knobs)  # starts dry (mix 0) ...
        new.set_bypass(self.user_bypass)  # ... and ramps in unless the player has bypass on
        self.engine = new

    def stop(self) -> None:
        self.running = False

    # --- control (any thread) ------------------------------------------------------------------------
    def toggle_bypass(self) -> None:
        self.user_bypass = not self.user_bypass
        self.engine.set_bypass(self.user_bypass)
        if self.led is not None:
            self.led.show("bypass" if self.user_bypass else "on")

    def next_bundle(self) -> None:
        if self.bundles:
            self.bundle_index = (self.bundle_index + 1) % len(self.bundles)
            self.load_async(self.bundles[self.bundle_index])

    def load_async(self, path: Path) -> threading.Thread:
        """Load and self-check a bundle off the audio thread; swap it in only if it passes."""
        def work():
            try:
                bundle = load_bundle(path)
                from .selftest import check_golden
                result = check_golden(bundle, self.engine_kwargs.get("precision"))
                if not result["ok"]:
                    raise BundleError(f"{path}: golden vectors fail ({result['snr_db']:.1f} dB < {result['snr_db_min']} dB)")
                engine = Engine(bundle, **self.engine_kwargs)
                if engine.hop != self.engine.hop or engine.sample_rate != self.engine.sample_rate:
                    raise BundleError(f"{path}: hop {engine.hop} / {engine.sample_rate} Hz differs from the running "
                                      f"{self.engine.hop} / {self.engine.sample_rate} Hz")
                self.pending = engine
                log.info("bundle %s passed its self-check; crossfading to it", path)
            except (BundleError, OSError, ValueError) as e:
                log.error("bundle refused, keeping the current one: %s", e)
                if self.led is not None:
                    self.led.show("fault")
        t = threading.Thread(target=work, name="bundle-loader", daemon=True)
        t.start()
        return t

    # --- monitor thread -------------------------------------------------------------------------------
    def status(self) -> dict:
        n = min(self.periods_done, len(self.work_s))
        work = self.work_s[:n] if n else np.zeros(1, np.float32)
        m = self.engine.bundle.manifest
        return {"effect": m.effect, "bundle": str(self.engine.bundle.root), "bypassed": self.engine.bypassed,
                "in_fault": self.engine.fault_hops > 0, "mix": round(self.engine.mix, 3),
                "knobs": {k.name: round(k.from_normalized(float(p)), 4) for k, p in zip(m.knobs, self.engine.knobs)},
                "periods": self.periods_done, "xruns": self.xruns, "engine_faults": dict(self.engine.counts),
                "load_median": float(np.median(work) / self.period_s), "load_max": float(work.max() / self.period_s),
                "latency_ms": round(1000 * (self.duplex.period * self.duplex.periods + m.latency_samples) / self.duplex.rate, 2),
                "uptime_s": round(time.time() - self.started, 1)}

    def monitor(self, interval_s: float = 0.5) -> None:
        """Run until the audio loop ends: logs, xruns, watchdog, status socket."""
        server = None
        if self.status_socket:
            try:
                Path(self.status_socket).parent.mkdir(parents=True, exist_ok=True)
                if Path(self.status_socket).exists():
                    Path(self.status_socket).unlink()
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.bind(str(self.status_socket))
                server.listen(2)
                server.settimeout(interval_s)
            except OSError as e:
                log.warning("no status socket at %s: %s", self.status_socket, e)
                server = None
        sd_notify("READY=1")
        last_periods, last_xruns = -1, 0
        while self.running:
            if server is not None:
                try:
                    conn, _ = server.accept()
                    with conn:
                        conn.sendall(json.dumps(self.status()).encode() + b"\n")
                except (socket.timeout, OSError):
                    pass
            else:
                time.sleep(interval_s)
            for msg in self.engine.drain_events():
                log.warning("engine: %s", msg) if "back" not in msg and "bypass" not in msg else log.info("engine: %s", msg)
                if self.led is not None:
                    self.led.show("fault" if self.engine.fault_hops > 0 else "bypass" if self.engine.bypassed else "on")
            if self.xruns != last_xruns:
                log.warning("xrun: %d so far (ALSA over/underrun; recovered)", self.xruns)
                last_xruns = self.xruns
            if self.periods_done != last_periods:  # the audio thread is alive: tell systemd
                sd_notify("WATCHDOG=1")
                last_periods = self.periods_done
        if server is not None:
            server.close()
            Path(self.status_socket).unlink(missing_ok=True)


def query_status(path: str | Path, timeout_s: float = 2.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
