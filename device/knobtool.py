"""``python -m device knobs``: what each pot reads right now, and a calibration walk-through.

    python -m device knobs --config /etc/pedal/pedal.toml              live: raw, position, value
    python -m device knobs --config /etc/pedal/pedal.toml --calibrate  turn each pot to its stops
    python -m device knobs --config /etc/pedal/pedal.toml --calibrate --write   ... and save them

Run it while the daemon is stopped if the ADC is an I2C one (two programs talking to the same
ADS1115 interleave their conversions); an MCP3008 or a knob file can be shared.

Calibration asks for each pot's two end stops (fully counter-clockwise, then fully clockwise),
takes the median of a few readings at each, and turns them into ``raw_min``, ``raw_max`` and
``reversed`` (``PotCalibration.from_extremes``). ``--write`` puts those three keys into the pot's
``[[knobs.pot]]`` table of the config, leaves every other line and comment as it was, checks
that the file still loads, and keeps the old file as ``<config>.bak``.
"""
from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path

from .atomic import write_atomic
from .knobspec import KnobSpec
from .pots import KnobProcessor, PotCalibration


def knob_specs(cfg) -> tuple[list[KnobSpec], str]:
    """The bundle's knob specs (names, units, ranges, tapers), or plain 0..1 knobs named after the
    pots when the bundle cannot be read; -> (specs, a note for the user or "")."""
    from .bundle import BundleError, load_bundle
    try:
        return list(load_bundle(cfg.model.bundle).manifest.knobs), ""
    except (BundleError, OSError) as e:
        names = [p.knob for p in cfg.knobs.pots]
        return ([KnobSpec(n, "", 0.0, 1.0, 0.5) for n in names],
                f"(bundle not readable, values shown as 0..1: {e})")


def _read(pot) -> float | None:
    raw = pot.read()
    return None if raw is None else float(raw)


class KnobReader:
    """The configured pots, read the way the daemon reads them (calibration, deadband, smoothing)."""

    def __init__(self, cfg, specs: list[KnobSpec]):
        from .knobsetup import open_pots
        k = cfg.knobs
        self.cfg, self.specs = cfg, specs
        names = {s.name for s in specs}
        self.pot_cfgs = [p for p in k.pots if p.knob in names]
        self.pots = open_pots(cfg, specs)
        cal = {p.knob: PotCalibration(p.raw_min, p.raw_max, p.reversed) for p in self.pot_cfgs}
        self.proc = KnobProcessor(specs, {n: p for n, p in self.pots.items() if n in names}, cal,
                                  deadband=k.deadband, smoothing_ms=k.smoothing_ms, poll_hz=k.poll_hz)
        self.index = {s.name: i for i, s in enumerate(specs)}

    def rows(self) -> list[tuple[str, int, float | None, float | None, str]]:
        """One poll of every pot -> (knob, channel, raw 0..1 or None, position 0..1 or None, value text)."""
        out = []
        for p in self.pot_cfgs:
            i, spec = self.index[p.knob], self.specs[self.index[p.knob]]
            try:
                raw = _read(self.pots[p.knob])
            except Exception as e:  # an ADC that is not there: show it, keep going
                out.append((p.knob, p.channel, None, None, f"no reading: {e}"))
                continue
            if raw is None:
                out.append((p.knob, p.channel, None, None, "no reading yet"))
                continue
            pos = self.proc.update(i, raw)
            value = spec.from_normalized(pos)
            out.append((p.knob, p.channel, raw, pos, f"{value:.4g} {spec.unit}".rstrip()))
        return out

    def close(self) -> None:
        for pot in self.pots.values():
            close = getattr(pot, "close", None)
            if close is not None:
                close()


def format_rows(rows) -> list[str]:
    lines = [f"{'knob':<16} {'ch':>3} {'raw':>7} {'position':>9}  value"]
    for name, ch, raw, pos, value in rows:
        raw_s = "-" if raw is None else f"{raw:.4f}"
        pos_s = "-" if pos is None else f"{pos:.4f}"
        lines.append(f"{name:<16} {ch:>3} {raw_s:>7} {pos_s:>9}  {value}")
    return lines


def live(cfg, seconds: float = 0.0, once: bool = False, out=print, interval_s: float = 0.2) -> int:
    """Show the pots until Ctrl-C (or ``seconds``; ``once``: one table)."""
    specs, note = knob_specs(cfg)
    if note:
        out(note)
    if not cfg.knobs.pots:
        out(f"{cfg.source}: no [[knobs.pot]] tables: nothing to show (knobs.source = {cfg.knobs.source!r})")
        return 1
    reader = KnobReader(cfg, specs)
    tty = out is print and sys.stdout.isatty()
    try:
        poll_s = 1.0 / cfg.knobs.poll_hz
        end = time.monotonic() + seconds if seconds else float("inf")
        shown = 0
        next_show = 0.0
        while True:
            rows = reader.rows()  # poll at the config's rate, so smoothing behaves as in the daemon
            now = time.monotonic()
            if now >= next_show or once:
                lines = format_rows(rows)
                if tty and shown:
                    sys.stdout.write(f"\x1b[{len(lines)}F")  # back to the top of the last table
                for line in lines:
                    out(line + ("\x1b[K" if tty else ""))
                shown += 1
                next_show = now + interval_s
                if once or now >= end:
                    return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 0
    finally:
        reader.close()


