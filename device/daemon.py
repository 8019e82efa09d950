"""The pedal daemon: ALSA capture -> engine -> ALSA playback, knobs, footswitch, LED, faults.

Two threads. The audio thread does nothing but read a period, run the engine over it and
write the period (no allocation of buffers, no file I/O, no logging, no locks; real-time
priority and locked memory where the system allows). The monitor thread does everything else:
logs what the audio thread counted (xruns, a lost device, engine faults), answers the status
socket, tells systemd it is ready and pings its watchdog while the audio thread is alive, drives
the LED, and loads new bundles on a helper thread.

What the player hears when something goes wrong:

    xrun (the box was late)        one period of sound lost, both streams restarted as at start-up,
                                   so the latency afterwards is what it was
    compute overrun, NaN/Inf,      the engine crossfades to the dry signal, resets the model and
    model crash                    fades back in once it is healthy (engine.py)
    sound card gone                silence (nothing can play), retried with back-off from 50 ms to
                                   2 s; the sound fades back in when the card returns
    bad bundle on a hot swap       nothing: the current model keeps playing; the LED blinks
    knob ADC gone                  nothing: knobs hold their last good positions; the LED blinks
"""
from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import select
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np

from .audio import AlsaDuplex, AlsaError, DeviceLost
from .atomic import atomic_path, write_atomic
from .bundle import Bundle, BundleError, load_bundle
from .engine import Engine

log = logging.getLogger("pedal")

XRUN_CAPTURE, XRUN_PLAYBACK, XRUN_DRIFT = 0, 1, 2
FAULT_LED_S = 5.0  # a refused bundle blinks the LED this long


def setup_realtime(priority: int, lock_memory: bool, cpu: int = -1) -> list[str]:
    """For the calling thread: SCHED_FIFO ``priority`` and pinning to ``cpu``; for the process:
    mlockall. -> what could not be had (said at start-up)."""
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


HELPER_PRIORITY = 1  # SCHED_FIFO priority of the helper threads, far below the audio thread's


def helpers_priority(audio_priority: int) -> tuple[int, str]:
    """Set the calling (main) thread's scheduling for the helper threads it will start (threads
    inherit their creator's policy); -> (the SCHED_FIFO/RR priority it had, what it is now).

    systemd (CPUSchedulingPolicy=fifo) or ``chrt`` start the whole process at the audio thread's
    priority; helpers (monitor, knob poller, bundle loader, gpiozero's) must not compete with it.
    But they must not sink below ordinary processes either: a helper holding Python's GIL and
    preempted by some other busy process keeps the audio thread waiting for the GIL for a whole
    time slice, longer than a period. So with a real-time audio thread, helpers run at
    SCHED_FIFO 1: above every ordinary process, below the audio thread; they sleep nearly all
    the time. Without one (priority 0), they run as ordinary threads."""
    had = 0
    try:
        if os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
            had = os.sched_getparam(0).sched_priority
    except OSError:
        pass
    if audio_priority > HELPER_PRIORITY:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(HELPER_PRIORITY))
            return had, f"SCHED_FIFO {HELPER_PRIORITY}" + _lower_started_threads(HELPER_PRIORITY)
        except OSError:
            pass
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        pass
    return had, "normal" + _lower_started_threads(0)


def _lower_started_threads(priority: int) -> str:
    """Threads the process already has (numpy's OpenBLAS pool starts at import, before the daemon
    runs: under systemd 3 of them on a 4-core Pi would sit at the audio thread's SCHED_FIFO 70) get
    the helpers' scheduling too: SCHED_FIFO ``priority``, or ordinary for 0. -> a note for the log."""
    me = threading.get_native_id()
    lowered = 0
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return ""
    for tid in tids:
        if tid == me:
            continue
        try:
            if os.sched_getscheduler(tid) not in (os.SCHED_FIFO, os.SCHED_RR) or \
                    os.sched_getparam(tid).sched_priority <= priority:
                continue
            if priority > 0:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
            else:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            lowered += 1
        except OSError:  # gone since, or not ours to change
            continue
    return f" ({lowered} thread(s) started before, lowered to it)" if lowered else ""


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

    def block(self, hop_index: int, hops: int) -> np.ndarray:
        """The rows of ``hops`` hops from ``hop_index`` (hops, K), the last row held past the end."""
        end = len(self.rows)
        if hop_index + hops <= end:
            return self.rows[hop_index:hop_index + hops]
        if hop_index >= end - 1:
            return self.rows[-1]
        # the automation ends inside this period (once)
        return np.concatenate([self.rows[hop_index:], np.repeat(self.rows[-1:], hop_index + hops - end, 0)])


