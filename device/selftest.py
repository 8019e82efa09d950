"""The on-device self-test: can this box run this bundle, here, now?

    python -m device selftest --bundle /var/lib/pedal/bundles/comp4.pedal [--config /etc/pedal/pedal.toml]
                              [--correctness-only]

Checks (each printed PASS/FAIL with its numbers): the bundle loads (schema, checksums, shapes);
each precision reproduces the golden vectors within the manifest's tolerance; the step model's
per-hop time leaves real-time headroom at the configured period; the configured ALSA devices
open; the configured ADC answers.

Correctness only (no headroom check, said before the golden vectors): when asked, or when this is emulated
(an ARM userland under qemu-user on an x86 machine, as `make test-pi` runs it: about 100 times
slower, so a time measured there says nothing about a Pi).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from .bundle import Bundle, BundleError, load_bundle
from .engine import StepRunner

HEADROOM_MAX_LOAD = 0.5  # p99 compute per period must stay under half the period


def emulation() -> str | None:
    """Why times measured here mean nothing, if they do not: ARM code running under qemu-user
    (QEMU_CPU set, or /proc/cpuinfo describing the x86 CPU underneath). None on a real board."""
    machine = platform.machine()
    if not machine.startswith(("aarch64", "arm")):
        return None
    if os.environ.get("QEMU_CPU"):
        return f"{machine} under qemu-user (QEMU_CPU={os.environ['QEMU_CPU']})"
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine"):
        if vendor in info:
            return f"{machine} code on an x86 CPU ({vendor} in /proc/cpuinfo): emulated"
    return None


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    err = float(np.sum((out.astype(np.float64) - ref) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)


def esr(ref: np.ndarray, out: np.ndarray) -> float:
    """Error-to-signal ratio of ``out`` against the reference ``ref``."""
    return float(np.sum((out.astype(np.float64) - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-12))


def run_golden(bundle: Bundle, precision: str, threads: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
    """The golden input + knob automation through the step model: -> (output, per-hop seconds, golden)."""
    g = bundle.golden()
    runner = StepRunner(bundle, precision, threads)
    H, n = bundle.manifest.hop, len(g["knob_positions"])
    out = np.empty(n * H, np.float32)
    times = np.empty(n)
    for t in range(n):
        t0 = time.perf_counter()
        out[t * H:(t + 1) * H] = runner.step(g["input"][t * H:(t + 1) * H], g["knob_positions"][t])
        times[t] = time.perf_counter() - t0
    return out, times, g


def check_golden(bundle: Bundle, precision: str | None = None, threads: int = 1) -> dict:
    """Run the golden vectors through the step model; compare to PyTorch's output."""
    m = bundle.manifest
    precision = precision or m.default_precision
    out, times, g = run_golden(bundle, precision, threads)
    H = m.hop
    snr = snr_db(g["expected"][: len(out)], out)
    floor = float(m.tolerances.get(precision, {}).get("snr_db_min", 90.0))
    hop_s = H / m.sample_rate
    return {"precision": precision, "snr_db": snr, "snr_db_min": floor, "ok": snr >= floor,
            "max_abs_err": float(np.abs(out - g["expected"][: len(out)]).max()),
            "hop_ms_median": 1000 * float(np.median(times)), "hop_ms_p99": 1000 * float(np.percentile(times, 99)),
            "load_p99": float(np.percentile(times, 99)) / hop_s}


def run_selftest(bundle_path, config=None, precisions=None, out=print, correctness_only: bool = False) -> bool:
    ok = True

    def report(passed: bool, what: str):
        nonlocal ok
        ok &= passed
        out(f"{'PASS' if passed else 'FAIL'}  {what}")

    try:
        bundle = load_bundle(bundle_path)
    except BundleError as e:
        report(False, f"bundle: {e}")
        return False
    m = bundle.manifest
    report(True, f"bundle {bundle_path}: {m.effect}, schema {m.schema_version}, {len(m.files)} files verified (SHA-256)")
    emulated = emulation()
    why = emulated or ("--correctness-only" if correctness_only else None)
    if emulated:
        out(f"NOTE  correctness only, real-time headroom not measured: {emulated} (emulated time says nothing about a Pi)")
    elif correctness_only:
        out("NOTE  correctness only (--correctness-only): real-time headroom not measured")
    for prec in precisions or list(m.models):
        try:
            r = check_golden(bundle, prec)
        except BundleError as e:
            report(False, f"{prec}: {e}")
            continue
        report(r["ok"], f"{prec}: golden vectors {r['snr_db']:.1f} dB SNR vs PyTorch (needs {r['snr_db_min']:g}), "
                        f"max error {r['max_abs_err']:.2e}")
        if why:
            continue
        period = config.audio.period_frames if config else m.hop
        load = r["load_p99"]  # per-hop compute / hop duration; the same fraction of any period made of hops
        report(load < HEADROOM_MAX_LOAD, f"{prec}: real-time headroom at {period}-frame periods: p99 compute "
                                         f"{r['hop_ms_p99']:.3f} ms per {m.hop}-sample hop = {100 * load:.1f}% of real time "
                                         f"(limit {100 * HEADROOM_MAX_LOAD:.0f}%)")
    if config is not None:
        from .audio import AlsaDuplex, AlsaError
        a = config.audio
        try:
            d = AlsaDuplex(a.capture_device, a.playback_device, a.sample_rate, a.period_frames, a.periods, a.format,
                           a.capture_channels, a.playback_channels, a.input_channel, a.output_channels)
            report(True, f"ALSA: {d.info()}")
            d.close()
        except (AlsaError, ImportError) as e:
            report(False, f"ALSA: {e}")
        if config.knobs.source in ("mcp3008", "ads1115"):
            from .knobsetup import open_pots
            try:
                pots = open_pots(config, m.knobs)
                readings = {name: pot.read() for name, pot in pots.items()}
                report(all(v is not None for v in readings.values()),
                       f"ADC {config.knobs.source}: " + ", ".join(f"{k} {v:.3f}" for k, v in readings.items()))
            except Exception as e:  # any failure to reach the ADC is the finding
                report(False, f"ADC {config.knobs.source}: {e}")
    return ok