def settle_reading(pot, samples: int = 15, interval_s: float = 0.01) -> float:
    """The median of a few readings: one noisy code at an end stop must not become the calibration."""
    values = []
    deadline = time.monotonic() + max(2.0, 4 * samples * interval_s)
    while len(values) < samples and time.monotonic() < deadline:
        raw = _read(pot)
        if raw is not None:
            values.append(raw)
        time.sleep(interval_s)
    if not values:
        raise ValueError("the pot gave no reading")
    return statistics.median(values)


def calibrate(cfg, ask=None, out=print, samples: int = 15, interval_s: float = 0.01) -> dict[int, PotCalibration]:
    """Walk through every configured pot; -> {index in cfg.knobs.pots: calibration}. ``ask``
    defaults to ``input`` looked up when called (bound as a default argument, it would be whatever
    ``input`` was when this module was first imported)."""
    from .knobsetup import open_pots
    ask = ask or input
    specs, note = knob_specs(cfg)
    if note:
        out(note)
    pots = open_pots(cfg, specs)
    result = {}
    try:
        for i, p in enumerate(cfg.knobs.pots):
            if p.knob not in pots:
                out(f"{p.knob}: not a knob of this bundle, skipped")
                continue
            pot = pots[p.knob]
            out(f"\n[{i + 1}/{len(cfg.knobs.pots)}] {p.knob} (channel {p.channel})")
            try:
                ask(f"  turn {p.knob} fully COUNTER-CLOCKWISE, then press Enter ")
                ccw = settle_reading(pot, samples, interval_s)
                ask(f"  turn {p.knob} fully CLOCKWISE, then press Enter ")
                cw = settle_reading(pot, samples, interval_s)
                cal = PotCalibration.from_extremes(ccw, cw)
            except (ValueError, OSError, TimeoutError) as e:
                out(f"  {p.knob}: not calibrated: {e}")
                continue
            result[i] = cal
            out(f"  read {ccw:.4f} counter-clockwise, {cw:.4f} clockwise -> raw_min = {cal.raw_min:.4f}, "
                f"raw_max = {cal.raw_max:.4f}, reversed = {str(cal.reversed).lower()}")
    finally:
        for pot in pots.values():
            close = getattr(pot, "close", None)
            if close is not None:
                close()
    return result


_POT_HEADER = re.compile(r"^\s*\[\[\s*knobs\s*\.\s*pot\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[")
_CAL_KEY = re.compile(r"^\s*(raw_min|raw_max|reversed)\s*=")
_KEY_LINE = re.compile(r"^\s*[A-Za-z0-9_]+\s*=")


def set_pot_calibration(text: str, index: int, cal: PotCalibration) -> str:
    """The config text with raw_min/raw_max/reversed of the ``index``-th [[knobs.pot]] replaced;
    every other line (comments included) stays as written."""
    lines = text.splitlines()
    headers = [n for n, line in enumerate(lines) if _POT_HEADER.match(line)]
    if index >= len(headers):
        raise ValueError(f"the config has {len(headers)} [[knobs.pot]] tables, not {index + 1}")
    start = headers[index] + 1
    end = next((n for n in range(start, len(lines)) if _TABLE_HEADER.match(lines[n])), len(lines))
    block = [line for line in lines[start:end] if not _CAL_KEY.match(line)]
    last_key = max((n for n, line in enumerate(block) if _KEY_LINE.match(line)), default=-1)
    new = [f"raw_min = {cal.raw_min:.4f}", f"raw_max = {cal.raw_max:.4f}",
           f"reversed = {'true' if cal.reversed else 'false'}"]
    block[last_key + 1:last_key + 1] = new
    out = lines[:start] + block + lines[end:]
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def write_calibrations(config_path: str | Path, cals: dict[int, PotCalibration]) -> Path:
    """Put calibrations into the config file; the old file stays as .bak. -> the backup's path."""
    from .config import loads_config
    path = Path(config_path)
    text = path.read_text(encoding="utf-8")
    new = text
    for i, cal in sorted(cals.items()):
        new = set_pot_calibration(new, i, cal)
    cfg = loads_config(new, source=str(path), base_dir=path.resolve().parent)  # still a valid config?
    for i, cal in cals.items():
        pot = cfg.knobs.pots[i]
        if (round(pot.raw_min, 4), round(pot.raw_max, 4), pot.reversed) != \
                (round(cal.raw_min, 4), round(cal.raw_max, 4), cal.reversed):
            raise ValueError(f"{path}: knobs.pot[{i}] did not take the calibration (got {pot}); file left unchanged")
    # Both written whole or not at all (a power cut mid-write keeps the old config), beside the
    # real file when the config is a link (a read-only root keeps it on the data partition).
    real = Path(os.path.realpath(path))
    backup = write_atomic(real.with_name(real.name + ".bak"), text)
    write_atomic(real, new)
    return backup


def toml_snippet(cfg, cals: dict[int, PotCalibration]) -> str:
    out = []
    for i, cal in sorted(cals.items()):
        p = cfg.knobs.pots[i]
        out += ["[[knobs.pot]]", f'knob = "{p.knob}"', f"channel = {p.channel}", f"raw_min = {cal.raw_min:.4f}",
                f"raw_max = {cal.raw_max:.4f}", f"reversed = {'true' if cal.reversed else 'false'}", ""]
    return "\n".join(out)