class LiveKnobs:
    """Knob positions from a KnobPoller (pots, MIDI, file): the poller thread writes, we read."""

    def __init__(self, positions: np.ndarray):
        self.positions = positions

    def at(self, hop_index: int) -> np.ndarray:
        return self.positions

    def block(self, hop_index: int, hops: int) -> np.ndarray:
        return self.positions  # held for the period; the engine glides towards it


class PassThrough:
    """An engine that does nothing: input to output. ``run --passthrough`` checks the audio path
    without a model, and the soak benchmark compares the daemon with it."""

    bundle = None
    mix, fault_hops, bypassed = 1.0, 0, False
    model_s = 0.0

    def __init__(self, hop: int = 64, sample_rate: int = 48000):
        self.hop, self.sample_rate = hop, sample_rate
        self.knobs = np.zeros(0, np.float32)
        self.counts = {"hops": 0}

    def process_hop(self, x: np.ndarray, knob_positions: np.ndarray) -> np.ndarray:
        self.counts["hops"] += 1
        return x

    def process(self, x: np.ndarray, knob_positions: np.ndarray, out: np.ndarray) -> np.ndarray:
        out[:] = x
        self.counts["hops"] += len(x) // self.hop
        return out

    def prepare(self, x, out) -> None:
        pass

    def set_bypass(self, on: bool) -> None:
        self.bypassed = on

    def prime(self, knob_positions) -> None:
        pass

    def drain_events(self) -> list[str]:
        return []


def warm_up(engine, hops: int = 16) -> None:
    """Run the model a few hops on silence before the audio starts: the first invokes of an
    interpreter are slow (delegate set-up, first touches of its arenas), and a slow first period
    is an xrun at start-up. The model state is reset afterwards."""
    runner = getattr(engine, "runner", None)
    if runner is None:
        return
    silence = np.zeros(engine.hop, np.float32)
    for _ in range(hops):
        runner.step(silence, engine.knobs)
    runner.reset()


