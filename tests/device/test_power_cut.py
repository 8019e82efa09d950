"""Power cuts and broken copies: a pedal is switched off at the wall, often while a bundle or the
config is being written. Every writer goes through device/atomic.py (temp file, fsync, rename,
fsync the directory), so a cut leaves the old file or the new one; and when the configured
bundle is cut off anyway (copied with scp, which writes in place), the daemon starts from its
last good copy and says why, in the log and in its status.

A power cut is played by SIGKILL in the middle of a write: what is on disk then is what a cut
leaves (the page cache aside, which fsync-then-rename covers)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from device.atomic import STALE_TMP_S, TMP_INFIX, write_atomic
from device.bundle import BundleError, load_bundle, write_bundle
from device.daemon import Daemon, read_choice, remember_choice, remember_good, start_bundle
from device.engine import Engine
from device.knobtool import write_calibrations
from device.pots import PotCalibration

from .conftest import REPO
from .helpers import wait_for
from .test_alsa_file import asoundrc, music_like
from .test_daemon import AutomationKnobs, knob_row

SR = 48000


@pytest.fixture(scope="module")
def new_bundle(bundle_path, tmp_path_factory):
    """A second, different bundle (same model, its own manifest): the "new version" being copied."""
    old = load_bundle(bundle_path)
    man = old.manifest
    man.description = "version 2"
    out = write_bundle(tmp_path_factory.mktemp("v2") / "v2", man, {name: old.path(name) for name in man.files})
    return out.with_suffix(".pedal")


def killed_mid_write(code: str) -> None:
    """Run ``code`` (a Python writer that prints "half" once half its data is on disk, then
    waits) in a child, and SIGKILL it there."""
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "half"
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        child.kill()


# --- the shared writer -------------------------------------------------------------------------------

def test_a_write_killed_mid_way_leaves_the_old_file_and_a_hidden_temporary(tmp_path):
    target = tmp_path / "pedal.toml"
    target.write_text("old = 1\n")
    os.chmod(target, 0o640)
    # the writer stops (sleeps) inside atomic_path after half of the new content
    code = ("import time\nfrom device.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    f = open(tmp, 'wb'); f.write(b'x' * 5000); f.flush()\n"
            "    print('half', flush=True); time.sleep(60)\n")
    killed_mid_write(code)
    assert target.read_text() == "old = 1\n"
    stray = list(tmp_path.glob(f".pedal.toml{TMP_INFIX}*"))
    assert len(stray) == 1 and not stray[0].name.endswith((".toml", ".pedal"))  # nothing reads it by mistake
    # the next write replaces the file whole, keeps its permissions, and clears an old stray temporary
    os.utime(stray[0], (time.time() - 2 * STALE_TMP_S,) * 2)
    write_atomic(target, "new = 2\n")
    assert target.read_text() == "new = 2\n" and (target.stat().st_mode & 0o777) == 0o640
    assert not list(tmp_path.glob(f".pedal.toml{TMP_INFIX}*"))


def test_a_config_that_is_a_link_is_written_beside_the_real_file(tmp_path):
    """A read-only root: /etc/pedal/pedal.toml links to the data partition; the link stays a link."""
    data, etc = tmp_path / "data", tmp_path / "etc"
    data.mkdir()
    etc.mkdir()
    real = data / "pedal.toml"
    real.write_text((REPO / "firmware_cfg/pedal.toml").read_text())
    (etc / "pedal.toml").symlink_to(real)
    backup = write_calibrations(etc / "pedal.toml", {0: PotCalibration(0.02, 0.97, True)})
    assert (etc / "pedal.toml").is_symlink() and backup == data / "pedal.toml.bak"
    assert "raw_min = 0.0200" in real.read_text() and "reversed = true" in real.read_text()
    assert sorted(p.name for p in etc.iterdir()) == ["pedal.toml"]


# --- installing a bundle -------------------------------------------------------------------------------

def test_an_install_killed_mid_copy_leaves_the_previous_bundle_whole(bundle_path, new_bundle, tmp_path):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    configured = bundles / "comp4.pedal"
    configured.write_bytes(bundle_path.read_bytes())
    data = new_bundle.read_bytes()
    # `python -m device install --name comp4.pedal -` reading the new bundle from a pipe (as over ssh),
    # killed when half of it has arrived
    child = subprocess.Popen([sys.executable, "-m", "device", "install", "--dir", str(bundles), "--name", "comp4.pedal",
                              "-"], stdin=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        child.stdin.write(data[:len(data) // 2])
        child.stdin.flush()
        wait_for(lambda: any(p.stat().st_size >= len(data) // 2 for p in bundles.glob(".comp4.pedal.tmp-*")),
                 timeout_s=60, what="half the bundle on disk")
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        child.kill()
    assert configured.read_bytes() == bundle_path.read_bytes()  # the previous bundle, whole
    assert sorted(p.name for p in bundles.glob("*.pedal")) == ["comp4.pedal"]  # the footswitch's list
    assert load_bundle(configured).manifest.description != "version 2"
    # the same command, not interrupted, installs the new one
    r = subprocess.run([sys.executable, "-m", "device", "install", "--dir", str(bundles), "--name", "comp4.pedal", "-"],
                       input=data, capture_output=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert load_bundle(configured).manifest.description == "version 2"
    # a bundle that arrives cut off is refused and changes nothing
    r = subprocess.run([sys.executable, "-m", "device", "install", "--dir", str(bundles), "--name", "comp4.pedal", "-"],
                       input=bundle_path.read_bytes()[:5000], capture_output=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and b"bundle refused" in r.stderr and b"Traceback" not in r.stderr
    assert load_bundle(configured).manifest.description == "version 2"


# --- the daemon starts from the last good bundle ----------------------------------------------------

def run_daemon(tmp_path, bundle, last_good, seconds=1.0):
    """`python -m device run` through file-backed ALSA PCMs; -> (completed process, mono output)."""
    x = music_like(seconds + 0.2)
    np.stack([x, np.zeros_like(x)], 1).astype("<f4").tofile(tmp_path / "in.raw")
    (tmp_path / "out.raw").unlink(missing_ok=True)
    env = asoundrc(tmp_path, tmp_path / "in.raw", tmp_path / "out.raw")
    r = subprocess.run([sys.executable, "-m", "device", "run", "--bundle", str(bundle), "--last-good", str(last_good),
                        "--capture", "testcap", "--playback", "testplay", "--format", "FLOAT_LE", "--period", "128",
                        "--periods", "2", "--seconds", str(seconds), "--overrun-budget", "0", "--priority", "0",
                        "--no-mlock"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    out = np.fromfile(tmp_path / "out.raw", "<f4").reshape(-1, 2)[128:, 0] if r.returncode == 0 else None
    return r, x, out


def test_a_bundle_cut_off_at_the_configured_path_starts_the_daemon_from_the_last_good_copy(
        bundle_path, new_bundle, tmp_path):
    configured = tmp_path / "bundles" / "comp4.pedal"
    configured.parent.mkdir()
    configured.write_bytes(bundle_path.read_bytes())
    last_good = tmp_path / "state" / "last-good.pedal"
    r, _, _ = run_daemon(tmp_path, configured, last_good, seconds=0.2)
    assert r.returncode == 0, r.stderr
    assert "kept as the last good bundle" in r.stderr
    assert last_good.read_bytes() == bundle_path.read_bytes()
    mtime = last_good.stat().st_mtime_ns
    r, _, _ = run_daemon(tmp_path, configured, last_good, seconds=0.2)  # the same bundle again: no new write
    assert r.returncode == 0 and "kept as the last good" not in r.stderr and last_good.stat().st_mtime_ns == mtime

    # scp writes in place: a copy of the new version, cut off by a power cut half way
    data = new_bundle.read_bytes()
    code = ("import time\n"
            f"f = open({str(configured)!r}, 'wb'); f.write(open({str(new_bundle)!r}, 'rb').read()[:{len(data) // 2}])\n"
            "f.flush(); print('half', flush=True); time.sleep(60)\n")
    killed_mid_write(code)
    assert configured.stat().st_size == len(data) // 2
    with pytest.raises(BundleError):
        load_bundle(configured)

    r, x, out = run_daemon(tmp_path, configured, last_good, seconds=1.0)
    assert r.returncode == 0, r.stderr
    print(r.stderr)
    # it says why, and which bundle it plays ...
    assert "configured bundle refused" in r.stderr and "not a readable bundle archive" in r.stderr
    assert f"started from the last good bundle {last_good}" in r.stderr
    assert f"bundle {last_good}: comp4" in r.stderr
    bundle = load_bundle(last_good)
    n = len(out)
    rows = np.tile(np.array([k.to_normalized(k.default) for k in bundle.manifest.knobs], np.float32), (n // 64, 1))
    ref = Engine(bundle).render(x[:n], rows)
    # ... and plays it: the last good bundle's model (to float rounding), which the dry signal is not
    err, model_from_dry = np.abs(out - ref).max(), np.abs(ref - x[:n]).max()
    print(f"max |out - model| {err:.2e}, max |model - dry| {model_from_dry:.3f}")
    assert err < 1e-5 and model_from_dry > 1000 * max(err, 1e-6) and np.abs(out).max() > 0.01
    assert last_good.read_bytes() == bundle_path.read_bytes()  # the fallback does not touch the copy

    # with the last good copy broken too, the daemon refuses to start and names both faults
    last_good.write_bytes(last_good.read_bytes()[:3000])
    r, _, _ = run_daemon(tmp_path, configured, last_good, seconds=0.2)
    assert r.returncode == 2 and "the last good copy is refused too" in r.stderr and "Traceback" not in r.stderr


def test_the_status_says_which_bundle_was_refused_and_why(bundle_path, tmp_path):
    from device.__main__ import format_status
    from .memcard import MemCard
    configured = tmp_path / "comp4.pedal"
    configured.write_bytes(bundle_path.read_bytes()[:20000])
    last_good = tmp_path / "last-good.pedal"
    assert remember_good(load_bundle(bundle_path), last_good)
    bundle, refused = start_bundle(configured, last_good)  # what `run` does at start
    assert bundle.source == last_good and "configured bundle refused" in refused
    engine = Engine(bundle)
    engine.prime(knob_row(bundle))
    d = Daemon(engine, MemCard(np.zeros(SR, np.float32), period=256), AutomationKnobs(knob_row(bundle)[None, :]),
               last_good=last_good)
    d._refused(refused, configured)
    st = d.status()
    assert st["last_load"]["ok"] is False and st["last_load"]["path"] == str(configured)
    assert st["led"] == "fault"  # the LED blinks for a while, as for any refused bundle
    text = format_status(st)
    print(text)
    assert f"last load REFUSED: {configured}: configured bundle refused" in text
    assert f"started from the last good bundle {last_good}" in text


def test_the_bundle_switched_to_last_is_the_one_the_daemon_starts_with_until_the_config_changes(
        bundle_path, new_bundle, tmp_path):
    from .memcard import MemCard
    configured, choice = tmp_path / "comp4.pedal", tmp_path / "state" / "choice.json"
    configured.write_bytes(bundle_path.read_bytes())
    choice.parent.mkdir()
    bundle = load_bundle(configured)
    engine = Engine(bundle)
    engine.prime(knob_row(bundle))
    d = Daemon(engine, MemCard(np.zeros(SR, np.float32), period=256), AutomationKnobs(knob_row(bundle)[None, :]),
               reload_path=lambda: configured, choice=choice)
    d.load_async(new_bundle).join()  # the footswitch, the status socket's load, the web page: all end here
    assert d.last_load["ok"]
    assert json.loads(choice.read_text()) == {"bundle": str(new_bundle), "configured": str(configured)}
    assert [p.name for p in choice.parent.iterdir()] == ["choice.json"]  # written atomically: no temporaries
    mtime = choice.stat().st_mtime_ns
    assert not remember_choice(choice, new_bundle, configured) and choice.stat().st_mtime_ns == mtime  # no rewrite

    chosen = read_choice(choice, configured)  # what `run` does at start
    assert chosen == new_bundle
    started, refused = start_bundle(configured, None, chosen)
    assert started.source == new_bundle and refused is None
    # the config names another bundle since: it wins
    assert read_choice(choice, tmp_path / "other.pedal") is None
    # the chosen file broken (a copy cut off): the configured bundle, and why
    broken = tmp_path / "broken.pedal"
    broken.write_bytes(new_bundle.read_bytes()[:20000])
    remember_choice(choice, broken, configured)
    started, refused = start_bundle(configured, None, read_choice(choice, configured))
    assert started.source == configured and "chosen bundle refused" in refused and str(broken) in refused
    # gone, or an unreadable record: the configured bundle, quietly
    broken.unlink()
    assert read_choice(choice, configured) is None
    choice.write_text("{not json")
    assert read_choice(choice, configured) is None
    # switching back to the configured bundle (SIGHUP, or from the list) records it: no surprise later
    d.load_async(configured).join()
    assert read_choice(choice, configured) is None and json.loads(choice.read_text())["bundle"] == str(configured)


# --- a read-only root (provision.sh --read-only-root) ------------------------------------------------

def test_provision_puts_the_root_under_an_overlay_and_bundles_and_config_on_a_data_partition(tmp_path, bundle_path):
    provision = REPO / "firmware_cfg/provision.sh"
    root = tmp_path / "root"
    (root / "boot/firmware").mkdir(parents=True)
    stock_cmdline = "console=serial0,115200 console=tty1 root=PARTUUID=1234-02 rootfstype=ext4 rootwait\n"
    (root / "boot/firmware/cmdline.txt").write_text(stock_cmdline)
    (root / "boot/firmware/config.txt").write_text("dtparam=audio=on\n")
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text("proc /proc proc defaults 0 0\n")
    env = {**os.environ, "DESTDIR": str(root)}
    args = ["bash", str(provision), "--bundle", str(bundle_path), "--read-only-root", "--data-partition", "LABEL=pedal-data"]
    runs = [subprocess.run(args, env=env, capture_output=True, text=True) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    # the data partition at /var/lib/pedal, once, after what was there; the daemon waits for it
    fstab = (root / "etc/fstab").read_text().splitlines()
    assert fstab[0] == "proc /proc proc defaults 0 0"
    assert [line.split()[:3] for line in fstab[2:]] == [["LABEL=pedal-data", "/var/lib/pedal", "ext4"]] and len(fstab) == 3
    assert "RequiresMountsFor=/var/lib/pedal" in (root / "etc/systemd/system/pedal.service.d/10-data-partition.conf").read_text()
    # the overlay on from the next boot, once, the original command line kept
    assert (root / "boot/firmware/cmdline.txt").read_text() == "overlayroot=tmpfs:recurse=0 " + stock_cmdline
    assert (root / "boot/firmware/cmdline.txt.pedal-orig").read_text() == stock_cmdline
    # the config on the data partition, /etc/pedal/pedal.toml a relative link to it (right on the box too)
    link = root / "etc/pedal/pedal.toml"
    assert link.is_symlink() and os.readlink(link) == "../../var/lib/pedal/pedal.toml"
    assert link.resolve() == (root / "var/lib/pedal/pedal.toml").resolve()
    assert link.read_bytes() == (REPO / "firmware_cfg/pedal.toml").read_bytes()
    # the bundle copied whole (through a hidden temporary), nothing left beside it
    bundles = root / "var/lib/pedal/bundles"
    assert (bundles / bundle_path.name).read_bytes() == bundle_path.read_bytes()
    assert sorted(p.name for p in bundles.iterdir()) == [bundle_path.name]
    assert "is up to date" in runs[1].stdout and "cmdline.txt has overlayroot= already" in runs[1].stdout
    # without a writable place, the option is refused before anything is done
    r = subprocess.run(["bash", str(provision), "--read-only-root"], env={**os.environ, "DESTDIR": str(tmp_path)},
                       capture_output=True, text=True)
    assert r.returncode != 0 and "needs --data-partition" in r.stderr
