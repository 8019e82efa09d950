"""The box's command line:  python -m device COMMAND ...

  inspect BUNDLE                       print the bundle's card (knobs, models, verified figures)
  selftest --bundle B [--config C] [--correctness-only]
                                       golden vectors, real-time headroom, ALSA and ADC presence
  render --bundle B --input IN.wav --out OUT.wav [--knobs AUTOMATION.csv]
                                       offline render through the same engine the daemon runs
  run --config pedal.toml              the daemon (systemd runs this)
  run --bundle B --capture PCM --playback PCM [--knobs AUTOMATION.csv] [--seconds S]
                                       the daemon without a config file (development, tests)
  run --passthrough --capture PCM --playback PCM
                                       no model: checks the audio path alone
  status [--config C | --socket PATH] [--bypass on|off|toggle | --load B | --reload | --next]
                                       what a running daemon is doing; or tell it what to do
  knobs --config C [--calibrate [--write]]
                                       live pot readings; calibrate each pot's end stops
  install BUNDLE... [--config C | --dir D]  [--name NAME -  (the bundle on stdin)]
                                       verify, then copy into model.bundles_dir so that a power cut
                                       or a dropped connection leaves the old file or the new one
  capture --out DIR --knob NAME=MIN..MAX ... [--config C]
                                       model your own pedal: play the capture signal through it at
                                       each knob setting of a plan, check every pass, write a dataset
  capture-signal --out SIGNAL.wav      the capture signal, to listen to
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
    ok = run_selftest(a.bundle, config, [a.precision] if a.precision else None, correctness_only=a.correctness_only)
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
    import signal

    from .audio import AlsaDuplex
    from .daemon import (AutomationKnobs, Daemon, LiveKnobs, PassThrough, helpers_priority, read_choice, remember_good,
                         setup_realtime, start_bundle, warm_up)
    from .engine import Engine
    log = logging.getLogger("pedal")
    # The audio thread needs the GIL once a period; a busy helper (a bundle loading) holds it for up
    # to the switch interval, 5 ms by default: longer than a period. Hand it over within 0.2 ms.
    sys.setswitchinterval(0.0002)
    poller = footswitch = led = None
    if a.config:
        from .config import check_knob_names, load_config
        cfg = load_config(a.config)
        if not a.verbose:
            logging.getLogger().setLevel(cfg.status.log_level.upper())
        au, bundle_path, precision = cfg.audio, cfg.model.bundle, cfg.model.precision or None
        rt = (cfg.realtime.priority, cfg.realtime.lock_memory, cfg.realtime.cpu)
        crossfade_ms, status_socket, threads = au.dry_crossfade_ms, cfg.status.socket, cfg.model.threads
        bundles = sorted(Path(cfg.model.bundles_dir).glob("*.pedal")) if cfg.model.bundles_dir else []
        watchdog = cfg.watchdog.enabled
        last_good, choice = cfg.model.last_good, cfg.model.choice

        def reload_path():  # SIGHUP: the bundle the config names now (it may have been edited)
            return load_config(a.config).model.bundle
    else:
        cfg = None
        bundle_path, precision, threads = a.bundle, a.precision or None, 1
        rt, crossfade_ms, status_socket, bundles = (a.priority, not a.no_mlock, a.cpu), 10.0, a.status_socket, []
        watchdog = True
        last_good, choice = a.last_good, a.choice

        def reload_path():
            return Path(a.bundle)
    # Started real-time (systemd, chrt)? Only the audio thread keeps that priority; the helpers,
    # all started from this thread, get the one helpers_priority sets here.
    inherited_priority, helper_sched = helpers_priority(rt[0])
    # The configured bundle, or the last good copy when it is partial or bad (said below, and in status)
    # The bundle chosen last (footswitch, status socket, web page) while this config was in force;
    # else the configured one; else the last good copy when that is partial or bad
    chosen = None if a.passthrough else read_choice(choice, bundle_path)
    bundle, refused = (None, None) if a.passthrough else start_bundle(bundle_path, last_good, chosen)
    if chosen is not None and bundle is not None and not refused:
        log.info("starting with %s, the bundle chosen last (%s); the config names %s", chosen, choice, bundle_path)
        bundle_path = chosen
    if refused:
        log.error("%s", refused)
    m = bundle.manifest if bundle is not None else None
    rate = au.sample_rate if cfg is not None else (m.sample_rate if m is not None else a.rate)
    if m is not None and rate != m.sample_rate:
        raise ValueError(f"audio.sample_rate = {rate} but bundle {bundle_path} runs at {m.sample_rate} Hz")
    if cfg is not None:
        if m is not None:
            check_knob_names(cfg, [k.name for k in m.knobs])
        duplex = AlsaDuplex(au.capture_device, au.playback_device, rate, au.period_frames, au.periods,
                            au.format, au.capture_channels, au.playback_channels, au.input_channel, au.output_channels)
    else:
        duplex = AlsaDuplex(a.capture, a.playback, rate, a.period, a.periods, a.format, a.channels, a.channels,
                            0, list(range(a.channels)))
    engine_kwargs = {"precision": precision, "threads": threads, "crossfade_ms": crossfade_ms}
    if bundle is None:
        engine = PassThrough(duplex.period, rate)
    else:
        engine = Engine(bundle, budget_s=0.0, **engine_kwargs)
        # compute overruns (a hop slower than its share of the period, 4 in a row) fall back to dry
        engine.budget_s = a.overrun_budget * engine.hop / duplex.rate
    n_periods = int(a.seconds * duplex.rate / duplex.period) if a.seconds else 0
    if m is None:
        knobs = LiveKnobs(np.zeros(0, np.float32))
    elif a.knobs:
        knobs = AutomationKnobs(_automation_rows(a.knobs, bundle, max(n_periods, 1) * duplex.period))
    elif cfg is not None and cfg.knobs.source != "none":
        from .knobsetup import start_poller
        poller = start_poller(cfg, m.knobs)
        knobs = LiveKnobs(poller.positions)
    else:
        knobs = LiveKnobs(np.array([k.to_normalized(k.default) for k in m.knobs], np.float32))
    engine.prime(knobs.at(0))
    warm_up(engine)
    if cfg is not None and cfg.led.enabled:
        from .switches import StatusLED
        led = StatusLED(cfg.led.gpio)
        led.show("on")
    daemon = Daemon(engine, duplex, knobs, status_socket, bundles, engine_kwargs, led, poller=poller,
                    stats_periods=n_periods + 64 if (a.stats and n_periods) else 1 << 16, reload_path=reload_path,
                    watchdog=watchdog, fade_ms=crossfade_ms, last_good=last_good, choice=choice)
    if refused:
        daemon._refused(refused, bundle_path)  # status: last load REFUSED, the message; LED blinks
    elif bundle is not None:
        try:
            if remember_good(bundle, last_good):
                log.info("bundle %s kept as the last good bundle (%s)", bundle_path, last_good)
        except (OSError, BundleError) as e:
            log.warning("no last good copy of %s: %s", bundle_path, e)
    if cfg is not None and cfg.footswitch.enabled:
        from .switches import Footswitch
        footswitch = Footswitch(cfg.footswitch.gpio, on_short=daemon.toggle_bypass, on_long=daemon.next_bundle,
                                long_press_s=cfg.footswitch.long_press_s)
    if m is not None:
        log.info("bundle %s: %s, hop %d, round trip %.2f ms (%d frames: ALSA %d x %d, model %d samples within "
                 "its hop)", bundle.source, m.effect, m.hop, 1000 * daemon.latency_frames() / duplex.rate,
                 daemon.latency_frames(), duplex.periods, duplex.period, m.latency_samples)
    else:
        log.info("pass-through (no model): round trip %.2f ms", 1000 * daemon.latency_frames() / duplex.rate)
    log.info("ALSA %s", duplex.info())
    priority, lock_memory, cpu = rt
    if inherited_priority and priority <= 0:
        log.info("started with real-time priority %d, but the config asks for none: audio thread not real-time",
                 inherited_priority)
    log.debug("helper threads: %s", helper_sched)

    def audio_main():
        missing = setup_realtime(priority, lock_memory, cpu)
        for what in missing:  # said once, before the loop starts
            log.warning("not real-time: %s", what)
        if priority > 0 and not any(w.startswith("real-time") for w in missing):
            log.info("audio thread: SCHED_FIFO priority %d%s%s", priority,
                     ", memory locked" if lock_memory and not any(w.startswith("locked") for w in missing) else "",
                     f", pinned to CPU {cpu}" if cpu >= 0 else "")
        daemon.run(n_periods)

    def on_stop(signum, frame):
        log.info("signal %d: stopping", signum)
        daemon.stop()

    def on_hup(signum, frame):
        daemon.reload()
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    monitor = threading.Thread(target=daemon.monitor, name="monitor", daemon=True)
    audio = threading.Thread(target=audio_main, name="audio")
    daemon.running = True
    monitor.start()
    audio.start()
    try:
        while audio.is_alive():
            audio.join(0.5)
        monitor.join(2.0)
    finally:
        daemon.stop()
        for closeable in (poller, footswitch, led):
            if closeable is not None:
                (closeable.stop if hasattr(closeable, "stop") else closeable.close)()
        duplex.close()
    st = daemon.status()
    log.info("stopped after %d periods: xruns %d (%d capture overruns, %d playback underruns, %d latency drifts), "
             "device lost %d, engine faults %s, load median %.1f%% p99 %.1f%% max %.1f%%", st["periods"], st["xruns"],
             *daemon.xrun_kinds, st["device_lost"], st["engine_faults"],
             100 * st["load_median"], 100 * st["load_p99"], 100 * st["load_max"])
    if a.stats:
        n = min(daemon.periods_done, daemon.ring)
        order = np.arange(daemon.periods_done - n, daemon.periods_done) % daemon.ring  # oldest first
        if str(a.stats).endswith(".npz"):
            np.savez(a.stats, work_s=daemon.work_s[order], t_period=daemon.t_period[order],
                     model_s=daemon.model_s[order],
                     xrun_at=daemon.xrun_at[:min(daemon.xruns, len(daemon.xrun_at))], xruns=daemon.xruns,
                     xrun_kinds=np.array(daemon.xrun_kinds), period=duplex.period, periods=duplex.periods,
                     rate=duplex.rate, device_lost=daemon.device_lost)
        else:
            np.save(a.stats, daemon.work_s[order])
    return 0


def _status_socket(a) -> str:
    if a.socket:
        return a.socket
    if a.config:
        from .config import load_config
        path = load_config(a.config).status.socket
        if path is None:
            raise ValueError(f"{a.config}: status.socket is empty: the daemon has no status socket")
        return str(path)
    return "/run/pedal/status.sock"


def format_status(st: dict) -> str:
    """A running daemon's status, for a person."""
    lines = [f"effect    {st['effect']}  ({st['bundle']})",
             f"state     {'BYPASS' if st['bypassed'] else 'on'}{'  FAULT: dry' if st['in_fault'] else ''}"
             f"{'  SOUND CARD LOST' if st['device_down'] else ''}  (mix {st['mix']:.2f}, LED {st['led']})",
             f"audio     {st['rate']} Hz, period {st['period']} x {st['periods_buffered']}, round trip "
             f"{st['latency_ms']:.2f} ms ({st['latency_frames']} frames)",
             f"load      median {100 * st['load_median']:.1f}%  p99 {100 * st['load_p99']:.1f}%  "
             f"max {100 * st['load_max']:.1f}% of a period",
             f"xruns     {st['xruns']} ({st['xrun_kinds']['capture_overrun']} capture overruns, "
             f"{st['xrun_kinds']['playback_underrun']} playback underruns, {st['xrun_kinds']['latency_drift']} "
             f"latency drifts); sound card lost {st['device_lost']}x",
             "faults    " + ", ".join(f"{k} {v}" for k, v in st["engine_faults"].items() if k != "hops"),
             "knobs     " + ("  ".join(f"{k} {v:g}" for k, v in st["knobs"].items()) or "-")]
    if st.get("knobs_in_fault"):
        lines.append(f"          holding last good value: {', '.join(st['knobs_in_fault'])}")
    if st.get("last_load"):
        ll = st["last_load"]
        lines.append(f"last load {'OK' if ll['ok'] else 'REFUSED'}: {ll['path']}: {ll['message']}")
    lines.append(f"uptime    {st['uptime_s']:.0f} s, {st['periods']} periods, {st['swaps']} hot swaps")
    return "\n".join(lines)


