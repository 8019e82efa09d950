"""Status-socket commands for remote panels (the web page, a script): what the daemon answers on
its monitor thread, never on the audio thread.

    panel                 status (load over the last PANEL_LOAD_PERIODS periods) + knob specs with values
                          and who sets them + level meters + CPU + log tail
    knobs                 the knob specs with values, positions and who sets them
    knob NAME VALUE       a virtual knob: set NAME to VALUE (physical units, clamped to its range)
    knob NAME pot         hand NAME back to its pot now

Who wins when a pot moves (last mover wins): a virtual knob holds its value for as long as the
pot stays where it was; as soon as the pot is turned past its deadband, the pot takes over from
where it is (KnobPoller.override). A knob with no pot keeps the virtual value until the next
one. With a knob automation file (``run --knobs``) the automation drives the knobs and virtual
knobs are refused.

Level meters are the peak and RMS of the last period in and out (dBFS), read from the daemon's
own buffers when asked: the audio thread does no extra work for them. The log tail is the last
lines of the daemon's log, kept in memory by a logging handler (the audio thread never logs).
"""
from __future__ import annotations

import collections
import logging
import math
import time

import numpy as np

LOG_TAIL_LINES = 200
# The panel's load figures cover the last this many periods (5.5 s at 128 frames): a few seconds
# of live load, and a percentile cheap enough to ask for several times a second (Daemon.status).
PANEL_LOAD_PERIODS = 2048


class LogTail(logging.Handler):
    """The last ``LOG_TAIL_LINES`` log lines, for the panel."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))

    def emit(self, record):
        try:
            self.lines.append(self.format(record))
        except Exception:  # a bad format argument must not take the logger down
            self.handleError(record)


_tail: LogTail | None = None


def keep_log_tail() -> LogTail:
    """Install the in-memory log tail on the root logger (once per process)."""
    global _tail
    if _tail is None:
        _tail = LogTail()
        logging.getLogger().addHandler(_tail)
    return _tail


def level_db(x: np.ndarray) -> tuple[float, float]:
    """(peak, RMS) of a buffer in dBFS; silence is -120."""
    x = np.asarray(x, np.float32)
    peak = float(np.abs(x).max()) if len(x) else 0.0
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return tuple(round(20 * math.log10(v), 1) if v > 1e-6 else -120.0 for v in (peak, rms))


def knob_sources(daemon) -> list[str]:
    """Per knob of the running bundle: "web" (a virtual knob holds it), "pot", "automation" or "fixed"."""
    from .daemon import AutomationKnobs
    n = len(daemon.engine.knobs)
    if isinstance(daemon.knobs, AutomationKnobs):
        return ["automation"] * n
    held = set(getattr(daemon, "web_knobs", ()))
    poller = daemon.poller
    if poller is not None:
        held |= {i for i in range(n) if poller.overridden(i)}
    potted = {i for i, _, _ in poller.processor.pots} if poller is not None else set()
    return ["web" if i in held else "pot" if i in potted else "fixed" for i in range(n)]


def knobs_reply(daemon) -> dict:
    e = daemon.engine
    if e.bundle is None:
        return {"ok": True, "knobs": []}
    specs = e.bundle.manifest.knobs
    target = daemon.knobs.at(daemon.hop_index)
    out = []
    for spec, smoothed, pos, source in zip(specs, e.knobs, target, knob_sources(daemon)):
        out.append({**spec.to_dict(), "position": round(float(pos), 5),
                    "value": round(spec.from_normalized(float(pos)), 4),
                    "playing": round(spec.from_normalized(float(smoothed)), 4), "source": source})
    return {"ok": True, "knobs": out}


def set_knob(daemon, arg: str) -> dict:
    """``knob NAME VALUE`` or ``knob NAME pot``."""
    from .daemon import AutomationKnobs
    words = arg.split()
    if len(words) != 2:
        return {"ok": False, "error": "say: knob NAME VALUE (physical units), or knob NAME pot"}
    name, value = words
    e = daemon.engine
    specs = e.bundle.manifest.knobs if e.bundle is not None else []
    names = [s.name for s in specs]
    if name not in names:
        return {"ok": False, "error": f"no knob {name!r} in {e.bundle.manifest.effect if specs else 'pass-through'} "
                                      f"(knobs: {', '.join(names) or 'none'})"}
    if isinstance(daemon.knobs, AutomationKnobs):
        return {"ok": False, "error": "the knobs follow an automation file (run --knobs): no virtual knobs"}
    i, spec = names.index(name), specs[names.index(name)]
    positions = daemon.knobs.positions
    if i >= len(positions):  # a hot-swapped bundle with more knobs than the one the daemon started with
        return {"ok": False, "error": f"knob {name!r} has no slot: restart the daemon with this bundle"}
    held = getattr(daemon, "web_knobs", None)
    if held is None:
        held = daemon.web_knobs = set()  # knobs without a pot that a virtual knob has set
    if value.lower() == "pot":
        held.discard(i)
        if daemon.poller is not None:
            daemon.poller.release(i)
        return {"ok": True, "knob": name, "source": knob_sources(daemon)[i]}
    try:
        v = float(value)
    except ValueError:
        return {"ok": False, "error": f"knob {name}: {value!r} is not a number"}
    if not math.isfinite(v):
        return {"ok": False, "error": f"knob {name}: {value!r} is not a finite number"}
    position = spec.to_normalized(v)  # clamped to the knob's range
    if daemon.poller is not None and any(i == j for j, _, _ in daemon.poller.processor.pots):
        daemon.poller.override(i, position)
    else:
        positions[i] = position
        held.add(i)
    logging.getLogger("pedal").info("knob %s set to %g %s from a remote panel", name, spec.from_normalized(position),
                                    spec.unit)
    return {"ok": True, "knob": name, "value": round(spec.from_normalized(position), 4),
            "position": round(position, 5), "source": "web"}


def panel(daemon, log_lines: int = 30) -> dict:
    """Everything a remote panel shows, in one reply."""
    st = daemon.status(recent=PANEL_LOAD_PERIODS)
    st["load_periods"] = min(daemon.periods_done, PANEL_LOAD_PERIODS)
    e = daemon.engine
    now_cpu, now = time.process_time(), time.monotonic()
    last = getattr(daemon, "panel_cpu_at", None)  # the daemon's CPU time since the last panel
    daemon.panel_cpu_at = (now_cpu, now)
    cpu = (now_cpu - last[0]) / (now - last[1]) if last and now > last[1] else None
    in_peak, in_rms = level_db(daemon.duplex.mono_in)
    out_peak, out_rms = level_db(daemon.out_period)
    tail = list(_tail.lines)[-log_lines:] if _tail is not None and log_lines > 0 else []
    st.update({"ok": True, "bundle_source": str(e.bundle.source) if e.bundle is not None else None,
               "knob_specs": knobs_reply(daemon)["knobs"],
               "levels": {"in_peak_db": in_peak, "in_rms_db": in_rms, "out_peak_db": out_peak, "out_rms_db": out_rms},
               "daemon_cpu": None if cpu is None else round(cpu, 4), "log": tail})
    return st


def command(daemon, cmd: str, arg: str) -> dict:
    if cmd == "panel":
        return panel(daemon)
    if cmd == "knobs":
        return knobs_reply(daemon)
    return set_knob(daemon, arg)