def read_choice(choice, configured) -> Path | None:
    """The bundle last switched to (``remember_choice``), when it still applies: it was recorded
    while the config named ``configured`` (a config edited since wins: the user asked for that
    bundle) and it is still there. None otherwise, or when ``choice`` is off ("" / None)."""
    if not choice or not Path(choice).exists():
        return None
    try:
        d = json.loads(Path(choice).read_text())
        chosen, was = Path(str(d["bundle"])), str(d["configured"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s); starting with the configured bundle", choice, e)
        return None
    if was != str(configured):
        log.info("%s: chosen while the config named %s, now %s: the config's bundle wins", choice, was, configured)
        return None
    if not chosen.exists():
        log.warning("%s: the chosen bundle %s is gone; starting with the configured one", choice, chosen)
        return None
    return None if chosen == Path(configured) else chosen


def remember_choice(choice, path, configured) -> bool:
    """Record ``path`` as the bundle to start with while the config names ``configured``: written
    atomically (device/atomic.py), so a power cut leaves the old choice or the new one. Nothing is
    written when the record already says so (an SD card wears). -> whether it was written."""
    if not choice or configured is None:
        return False
    record = {"bundle": str(Path(path)), "configured": str(configured)}
    try:
        if json.loads(Path(choice).read_text()) == record:
            return False
    except (OSError, ValueError):
        pass
    write_atomic(choice, json.dumps(record) + "\n", mode=0o664)
    return True


def start_bundle(path, last_good=None, chosen=None) -> tuple[Bundle, str | None]:
    """The bundle the daemon starts with: the one last chosen (``chosen``: the footswitch, the
    status socket's ``load``, the web page; see ``read_choice``), else the configured ``path``,
    or, when that one is partial or bad (a copy cut off by a power cut, a broken file), the last
    good copy at ``last_good``. -> (bundle, None), or (the bundle it fell back to, why the one
    before it was refused). Raises BundleError when none loads."""
    chosen_refused = None
    if chosen is not None:
        try:
            return load_bundle(chosen), None
        except BundleError as e:
            chosen_refused = f"chosen bundle refused ({e}); started from the configured bundle {path}"
    try:
        return load_bundle(path), chosen_refused
    except BundleError as e:
        if not last_good or not Path(last_good).is_file():
            raise
        try:
            bundle = load_bundle(last_good)
        except BundleError as e2:
            raise BundleError(f"{e}; the last good copy is refused too: {e2}") from None
        return bundle, (f"configured bundle refused ({e}); started from the last good bundle {last_good} "
                        f"({bundle.manifest.effect})")


def remember_good(bundle: Bundle, last_good) -> bool:
    """Keep a copy of ``bundle``'s archive at ``last_good`` for ``start_bundle``: written atomically
    and durably, and checked before it replaces the previous copy (the source may be overwritten
    while we copy). -> whether a new copy was written (False: no archive, or the same bundle)."""
    src = bundle.source
    if not last_good or src is None or not Path(src).is_file():
        return False
    last_good = Path(last_good)
    if last_good.exists() and last_good.resolve() == Path(src).resolve():
        return False
    if last_good.is_file():
        try:
            kept = load_bundle(last_good)
            shutil.rmtree(kept.root, ignore_errors=True)
            if kept.manifest.files == bundle.manifest.files:
                return False  # the same bundle: no write (an SD card wears)
        except BundleError:
            pass  # a bad copy: replace it
    with atomic_path(last_good, mode=0o664) as tmp:
        shutil.copyfile(src, tmp)
        copy = load_bundle(tmp)
        shutil.rmtree(copy.root, ignore_errors=True)
        if copy.manifest.files != bundle.manifest.files:
            raise BundleError(f"{src} changed while it was copied to {last_good}; the previous copy is kept")
    return True


class Daemon:
    def __init__(self, engine: Engine, duplex: AlsaDuplex, knobs, status_socket: Path | None = None,
                 bundles: list[Path] | None = None, engine_kwargs: dict | None = None, led=None, poller=None,
                 stats_periods: int = 1 << 16, reload_path=None, watchdog: bool = True, fade_ms: float = 10.0,
                 max_backoff_s: float = 2.0, last_good=None, choice=None):
        if duplex.period % engine.hop:
            raise AlsaError(f"period {duplex.period} frames is not a multiple of the model's hop {engine.hop}")
        self.engine, self.duplex, self.knobs = engine, duplex, knobs
        P, H = duplex.period, engine.hop
        self.hops_per_period = P // H
        self.out_period = np.zeros(P, np.float32)
        engine.prepare(duplex.mono_in, self.out_period)  # the engine cuts the period into hops once
        self.period_s = P / duplex.rate
        # Rings the audio thread writes and the monitor (or `run --stats`) reads: one entry per period.
        self.ring = max(int(stats_periods), 1024)
        self.work_s = np.zeros(self.ring, np.float32)  # read returned -> period encoded for playback
        self.t_period = np.zeros(self.ring, np.float64)  # perf_counter() when each period arrived
        self.model_s = np.zeros(self.ring, np.float32)  # of work_s, the model's steps (the engine's model_s)
        self.xrun_at = np.zeros(256, np.int64)  # periods_done at each xrun
        # After the card comes back, the output fades in from silence (the input restarts mid-waveform).
        fade_n = max(1, int(fade_ms * duplex.rate / 1000))
        self.fade_periods = -(-fade_n // P)
        self.fade = np.ones(self.fade_periods * P, np.float32)
        self.fade[:fade_n] = np.arange(1, fade_n + 1, dtype=np.float32) / fade_n
        self.fade_views = [self.fade[k * P:(k + 1) * P] for k in range(self.fade_periods)]
        self.fade_left = 0
        self.periods_done = 0
        self.hop_index = 0
        self.heartbeat = 0  # advances on every pass of the audio loop, back-off included (watchdog)
        self.xruns = 0
        self.xrun_kinds = [0, 0, 0]  # capture overruns, playback underruns, latency drifts (audio.py)
        self.device_lost = self.device_back = self.reopen_failures = 0
        self.device_down = False
        self.lost_reason = ""
        self.lost_since = 0.0
        self.max_backoff_s = max_backoff_s
        self.running = False
        self.user_bypass = False
        self.pending: Engine | None = None
        self.swaps = 0
        self.status_socket = status_socket
        self.bundles = bundles or []
        self.bundle_index = 0
        self.engine_kwargs = engine_kwargs or {}
        self.led, self.poller = led, poller
        self.reload_path = reload_path  # () -> the configured bundle path (SIGHUP, "reload")
        self.last_good = last_good  # where a copy of each bundle that passes its self-check is kept
        self.choice = choice  # where the bundle last switched to is recorded, to start with it again
        self.watchdog = watchdog
        self.fault_until = 0.0
        self.last_load: dict | None = None
        self.ready = False
        self.started = time.time()
        self.stall_s = 0.0
        self.test_hooks = os.environ.get("PEDAL_TEST_HOOKS") == "1"
        from .remote import keep_log_tail
        keep_log_tail()  # the last log lines from here on, for the status socket's "panel"

    # --- audio thread ------------------------------------------------------------------------------
    def run(self, max_periods: int = 0) -> None:
        """The audio loop; returns after ``max_periods`` periods (0 = until ``stop``)."""
        d, hops = self.duplex, self.hops_per_period
        self.running = True
        self.work_s.fill(0.0)  # touch every page now: a first write to a fresh page is a pause
        self.t_period.fill(0.0)
        self.model_s.fill(0.0)
        gc.collect()
        gc.freeze()
        gc.disable()  # the loop creates no cyclic garbage; a collection would be a pause of our own making
        try:
            while self.running and (max_periods == 0 or self.periods_done < max_periods):
                self.heartbeat += 1
                try:
                    n = d.read()
                    if n < 0:
                        self._xrun(XRUN_DRIFT if n == -2 else XRUN_CAPTURE)
                        continue
                    if self.stall_s > 0.0:  # test hook (PEDAL_TEST_HOOKS=1, "stall MS"): a late period, on purpose
                        time.sleep(self.stall_s)
                        self.stall_s = 0.0
                    if self.pending is not None:
                        self._swap_step()
                    self.engine.process(d.mono_in, self.knobs.block(self.hop_index, hops), self.out_period)
                    self.hop_index += hops
                    if self.fade_left:
                        self.out_period *= self.fade_views[self.fade_periods - self.fade_left]
                        self.fade_left -= 1
                    d.encode(self.out_period)
                    i = self.periods_done % self.ring
                    self.work_s[i] = time.perf_counter() - d.t_in
                    self.t_period[i] = d.t_in
                    self.model_s[i] = self.engine.model_s
                    if d.write_encoded() < 0:
                        self._xrun(XRUN_PLAYBACK)
                        continue
                    self.periods_done += 1
                except DeviceLost as e:
                    self._device_lost(e)
        finally:
            gc.enable()
            self.running = False

    def _xrun(self, kind: int) -> None:
        """Count it (the monitor logs it) and restart both streams as at start-up."""
        self.xrun_at[self.xruns % len(self.xrun_at)] = self.periods_done
        self.xrun_kinds[kind] += 1
        self.xruns += 1
        self.duplex.recover()

    def _device_lost(self, e: Exception) -> None:
        """The card failed: close it and try to open it again, waiting longer each time (50 ms
        doubling to ``max_backoff_s``), until it answers or the daemon stops. This is the fault
        path, so it may allocate; the monitor thread does the logging."""
        self.lost_reason = str(e)
        self.lost_since = time.monotonic()
        self.device_down = True
        self.device_lost += 1
        self.duplex.close()
        backoff = 0.05
        while self.running:
            waited = 0.0
            while waited < backoff and self.running:
                time.sleep(0.05)
                waited += 0.05
                self.heartbeat += 1  # alive and retrying: the watchdog stays fed
            try:
                self.duplex.reopen()
            except AlsaError as e2:
                self.reopen_failures += 1
                self.lost_reason = str(e2)
                self.duplex.close()
                backoff = min(2 * backoff, self.max_backoff_s)
                continue
            # The input restarts wherever the guitar is: fresh model state, output faded in.
            self.engine.prime(self.engine.knobs)
            self.fade_left = self.fade_periods
            self.device_down = False
            self.device_back += 1
            return

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
        self.swaps += 1

    def stop(self) -> None:
        self.running = False

    # --- control (any thread) ------------------------------------------------------------------------
    def set_bypass(self, on: bool) -> None:
        self.user_bypass = bool(on)
        self.engine.set_bypass(self.user_bypass)
        self._show_led()

    def toggle_bypass(self) -> None:
        self.set_bypass(not self.user_bypass)

    def next_bundle(self) -> None:
        if self.bundles:
            self.bundle_index = (self.bundle_index + 1) % len(self.bundles)
            self.load_async(self.bundles[self.bundle_index])

    def reload(self) -> threading.Thread | None:
        """Load the configured bundle again (SIGHUP): a new file at the same path, or a new path in the config."""
        if self.reload_path is None:
            log.warning("reload: no configured bundle to reload")
            return None
        try:
            path = self.reload_path()
        except Exception as e:  # a config edited into something invalid: keep playing what we have
            log.error("reload refused, keeping the current bundle: %s", e)
            self._refused(str(e), None)
            return None
        log.info("reload: loading %s", path)
        return self.load_async(path)

    def load_async(self, path: Path) -> threading.Thread:
        """Load and self-check a bundle off the audio thread; swap it in only if it passes."""
        path = Path(path)

        def work():
            try:
                t = [time.perf_counter()]
                bundle = load_bundle(path)
                t.append(time.perf_counter())
                from .selftest import check_golden
                result = check_golden(bundle, self.engine_kwargs.get("precision"))
                t.append(time.perf_counter())
                if not result["ok"]:
                    raise BundleError(f"{path}: golden vectors fail ({result['snr_db']:.1f} dB < {result['snr_db_min']} dB)")
                engine = Engine(bundle, **self.engine_kwargs)
                engine.budget_s = getattr(self.engine, "budget_s", 0.0)
                warm_up(engine)  # its first invokes are slow: not in the audio thread's period
                engine.prepare(self.duplex.mono_in, self.out_period)
                t.append(time.perf_counter())
                log.debug("bundle %s: loaded in %.0f ms, golden vectors %.0f ms, engine %.0f ms", path,
                          *(1000 * np.diff(t)))
                if engine.hop != self.engine.hop or engine.sample_rate != self.engine.sample_rate:
                    raise BundleError(f"{path}: hop {engine.hop} / {engine.sample_rate} Hz differs from the running "
                                      f"{self.engine.hop} / {self.engine.sample_rate} Hz")
                self.pending = engine
                self.last_load = {"path": str(path), "ok": True, "message": "passed its self-check; crossfading to it",
                                  "at": time.time()}
                log.info("bundle %s passed its self-check (%.1f dB vs PyTorch); crossfading to it", path, result["snr_db"])
                try:
                    if remember_good(bundle, self.last_good):
                        log.info("bundle %s kept as the last good bundle (%s)", path, self.last_good)
                except (OSError, BundleError) as e:
                    log.warning("no last good copy of %s: %s", path, e)
                try:
                    configured = self.reload_path() if self.reload_path is not None else None
                    if remember_choice(self.choice, path, configured):
                        log.info("bundle %s recorded in %s: the daemon starts with it after a restart", path, self.choice)
                except Exception as e:  # a config edited into something invalid, a full card: keep playing
                    log.warning("the choice of %s is not recorded: %s", path, e)
            except Exception as e:  # any failure (bad archive, missing file, bad model): refuse, keep playing
                log.error("bundle refused, keeping the current one: %s", e)
                self._refused(str(e), path)
        t = threading.Thread(target=work, name="bundle-loader", daemon=True)
        t.start()
        return t

    def _refused(self, message: str, path) -> None:
        self.last_load = {"path": str(path) if path else None, "ok": False, "message": message, "at": time.time()}
        self.fault_until = time.monotonic() + FAULT_LED_S
        self._show_led()

    def command(self, line: str) -> dict:
        """One line from the status socket -> the reply.

        ``status`` (or nothing), ``bypass [on|off|toggle]``, ``load PATH``, ``reload`` (the
        configured bundle, like SIGHUP), ``next`` (the next bundle in bundles_dir); for remote
        panels (remote.py): ``panel``, ``knobs``, ``knob NAME VALUE|pot``."""
        words = line.strip().split(maxsplit=1)
        cmd, arg = (words[0].lower() if words else "status"), (words[1].strip() if len(words) > 1 else "")
        if cmd == "status":
            return self.status()
        if cmd == "bypass":
            if arg not in ("", "on", "off", "toggle"):
                return {"ok": False, "error": f"bypass {arg!r}: say on, off or toggle"}
            self.set_bypass(arg == "on" if arg in ("on", "off") else not self.user_bypass)
            return {"ok": True, "bypassed": self.user_bypass}
        if cmd == "load":
            if not arg:
                return {"ok": False, "error": "load needs a bundle path"}
            self.load_async(Path(arg))
            return {"ok": True, "loading": arg}
        if cmd == "reload":
            return {"ok": self.reload() is not None}
        if cmd == "stall" and self.test_hooks:
            self.stall_s = float(arg or 50) / 1000
            return {"ok": True, "stall_ms": float(arg or 50)}
        if cmd == "next":
            self.next_bundle()
            return {"ok": bool(self.bundles), "bundles": [str(b) for b in self.bundles]}
        if cmd in ("panel", "knobs", "knob"):
            from . import remote
            return remote.command(self, cmd, arg)
        return {"ok": False, "error": f"unknown command {cmd!r}: status, bypass [on|off|toggle], load PATH, reload, "
                                      "next, panel, knobs, knob NAME VALUE|pot"}

    # --- monitor thread -------------------------------------------------------------------------------
    def latency_frames(self) -> int:
        """Input to output, in frames: the ALSA periods, plus whatever of the model's own latency its
        hop does not already cover (the period is a whole number of hops, so the hop's buffering is
        inside the period's)."""
        m = self.engine.bundle.manifest if self.engine.bundle is not None else None
        extra = max(0, m.latency_samples - m.hop) if m is not None else 0
        return self.duplex.period * self.duplex.periods + extra

    def led_state(self) -> str:
        poller_fault = self.poller is not None and self.poller.faulty
        if self.engine.fault_hops > 0 or self.device_down or poller_fault or time.monotonic() < self.fault_until:
            return "fault"
        return "bypass" if self.user_bypass else "on"

    def _show_led(self) -> None:
        if self.led is not None:
            self.led.show(self.led_state())

    def status(self, recent: int = 0) -> dict:
        """The daemon's state; the load figures over every period the ring holds, or over the last
        ``recent`` periods only. A percentile of the whole ring holds Python's lock for a
        millisecond or more (longer on a Pi) while the audio thread may be waiting for it: a panel
        that polls asks for a few seconds' worth (remote.py)."""
        n = min(self.periods_done, self.ring)
        if recent and n > recent:
            work = self.work_s[np.arange(self.periods_done - recent, self.periods_done) % self.ring]
        else:
            work = self.work_s[:n] if n else np.zeros(1, np.float32)
        e = self.engine
        m = e.bundle.manifest if e.bundle is not None else None
        knobs = {k.name: round(k.from_normalized(float(p)), 4) for k, p in zip(m.knobs, e.knobs)} if m else {}
        st = {"effect": m.effect if m else "pass-through", "bundle": str(e.bundle.root) if m else None,
              "bypassed": self.user_bypass, "mix": round(e.mix, 3), "in_fault": e.fault_hops > 0, "knobs": knobs,
              "periods": self.periods_done, "xruns": self.xruns,
              "xrun_kinds": {"capture_overrun": self.xrun_kinds[0], "playback_underrun": self.xrun_kinds[1],
                             "latency_drift": self.xrun_kinds[2]},
              "device_lost": self.device_lost, "device_down": self.device_down, "device_back": self.device_back,
              "engine_faults": dict(e.counts),
              "load_median": float(np.median(work) / self.period_s),
              "load_p99": float(np.percentile(work, 99) / self.period_s),
              "load_max": float(work.max() / self.period_s),
              "period": self.duplex.period, "periods_buffered": self.duplex.periods, "rate": self.duplex.rate,
              "latency_frames": self.latency_frames(),
              "latency_ms": round(1000 * self.latency_frames() / self.duplex.rate, 2),
              "swaps": self.swaps, "swap_pending": self.pending is not None, "last_load": self.last_load,
              "led": self.led_state(), "uptime_s": round(time.time() - self.started, 1)}
        if self.poller is not None:
            st["knob_faults"] = {name: self.poller.fault_counts[i] for i, name, _ in self.poller.processor.pots}
            st["knobs_in_fault"] = [name for i, name, _ in self.poller.processor.pots if self.poller.in_fault[i]]
        return st

    def _open_server(self):
        if not self.status_socket:
            return None
        path = Path(self.status_socket)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(path))
            os.chmod(path, 0o660)  # the daemon's user and group (pedal) may ask; nobody else
            server.listen(4)
            return server
        except OSError as e:
            log.warning("no status socket at %s: %s", path, e)
            return None

    def _serve(self, server) -> None:
        """Answer one client: read its command line (or none), send one JSON line."""
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            try:
                conn.settimeout(0.5)
                data = b""
                try:
                    while b"\n" not in data and len(data) < 4096:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except socket.timeout:
                    pass
                reply = self.command(data.decode(errors="replace"))
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except Exception as e:  # a client that misbehaves must not take the monitor down
                log.warning("status socket: %s", e)

    def monitor(self, interval_s: float = 0.1) -> None:
        """Run until the audio loop ends: logs, xruns, systemd notify + watchdog, status socket, LED."""
        server = self._open_server()
        seen = {"xruns": 0, "lost": 0, "back": 0, "failures": 0}
        last_hb, hb_changed, last_ping = -1, time.monotonic(), 0.0
        while self.running:
            if server is not None:
                readable, _, _ = select.select([server], [], [], interval_s)
                if readable:
                    self._serve(server)
            else:
                time.sleep(interval_s)
            self._report(seen)
            now = time.monotonic()
            if not self.ready and self.periods_done > 0:  # audio flows: tell systemd we are up
                self.ready = True
                sd_notify(f"READY=1\nSTATUS=playing {self.status()['effect']}")
            if self.heartbeat != last_hb:
                last_hb, hb_changed = self.heartbeat, now
            # ping only while the audio thread is alive (a period done, or a retry, in the last 0.5 s):
            # a loop stuck inside ALSA starves the watchdog and systemd restarts the daemon
            if self.watchdog and self.ready and now - hb_changed < 0.5 and now - last_ping >= 0.5:
                sd_notify("WATCHDOG=1")
                last_ping = now
            self._show_led()
        self._report(seen)
        if server is not None:
            server.close()
            Path(self.status_socket).unlink(missing_ok=True)

    def _report(self, seen: dict) -> None:
        """Log what happened since the last call (monitor thread only)."""
        for msg in self.engine.drain_events():
            (log.info if "back" in msg or "bypass" in msg else log.warning)("engine: %s", msg)
        if self.xruns != seen["xruns"]:
            new = self.xruns - seen["xruns"]
            log.warning("xrun: %d new, %d so far (%d capture overruns, %d playback underruns, %d latency drifts); "
                        "both streams restarted, latency %d frames as before", new, self.xruns, *self.xrun_kinds,
                        self.latency_frames())
            seen["xruns"] = self.xruns
        if self.device_lost != seen["lost"]:
            log.error("ALSA device lost: %s; retrying with back-off (50 ms to %.0f s)", self.lost_reason,
                      self.max_backoff_s)
            seen["lost"] = self.device_lost
        if self.reopen_failures != seen["failures"]:
            failures = self.reopen_failures
            if failures & (failures - 1) == 0:  # 1, 2, 4, 8 ... failures: say it, but not every time
                log.warning("ALSA device still missing after %d tries: %s", failures, self.lost_reason)
            seen["failures"] = failures
        if self.device_back != seen["back"]:
            log.info("ALSA device back after %.1f s; playing again", time.monotonic() - self.lost_since)
            seen["back"] = self.device_back


def query_status(path: str | Path, command: str = "status", timeout_s: float = 2.0) -> dict:
    """Send one command line to a running daemon's status socket; -> its JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(path))
        s.sendall(command.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)
