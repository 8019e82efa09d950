"""Operations on a playing daemon, in real time through the JACK dummy server: a bundle reloaded
with SIGHUP crossfades in without a click, `python -m device status --config` reads the running
daemon, and a knob source that vanishes leaves the knobs where they were."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from device.bundle import load_bundle
from device.engine import Engine
from device.jackrig import FakeCard

from .conftest import REPO
from .helpers import max_step
from .jackkit import (CYCLE, SR, Pedal, jack_env, knob_positions, short_socket_path, sine, steady, watch,
                      write_config, write_knob_file)
from .test_jack import HIGH, LOW, PERIOD, SLACK, asoundrc, clean, jack_server, specs  # noqa: F401 (fixtures)
from .test_jack import pytestmark  # noqa: F401 (the same skip: needs jackd)


def fresh_model_steps(bundle_path, setting, x) -> float:
    """The largest step a model that starts from nothing makes on ``x``, over 8 start phases: a
    freshly swapped-in model is allowed its own start-up transient, nothing more."""
    bundle = load_bundle(bundle_path)
    row = np.array(knob_positions(bundle.manifest.knobs, **setting), np.float32)
    worst = 0.0
    for phase in range(0, CYCLE, CYCLE // 8):
        seg = np.roll(x, -phase)[:int(0.15 * SR) // 64 * 64]
        y = Engine(bundle, precision="float32").render(seg, np.tile(row, (len(seg) // 64, 1)))
        worst = max(worst, max_step(y))
    return worst


def test_sighup_reloads_the_configured_bundle_with_a_crossfade_and_status_reads_the_daemon(
        jack_server, asoundrc, tmp_path, bundle_path, specs):
    knob_file = tmp_path / "knobs.txt"
    write_knob_file(knob_file, knob_positions(specs, **LOW))
    sock = short_socket_path()
    cfg = write_config(tmp_path / "pedal.toml", bundle_path, knob_file, sock, specs, period=PERIOD)
    x = sine()
    with FakeCard(jack_server.name, x, record_s=30) as card:
        pedal = Pedal(["--config", str(cfg)], jack_env(jack_server, asoundrc), tmp_path, sock=sock)
        try:
            pedal.wait_settled()
            judged = None
            for attempt in range(3):
                time.sleep(0.3)
                st0, t_hup = pedal.status(), card.pos
                pedal.signal(signal.SIGHUP)
                deadline = time.monotonic() + 20
                while pedal.status()["swaps"] < st0["swaps"] + 1:
                    assert time.monotonic() < deadline, pedal.log()
                    time.sleep(0.05)
                time.sleep(0.5)
                st1, t_end = pedal.status(), card.pos
                window = (t_hup - int(0.1 * SR), t_end)
                if clean(card, window, st0["xruns"], st1["xruns"]):
                    judged = window
                    break
            r = subprocess.run([sys.executable, "-m", "device", "status", "--config", str(cfg)], capture_output=True,
                               text=True, timeout=30, cwd=REPO)
        finally:
            log = pedal.stop()
    assert judged, f"an xrun during every reload:\n{log}"
    assert "reload: loading" in log and "passed its self-check" in log and "crossfading to it" in log
    rec = card.recording
    a, b = judged
    before = rec[a - int(0.2 * SR):a]
    after = rec[b - int(0.2 * SR) // CYCLE * CYCLE:b]
    assert steady(before, tol=0.02) and steady(after, tol=0.02)
    own = max(max_step(before), max_step(after), max_step(x), fresh_model_steps(bundle_path, LOW, x))
    threshold = SLACK * own + 1e-4
    step = max_step(rec[a:b])
    dry = x[(np.arange(a - len(before), a) - 2 * PERIOD) % len(x)]  # the input, one round trip late
    gap = float(np.abs(before - dry).max())  # what a hard switch between wet and dry would jump
    print(f"SIGHUP reload: largest step {step:.4f}, allowed {threshold:.4f} (dry {max_step(x):.4f}, "
          f"wet {max(max_step(before), max_step(after)):.4f}); a hard switch would jump {gap:.4f}")
    assert gap > 2 * threshold
    assert step <= threshold
    assert r.returncode == 0, r.stderr
    assert "effect    comp4" in r.stdout and f"{st1['swaps']} hot swaps" in r.stdout


def test_a_knob_source_that_vanishes_leaves_the_knobs_where_they_were(jack_server, asoundrc, tmp_path, bundle_path,
                                                                        specs):
    """The knob file (the development stand-in for the ADC) is deleted mid-song: the knobs hold
    their last good values and the sound does not change by a sample; the file comes back with
    new values and the knobs follow them again."""
    knob_file = tmp_path / "knobs.txt"
    write_knob_file(knob_file, knob_positions(specs, **LOW))
    sock = short_socket_path()
    cfg = write_config(tmp_path / "pedal.toml", bundle_path, knob_file, sock, specs, period=PERIOD)
    with FakeCard(jack_server.name, sine(), record_s=30) as card:
        pedal = Pedal(["--config", str(cfg)], jack_env(jack_server, asoundrc), tmp_path, sock=sock)
        try:
            pedal.wait_settled()
            time.sleep(0.8)  # the compressor's gain settles
            judged = None
            for attempt in range(3):
                st0, t_del = pedal.status(), card.pos
                knob_file.unlink()
                brackets = watch(pedal, card, 0.6)
                st1, t_end = pedal.status(), card.pos
                assert st1["knobs"] == st0["knobs"]  # held
                assert st1["periods"] > st0["periods"] + 150  # and playing
                if not brackets and clean(card, (t_del - int(0.3 * SR), t_end), st0["xruns"], st1["xruns"]):
                    judged = (t_del, t_end)
                write_knob_file(knob_file, knob_positions(specs, **LOW))
                time.sleep(0.3)
                if judged:
                    break
            write_knob_file(knob_file, knob_positions(specs, **HIGH))  # back, with a new setting
            time.sleep(0.5)
            st2 = pedal.status()
        finally:
            log = pedal.stop()
    assert judged, f"an xrun in every attempt:\n{log}"
    t_del, t_end = judged
    seg = card.recording[t_del - int(0.3 * SR):t_end]
    err = float(np.abs(seg[CYCLE:] - seg[:-CYCLE]).max())
    print(f"knob file deleted: output repeats every cycle to within {err:.1e} across the deletion")
    assert err < 1e-3  # not a sample changed (beyond the settling compressor's last thousandths)
    assert st2["knobs"]["threshold_db"] == pytest.approx(HIGH["threshold_db"], abs=0.1)
    assert "Traceback" not in log