def cmd_status(a) -> int:
    from .daemon import query_status
    path = _status_socket(a)
    command = ("bypass " + a.bypass if a.bypass else f"load {Path(a.load).resolve()}" if a.load else
               "reload" if a.reload else "next" if a.next else "status")
    try:
        reply = query_status(path, command)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"status: no daemon answers at {path} ({e.strerror}): is it running? (systemctl status pedal)",
              file=sys.stderr)
        return 1
    except (TimeoutError, OSError) as e:
        print(f"status: {path}: {e}", file=sys.stderr)
        return 1
    if command == "status" and not a.json:
        print(format_status(reply))
    else:
        print(json.dumps(reply, indent=1))
    return 0 if reply.get("ok", True) else 1


def cmd_knobs(a) -> int:
    from .config import load_config
    from . import knobtool
    cfg = load_config(a.config)
    if cfg.knobs.source == "none" or not cfg.knobs.pots:
        print(f"{a.config}: no knobs configured (knobs.source = {cfg.knobs.source!r}, "
              f"{len(cfg.knobs.pots)} [[knobs.pot]] tables)", file=sys.stderr)
        return 1
    if not a.calibrate:
        return knobtool.live(cfg, seconds=a.seconds, once=a.once)
    print(f"Calibrating {len(cfg.knobs.pots)} pots of {a.config} ({cfg.knobs.source}). "
          "Ctrl-C stops without changing anything.")
    try:
        cals = knobtool.calibrate(cfg)
    except (KeyboardInterrupt, EOFError):
        print("\ncalibration stopped; nothing written")
        return 1
    if not cals:
        print("no pot calibrated")
        return 1
    if a.write:
        backup = knobtool.write_calibrations(a.config, cals)
        print(f"\nwrote {len(cals)} calibrations into {a.config} (previous file: {backup}); "
              "restart the daemon to use them (sudo systemctl restart pedal)")
    else:
        print("\nput these into the config (or run again with --write):\n")
        print(knobtool.toml_snippet(cfg, cals))
    return 0 if len(cals) == len(cfg.knobs.pots) else 1


