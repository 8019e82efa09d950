"""Through real alsa-lib (file-backed PCMs, exact and unpaced): the daemon's output equals the
offline render of the same input and knob automation, sample for sample."""
import os
import subprocess
import sys

import numpy as np
import pytest

from device.automation import save_automation
from device.bundle import load_bundle
from device.engine import Engine

from .conftest import REPO

SR = 48000


def asoundrc(tmp_path, infile, outfile):
    rc = tmp_path / "asoundrc"
    rc.write_text(f"""
pcm.testcap {{ type file slave.pcm "null" file "/dev/null" infile "{infile}" format "raw" }}
pcm.testplay {{ type file slave.pcm "null" file "{outfile}" format "raw" }}
""")
    return dict(os.environ, ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{rc}", PYTHONPATH=str(REPO))


def music_like(seconds, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    env = 10 ** (np.repeat(rng.uniform(-40, -3, int(seconds * 8) + 1), SR // 8)[:n] / 20)
    return (env * np.sin(2 * np.pi * 196 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.mark.parametrize("fmt,dtype,scale,period", [("FLOAT_LE", "<f4", 1.0, 128), ("S32_LE", "<i4", 2.0 ** 31, 64),
                                                    ("S16_LE", "<i2", 2.0 ** 15, 256)])
def test_daemon_through_alsa_equals_offline_render(bundle_path, tmp_path, fmt, dtype, scale, period):
    bundle = load_bundle(bundle_path)
    specs = bundle.manifest.knobs
    seconds, periods = 2.0, 2
    x = music_like(seconds + 0.2)
    if dtype != "<f4":  # what the card delivers: integers; the engine sees them scaled back
        xi = np.clip(np.rint(x * scale), -scale, scale - 1).astype(dtype)
        x = (xi.astype(np.float64) / scale).astype(np.float32)
        frames = np.stack([xi, np.zeros_like(xi)], 1)
    else:
        frames = np.stack([x, np.zeros_like(x)], 1).astype(dtype)
    frames.tofile(tmp_path / "in.raw")
    knobs = tmp_path / "knobs.csv"
    save_automation(knobs, [0.0, 1.0, 2.0], [[-5, 2, 10, 50], [-40, 8, 3, 300], [-20, 4, 30, 100]], specs)
    env = asoundrc(tmp_path, tmp_path / "in.raw", tmp_path / "out.raw")
    r = subprocess.run([sys.executable, "-m", "device", "run", "--bundle", str(bundle_path), "--capture", "testcap",
                        "--playback", "testplay", "--format", fmt, "--period", str(period), "--periods", str(periods),
                        "--knobs", str(knobs), "--seconds", str(seconds), "--overrun-budget", "0", "--priority", "0",
                        "--no-mlock"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "xruns 0" in r.stderr
    out = np.fromfile(tmp_path / "out.raw", dtype).reshape(-1, 2).astype(np.float64) / scale
    n = int(seconds * SR) // period * period
    prefill = (periods - 1) * period  # playback starts with the first period, periods - 1 of silence ahead of it
    assert len(out) == n + prefill  # the prefill, then every period
    assert not out[:prefill].any()  # prefill is silence
    got = out[prefill:, 0]
    assert np.array_equal(got, out[prefill:, 1])  # both output channels carry the mono signal

    from device.__main__ import _automation_rows
    rows = _automation_rows(knobs, bundle, n)
    ref = Engine(bundle).render(x[:n], rows)
    if dtype != "<f4":
        ref = np.clip(np.rint(ref.astype(np.float32) * np.float32(scale)), -scale, scale - 1) / scale
    assert np.array_equal(got, ref.astype(np.float64)), f"max diff {np.abs(got - ref).max()}"
    assert np.abs(got).max() > 0.01  # real audio came through


def test_a_pcm_that_does_not_exist_is_named_in_the_error(bundle_path, tmp_path):
    env = asoundrc(tmp_path, tmp_path / "in.raw", tmp_path / "out.raw")
    r = subprocess.run([sys.executable, "-m", "device", "run", "--bundle", str(bundle_path), "--capture", "nosuchpcm",
                        "--playback", "testplay", "--seconds", "0.1", "--priority", "0", "--no-mlock"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2
    assert "cannot open ALSA capture 'nosuchpcm'" in r.stderr
