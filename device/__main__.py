"""The box's command line:  python -m device COMMAND ...

  inspect BUNDLE                       print the bundle's card (knobs, models, verified figures)
  selftest --bundle B [--config C]     golden vectors, real-time headroom, ALSA and ADC presence
  render --bundle B --input IN.wav --out OUT.wav [--knobs AUTOMATION.csv]
                                       offline render through the same engine the daemon runs
  run --config pedal.toml              the daemon (systemd runs this)
  run --bundle B --capture PCM --playback PCM [--knobs AUTOMATION.csv] [--seconds S]
                                       the daemon without a config file (development, tests)
  status [--socket PATH]               what a running daemon is doing
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

import numpy as np

from .bundle import BundleError, load_bundle


def _automation_rows(path, bundle, n_samples: int) -> np.ndarray:
    from .automation import load_automation, positions_per_hop
    m = bundle.manifest
    n_hops = -(-n_samples // m.hop)
    if path is None:
        return np.tile(np.array([k.to_normalized(k.default) for k in m.knobs], np.float32), (n_hops, 1))
    times, values = load_automation(path, m.knobs)
    return positions_per_hop(times, values, m.knobs, n_hops, m.hop, m.sample_rate)


def cmd_inspect(a) -> int:
    print(load_bundle(a.bundle).card())
    return 0


def cmd_selftest(a) -> int:
    from .selftest import run_selftest
    config = None
    if a.config:
        from .config import load_config
        config = load_config(a.config)
    ok = run_selftest(a.bundle, config, [a.precision] if a.precision else None)
    print("self-test:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def cmd_render(a) -> int:
    import soundfile as sf
    from .engine import Engine
    bundle = load_bundle(a.bundle)
    x, sr = sf.read(a.input, dtype="float32", always_2d=True)
    if sr != bundle.manifest.sample_rate:
        raise SystemExit(f"render: {a.input} is {sr} Hz; bundle {a.bundle} runs at {bundle.manifest.sample_rate} Hz")
    x = x[:, a.channel]
    rows = _automation_rows(a.knobs, bundle, len(x))
    engine = Engine(bundle, a.precision or None)
    y = engine.render(x, rows)
    sf.write(a.out, y, sr, subtype="FLOAT")
    print(f"render: {a.input} -> {a.out} ({len(x) / sr:.2f} s, {engine.counts['hops']} hops, "
          f"faults {engine.counts['nonfinite'] + engine.counts['model_error']})")
    return 0


def cmd_run(a) -> int:
    from .audio import AlsaDuplex
    from .daemon import AutomationKnobs, Daemon, LiveKnobs, setup_realtime
    from .engine import Engine
    log = logging.getLogger("pedal")
    poller = footswitch = led = None
    if a.config:
        from .config import check_knob_names, load_config
        cfg = load_config(a.config)
        au, bundle_path, precision = cfg.audio, cfg.model.bundle, cfg.model.precision or None
        rt = (cfg.realtime.priority, cfg.realtime.lock_memory, cfg.realtime.cpu)
        crossfade_ms, status_socket, threads = au.dry_crossfade_ms, cfg.status.socket, cfg.model.threads
        bundles = sorted(Path(cfg.model.bundles_dir).glob("*.pedal")) if cfg.model.bundles_dir else []
    else:
        cfg = None
        bundle_path, precision, threads = a.bundle, a.precision or None, 1
        rt, crossfade_ms, status_socket, bundles = (a.priority, not a.no_mlock, -1), 10.0, a.status_socket, []
    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    engine_kwargs = {"precision": precision, "threads": threads, "crossfade_ms": crossfade_ms}
    engine = Engine(bundle, budget_s=0.0, **engine_kwargs)
    if cfg is not None:
        check_knob_names(cfg, [k.name for k in m.knobs])
        duplex = AlsaDuplex(au.capture_device, au.playback_device, au.sample_rate, au.period_frames, au.periods,
                            au.format, au.capture_channels, au.playback_channels, au.input_channel, au.output_channels)
    else:
        duplex = AlsaDuplex(a.capture, a.playback, m.sample_rate, a.period, a.periods, a.format, a.channels, a.channels,
                            0, list(range(a.channels)))
    # compute overruns (a hop slower than its share of the period, 4 in a row) fall back to dry
    engine.budget_s = a.overrun_budget * engine.hop / duplex.rate
    n_periods = int(a.seconds * duplex.rate / duplex.period) if a.seconds else 0
    if a.knobs:
        knobs = AutomationKnobs(_automation_rows(a.knobs, bundle, max(n_periods, 1) * duplex.period))
    elif cfg is not None and cfg.knobs.source != "none":
        from .knobsetup import start_poller
        poller = start_poller(cfg, m.knobs)
        knobs = LiveKnobs(poller.positions)
    else:
        knobs = LiveKnobs(np.array([k.to_normalized(k.default) for k in m.knobs], np.float32))
    engine.prime(knobs.at(0))
    if cfg is not None and cfg.led.enabled:
        from .switches import StatusLED
        led = StatusLED(cfg.led.gpio)
        led.show("on")
    daemon = Daemon(engine, duplex, knobs, status_socket, bundles, engine_kwargs, led)
    if cfg is not None and cfg.footswitch.enabled:
        from .switches import Footswitch
        footswitch = Footswitch(cfg.footswitch.gpio, on_short=daemon.toggle_bypass, on_long=daemon.next_bundle,
                                long_press_s=cfg.footswitch.long_press_s)
    log.info("bundle %s: %s, hop %d, latency %.2f ms (model %d samples + ALSA %d x %d frames)", bundle_path, m.effect,
             m.hop, 1000 * (m.latency_samples + duplex.period * duplex.periods) / duplex.rate, m.latency_samples,
             duplex.periods, duplex.period)
    log.info("ALSA %s", duplex.info())
    for what in setup_realtime(*rt):
        log.warning("not real-time: %s", what)
    monitor = threading.Thread(target=daemon.monitor, name="monitor", daemon=True)
    audio = threading.Thread(target=daemon.run, args=(n_periods,), name="audio")
    daemon.running = True
    monitor.start()
    audio.start()
    try:
        while audio.is_alive():
            audio.join(0.5)
    except KeyboardInterrupt:
        daemon.stop()
        audio.join()
    finally:
        for closeable in (poller, footswitch, led):
            if closeable is not None:
                (closeable.stop if hasattr(closeable, "stop") else closeable.close)()
        duplex.close()
    st = daemon.status()
    log.info("stopped after %d periods: xruns %d, engine faults %s, load median %.1f%% max %.1f%%", st["periods"],
             st["xruns"], st["engine_faults"], 100 * st["load_median"], 100 * st["load_max"])
    if a.stats:
        n = min(daemon.periods_done, len(daemon.work_s))
        np.save(a.stats, daemon.work_s[:n])
    return 0


def cmd_status(a) -> int:
    from .daemon import query_status
    print(json.dumps(query_status(a.socket), indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inspect", help="print a bundle's card")
    p.add_argument("bundle")
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("selftest", help="prove this box computes what the host computed, in real time")
    p.add_argument("--bundle", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--precision", default="")
    p.set_defaults(fn=cmd_selftest)
    p = sub.add_parser("render", help="offline render of a WAV file through the engine")
    p.add_argument("--bundle", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--knobs", default=None, help="knob automation CSV/JSON (default: every knob at its default)")
    p.add_argument("--precision", default="")
    p.add_argument("--channel", type=int, default=0)
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("run", help="the ALSA daemon")
    p.add_argument("--config", default=None)
    p.add_argument("--bundle", default=None)
    p.add_argument("--capture", default="default")
    p.add_argument("--playback", default="default")
    p.add_argument("--period", type=int, default=128)
    p.add_argument("--periods", type=int, default=2)
    p.add_argument("--format", default="FLOAT_LE")
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--precision", default="")
    p.add_argument("--knobs", default=None, help="knob automation file instead of live knobs")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this much audio (0: run until stopped)")
    p.add_argument("--priority", type=int, default=70)
    p.add_argument("--no-mlock", action="store_true")
    p.add_argument("--status-socket", default=None)
    p.add_argument("--overrun-budget", type=float, default=0.8,
                   help="fraction of a hop's duration its compute may take before counting as an overrun (0: off)")
    p.add_argument("--stats", default=None, help="save per-period work times (s) to this .npy at exit")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("status", help="ask a running daemon")
    p.add_argument("--socket", default="/run/pedal/status.sock")
    p.set_defaults(fn=cmd_status)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if a.cmd == "run" and not (a.config or a.bundle):
        ap.error("run needs --config or --bundle")
    try:
        return a.fn(a)
    except BundleError as e:
        print(f"bundle refused: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .audio import AlsaError
        from .config import ConfigError
        if isinstance(e, (AlsaError, ConfigError, ValueError)):
            print(f"{a.cmd}: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