def cmd_install(a) -> int:
    import shutil
    from .atomic import atomic_path
    if a.dir:
        dest_dir = Path(a.dir)
    else:
        from .config import load_config
        cfg = load_config(a.config)
        dest_dir = cfg.model.bundles_dir or Path(cfg.model.bundle).parent
    for src in a.bundles:
        name = a.name if src == "-" else Path(src).name
        if not name or not name.endswith(".pedal") or "/" in name:
            raise ValueError(f"install: {name or 'a bundle on stdin'}: give a .pedal file name (--name NAME.pedal with -)")
        if src != "-" and not Path(src).is_file():
            raise ValueError(f"install: {src}: not a .pedal archive file")
        dest = dest_dir / name
        # Written beside the target and checked there; only a whole, verified bundle replaces it.
        with atomic_path(dest, mode=0o664) as tmp:
            if src == "-":
                with open(tmp, "wb", buffering=0) as f:
                    while chunk := sys.stdin.buffer.read1(1 << 16):  # what arrives, as it arrives
                        f.write(chunk)
            else:
                shutil.copyfile(src, tmp)
            bundle = load_bundle(tmp)
            shutil.rmtree(bundle.root, ignore_errors=True)
        print(f"install: {dest}: {bundle.manifest.effect}, {len(bundle.manifest.files)} files verified (SHA-256)")
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
    p.add_argument("--correctness-only", action="store_true",
                   help="golden vectors, ALSA and ADC, no real-time headroom (automatic under emulation, and said)")
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
    p.add_argument("--passthrough", action="store_true",
                   help="no model: input straight to output (checks the audio path; the soak benchmark's baseline)")
    p.add_argument("--capture", default="default")
    p.add_argument("--playback", default="default")
    p.add_argument("--rate", type=int, default=48000, help="sample rate for --passthrough (else the bundle's)")
    p.add_argument("--period", type=int, default=128)
    p.add_argument("--periods", type=int, default=2)
    p.add_argument("--format", default="FLOAT_LE")
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--precision", default="")
    p.add_argument("--knobs", default=None, help="knob automation file instead of live knobs")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this much audio (0: run until stopped)")
    p.add_argument("--priority", type=int, default=70, help="SCHED_FIFO priority of the audio thread (0: none)")
    p.add_argument("--cpu", type=int, default=-1, help="pin the audio thread to this core (-1: no)")
    p.add_argument("--no-mlock", action="store_true")
    p.add_argument("--status-socket", default=None)
    p.add_argument("--overrun-budget", type=float, default=0.8,
                   help="fraction of a hop's duration its compute may take before counting as an overrun (0: off)")
    p.add_argument("--stats", default=None,
                   help="at exit, save per-period work times (s) to this .npy; or, to a .npz: work times, arrival "
                        "times, xruns")
    p.add_argument("--last-good", default=None,
                   help="keep a copy of the bundle here; start from it when --bundle is partial or bad (as model.last_good)")
    p.add_argument("--choice", default=None,
                   help="record the bundle last switched to here and start with it next time (as model.choice)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("status", help="ask a running daemon, or tell it to bypass / load a bundle")
    p.add_argument("--socket", default=None, help="default: the config's status.socket, else /run/pedal/status.sock")
    p.add_argument("--config", default=None)
    p.add_argument("--json", action="store_true", help="the daemon's reply as JSON")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--bypass", choices=("on", "off", "toggle"))
    act.add_argument("--load", metavar="BUNDLE", help="hot swap to this bundle (self-checked first; refused if bad)")
    act.add_argument("--reload", action="store_true", help="load the configured bundle again (like SIGHUP)")
    act.add_argument("--next", action="store_true", help="the next bundle of model.bundles_dir (like a long press)")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("knobs", help="live pot readings, and calibration")
    p.add_argument("--config", required=True)
    p.add_argument("--calibrate", action="store_true", help="walk through each pot's end stops")
    p.add_argument("--write", action="store_true", help="with --calibrate: write the result into the config")
    p.add_argument("--once", action="store_true", help="one reading of every pot, then exit")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    p.set_defaults(fn=cmd_knobs)
    from .capture import session as capture
    p = sub.add_parser("capture", help="model your own pedal: play the capture signal through it per knob setting")
    capture.add_arguments(p)
    p.set_defaults(fn=capture.run)
    p = sub.add_parser("install", help="verify bundles and copy them onto the box atomically")
    p.add_argument("bundles", nargs="+", metavar="BUNDLE", help=".pedal files; - reads one from stdin (with --name)")
    p.add_argument("--config", default="/etc/pedal/pedal.toml", help="install into its model.bundles_dir")
    p.add_argument("--dir", default=None, help="install into this folder instead")
    p.add_argument("--name", default=None, help="the file name for a bundle read from stdin")
    p.set_defaults(fn=cmd_install)
    p = sub.add_parser("capture-signal", help="write the capture signal to a WAV file (to listen to it)")
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=capture.signal_command)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if a.cmd == "run" and not (a.config or a.bundle or a.passthrough):
        ap.error("run needs --config, --bundle or --passthrough")
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
