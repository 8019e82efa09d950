"""firmware_cfg: the files that turn a Raspberry Pi into the pedal, checked with the real tools
where this machine has them: bash, systemd-analyze, alsa-lib (aplay and libasound itself), the
daemon's own config loader, and provision.sh installing into a temporary DESTDIR."""
from __future__ import annotations

import configparser
import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from device.config import PRECISIONS, check_knob_names, load_config

REPO = Path(__file__).resolve().parents[2]
FIRMWARE = REPO / "firmware_cfg"
PROVISION = FIRMWARE / "provision.sh"
IMAGE = FIRMWARE / "image"
STAGE = IMAGE / "stage-pedal"
UNITS = FIRMWARE / "systemd"
SCRIPTS = [PROVISION, IMAGE / "prepare.sh", STAGE / "prerun.sh", STAGE / "00-install" / "00-run.sh"]
COMPRESSOR_KNOBS = ["threshold_db", "ratio", "attack_ms", "release_ms"]
# The ALSA card id each HAT overlay's driver registers (what /proc/asound/cards shows in brackets).
HAT_CARD_IDS = {"hifiberry-dacplusadc": "sndrpihifiberry", "audioinjector-wm8731-audio": "audioinjectorpi"}
I2S_GPIOS = {18, 19, 20, 21}  # PCM_CLK, PCM_FS, PCM_DIN, PCM_DOUT: taken by any I2S audio HAT

# What provision.sh puts where (source under firmware_cfg -> path on the Pi).
INSTALLED = {
    "asound.conf": "etc/asound.conf",
    "99-pedal-realtime.conf": "etc/security/limits.d/99-pedal-realtime.conf",
    "modules-load.d/pedal.conf": "etc/modules-load.d/pedal.conf",
    "NetworkManager/99-pedal-wifi-powersave.conf": "etc/NetworkManager/conf.d/99-pedal-wifi-powersave.conf",
    "systemd/pedal.service": "etc/systemd/system/pedal.service",
    "systemd/pedal-selftest.service": "etc/systemd/system/pedal-selftest.service",
    "systemd/pedal-cpu-performance.service": "etc/systemd/system/pedal-cpu-performance.service",
    "systemd/pedal-web.service": "etc/systemd/system/pedal-web.service",
    "polkit/50-pedal-web.rules": "etc/polkit-1/rules.d/50-pedal-web.rules",
    "pedal.toml": "etc/pedal/pedal.toml",
    "README.md": "opt/pedal/firmware_cfg/README.md",
}


def sh(args, env=None, cwd=None, check=True, user=None) -> subprocess.CompletedProcess:
    """Run a command with the environment plus env; as user 65534 (nobody) when user="nobody"."""
    full_env = {**os.environ, **(env or {})}
    if user == "nobody" and os.geteuid() == 0:
        args = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *args]
    out = subprocess.run(args, env=full_env, cwd=cwd, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values...]}} (keys may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{n}: key outside a section"
        assert "=" in line and not line.endswith("\\"), f"{path.name}:{n}: not key=value: {line!r}"
        key, value = (s.strip() for s in line.split("=", 1))
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key), f"{path.name}:{n}: bad key {key!r}"
        current.setdefault(key, []).append(value)
    return sections


def one(unit: dict, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


# --- scripts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_scripts_parse_and_are_executable(script):
    sh(["bash", "-n", str(script)])
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} must be executable (pi-gen runs ./00-run.sh)"
    assert script.read_text().startswith("#!/")


def test_provision_help_and_bad_options():
    out = sh(["bash", str(PROVISION), "--help"])
    assert "--dry-run" in out.stdout and "DESTDIR" in out.stdout
    bad = sh(["bash", str(PROVISION), "--frobnicate"], check=False)
    assert bad.returncode != 0 and "unknown option '--frobnicate'" in bad.stderr


def test_provision_refuses_to_change_the_system_without_root():
    if shutil.which("setpriv") is None and os.geteuid() == 0:
        pytest.skip("needs setpriv to drop root")
    out = sh(["bash", str(PROVISION), "--no-apt"], user="nobody", check=False)
    assert out.returncode != 0 and "run as root" in out.stderr


def test_dry_run_on_this_system_prints_every_step_and_changes_nothing(tmp_path):
    """As an unprivileged user, so that a step which ran by mistake could not change anything."""
    if shutil.which("setpriv") is None and os.geteuid() == 0:
        pytest.skip("needs setpriv to drop root")
    before = {p: p.exists() for p in (Path("/opt/pedal"), Path("/etc/pedal"), Path("/var/lib/pedal"))}
    out = sh(["bash", str(PROVISION), "--dry-run"], user="nobody", cwd=tmp_path)
    log = out.stdout
    assert "dry run: nothing is changed" in log
    assert "+ apt-get install -y --no-install-recommends python3-venv python3-dev libasound2-dev gcc" in log
    assert re.search(r"\+ (useradd --system --gid pedal --groups audio,gpio,spi,i2c .* pedal|usermod --gid pedal)", log)
    assert "+ python3 -m venv --system-site-packages /opt/pedal/venv" in log or \
        "/opt/pedal/venv exists; updating its packages" in log  # a provisioned system (make test-pi)
    assert "+ /opt/pedal/venv/bin/python -m pip install --disable-pip-version-check -r /opt/pedal/requirements/device.txt" in log
    assert f"+ install -D -m 0644 {FIRMWARE}/systemd/pedal.service /etc/systemd/system/pedal.service" in log or \
        "/etc/systemd/system/pedal.service is up to date" in log
    assert "+ systemctl enable pedal-cpu-performance.service pedal.service" in log
    assert {p: p.exists() for p in before} == before


def test_dry_run_into_a_destdir_changes_nothing(tmp_path):
    root = tmp_path / "root"
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text("dtparam=audio=on\n")
    out = sh(["bash", str(PROVISION), "--dry-run"], env={"DESTDIR": str(root)})
    assert f"+ install -D -m 0644 {FIRMWARE}/asound.conf {root}/etc/asound.conf" in out.stdout
    assert f"+ systemctl --root={root} enable" in out.stdout
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["boot", "boot/firmware", "boot/firmware/config.txt"]
    assert (root / "boot/firmware/config.txt").read_text() == "dtparam=audio=on\n"


@pytest.fixture()
def installed(tmp_path):
    """provision.sh run twice into a DESTDIR that looks like a fresh Raspberry Pi OS."""
    root = tmp_path / "root"
    boot = root / "boot/firmware/config.txt"
    boot.parent.mkdir(parents=True)
    stock = "# stock Raspberry Pi OS config\ndtparam=audio=on\ndtoverlay=vc4-kms-v3d\n[cm5]\ndtoverlay=dwc2,dr_mode=host\n\n[all]\n"
    boot.write_text(stock)
    (root / "etc").mkdir()
    (root / "etc/asound.conf").write_text("pcm.!default { type hw card 1 }\n")  # someone else's
    bundle = tmp_path / "comp4.pedal"
    bundle.write_bytes(b"not really a tar, provision only copies it")
    env = {"DESTDIR": str(root)}
    first = sh(["bash", str(PROVISION), "--bundle", str(bundle)], env=env)
    second = sh(["bash", str(PROVISION)], env=env)
    return root, stock, first.stdout + first.stderr, second.stdout + second.stderr


def test_provision_installs_every_file_where_the_pi_expects_it(installed):
    root, *_ = installed
    for src, dest in INSTALLED.items():
        assert (root / dest).read_bytes() == (FIRMWARE / src).read_bytes(), dest
    for py in (REPO / "device").glob("*.py"):
        assert (root / "opt/pedal/device" / py.name).read_bytes() == py.read_bytes()
    assert not list((root / "opt/pedal/device").rglob("__pycache__"))
    assert (root / "opt/pedal/requirements/device.txt").read_bytes() == (REPO / "requirements/device.txt").read_bytes()
    assert (root / "var/lib/pedal/bundles/comp4.pedal").is_file()
    assert stat.S_IMODE((root / "var/lib/pedal/bundles").stat().st_mode) == 0o2775
    # The installed config loads with the installed code's loader.
    cfg = sh([sys.executable, "-c", "import sys; from device.config import load_config; "
              "c = load_config(sys.argv[1]); print(c.model.bundle)", str(root / "etc/pedal/pedal.toml")],
             cwd=root / "opt/pedal")
    assert cfg.stdout.strip() == "/var/lib/pedal/bundles/comp4.pedal"


def test_provision_enables_the_services(installed):
    if shutil.which("systemctl") is None:
        pytest.skip("no systemctl here")
    root, *_ = installed
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == ["pedal-cpu-performance.service", "pedal-web.service",
                                                       "pedal.service"]
    assert os.readlink(wants / "pedal.service") == "/etc/systemd/system/pedal.service"


def test_provision_appends_the_boot_config_once_and_keeps_the_original(installed):
    root, stock, _, second = installed
    boot = (root / "boot/firmware/config.txt").read_text()
    block = (FIRMWARE / "config.txt.append").read_text()
    assert boot == stock + "\n" + block
    assert boot.count("# >>> SignalTrain-Pi pedal >>>") == 1
    assert (root / "boot/firmware/config.txt.pedal-orig").read_text() == stock
    assert "/boot/firmware/config.txt is up to date" in second


def test_provision_keeps_someone_elses_asound_conf_and_an_edited_pedal_toml(installed, tmp_path):
    root, *_ = installed
    assert (root / "etc/asound.conf.pedal-orig").read_text() == "pcm.!default { type hw card 1 }\n"
    toml = root / "etc/pedal/pedal.toml"
    toml.write_text(toml.read_text().replace("period_frames = 128", "period_frames = 64"))
    sh(["bash", str(PROVISION)], env={"DESTDIR": str(root)})
    assert "period_frames = 64" in toml.read_text()  # the user's edit survives
    assert (root / "etc/pedal/pedal.toml.dist").read_bytes() == (FIRMWARE / "pedal.toml").read_bytes()


def test_a_second_run_changes_nothing(installed):
    root, _, _, second = installed
    for dest in ("/etc/asound.conf", "/etc/systemd/system/pedal.service", "/etc/pedal/pedal.toml",
                 "/etc/security/limits.d/99-pedal-realtime.conf"):
        assert f"{dest} is up to date" in second, dest


# --- systemd units -------------------------------------------------------------------------------------

def test_the_pedal_service_is_real_time_watched_and_restarts():
    unit = parse_unit(UNITS / "pedal.service")
    s = unit["Service"]
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "WatchdogSec") == "5"
    assert one(unit, "Service", "Restart") == "always"
    assert one(unit, "Service", "CPUSchedulingPolicy") == "fifo"
    assert one(unit, "Service", "CPUSchedulingPriority") == "70"
    assert int(one(unit, "Service", "LimitRTPRIO")) >= 70
    assert one(unit, "Service", "LimitMEMLOCK") == "infinity"
    assert int(one(unit, "Service", "Nice")) < 0
    assert one(unit, "Service", "User") == "pedal"
    assert set(one(unit, "Service", "SupplementaryGroups").split()) == {"audio", "gpio", "spi", "i2c"}
    assert one(unit, "Service", "ExecStart") == "/opt/pedal/venv/bin/python -m device run --config /etc/pedal/pedal.toml"
    assert one(unit, "Service", "WorkingDirectory") == "/opt/pedal"
    assert "LG_WD=/run/pedal" in s["Environment"] and one(unit, "Service", "RuntimeDirectory") == "pedal"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"  # never gives up restarting


def test_the_service_and_the_default_config_agree():
    unit = parse_unit(UNITS / "pedal.service")
    cfg = load_config(FIRMWARE / "pedal.toml")
    assert cfg.watchdog.enabled
    assert cfg.realtime.priority <= int(one(unit, "Service", "LimitRTPRIO"))
    assert cfg.status.socket is not None and cfg.status.socket.parent == Path("/run") / one(unit, "Service", "RuntimeDirectory")
    assert str(cfg.model.bundles_dir).startswith("/var/lib/" + one(unit, "Service", "StateDirectory"))


def test_the_selftest_service_is_a_oneshot_that_hands_the_card_back():
    unit = parse_unit(UNITS / "pedal-selftest.service")
    assert one(unit, "Service", "Type") == "oneshot"
    exec_start = one(unit, "Service", "ExecStart")
    assert exec_start.startswith("/opt/pedal/venv/bin/python -m device selftest --bundle ${PEDAL_BUNDLE}")
    assert "PEDAL_BUNDLE=/var/lib/pedal/bundles/comp4.pedal" in unit["Service"]["Environment"]
    assert one(unit, "Unit", "Conflicts") == "pedal.service"
    assert one(unit, "Unit", "OnSuccess") == one(unit, "Unit", "OnFailure") == "pedal.service"
    assert "Install" not in unit  # on demand only: enabled at boot it would fight pedal.service


def test_the_governor_unit_sets_performance_before_the_pedal_starts():
    unit = parse_unit(UNITS / "pedal-cpu-performance.service")
    assert one(unit, "Service", "Type") == "oneshot"
    assert "echo performance >" in one(unit, "Service", "ExecStart")
    assert "pedal.service" in one(unit, "Unit", "Before")
    assert "pedal-cpu-performance.service" in one(parse_unit(UNITS / "pedal.service"), "Unit", "Wants")


def _verify(units_dir: Path, tmp_path: Path) -> tuple[int, str]:
    """systemd-analyze verify on copies whose interpreter and folders exist on this machine."""
    work = tmp_path / "units"
    work.mkdir(exist_ok=True)
    for unit in units_dir.glob("*.service"):
        text = unit.read_text().replace("/opt/pedal/venv/bin/python", sys.executable)
        text = text.replace("WorkingDirectory=/opt/pedal", f"WorkingDirectory={tmp_path}")
        (work / unit.name).write_text(text)
    out = sh(["systemd-analyze", "verify", "--man=no", *sorted(p.name for p in work.iterdir())], cwd=work, check=False)
    ours = [line for line in (out.stdout + out.stderr).splitlines() if any(u.name in line for u in work.iterdir())]
    return out.returncode, "\n".join(ours)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    rc, complaints = _verify(UNITS, tmp_path)
    assert rc == 0 and complaints == "", complaints


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_would_catch_a_misspelt_key(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (UNITS / "pedal.service").read_text().replace("WatchdogSec=5", "WatchdogSecs=5")
    (broken / "pedal.service").write_text(text)
    rc, complaints = _verify(broken, tmp_path)
    assert "Unknown key 'WatchdogSecs'" in complaints


# --- the services' sandbox (docs/security.md) --------------------------------------------------------

SANDBOXED = ["pedal.service", "pedal-selftest.service"]
DEVICE_CLASSES = {"char-alsa", "char-spi", "char-i2c", "char-gpiochip"}  # ALSA, MCP3008, ADS1115, footswitch/LED


def exposure(unit: Path, tmp_path: Path) -> tuple[float, str]:
    """systemd-analyze security's overall exposure (0 = locked down, 10 = exposed) for a unit file."""
    work = tmp_path / f"sec-{unit.name}"
    work.mkdir()
    (work / unit.name).write_text(unit.read_text())
    out = sh(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit.name], cwd=work, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    return float(m[1]), out.stdout


def allowed_syscalls(unit: dict) -> set[str]:
    """The system calls a unit's SystemCallFilter= lines allow, groups expanded by systemd-analyze."""
    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        listing = sh(["systemd-analyze", "syscall-filter", "--no-pager", name]).stdout.splitlines()[1:]
        return set().union(*(expand(w.strip()) for w in listing if w.strip() and not w.strip().startswith("#")))
    allowed: set[str] = set()
    for line in unit["Service"]["SystemCallFilter"]:
        names = set().union(*(expand(w) for w in line.lstrip("~").split()))
        allowed = allowed - names if line.startswith("~") else allowed | names
    return allowed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("name", SANDBOXED)
def test_the_pedal_services_are_sandboxed_to_an_exposure_below_1(name, tmp_path):
    """8.2 ("EXPOSED") before the sandbox; what is left is what the pedal needs (docs/security.md)."""
    score, report = exposure(UNITS / name, tmp_path)
    print(f"{name}: exposure {score}")
    assert score <= 1.0, report


def test_the_sandbox_keeps_what_the_pedal_needs():
    unit = parse_unit(UNITS / "pedal.service")
    svc = unit["Service"]
    cfg = load_config(FIRMWARE / "pedal.toml")
    # its own user, and the groups that own its devices
    assert one(unit, "Service", "User") == "pedal" and one(unit, "Service", "Group") == "pedal"
    assert set(one(unit, "Service", "SupplementaryGroups").split()) == {"audio", "gpio", "spi", "i2c"}
    # exactly its devices
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert {v.split()[0] for v in svc["DeviceAllow"]} == DEVICE_CLASSES
    assert "PrivateDevices" not in svc  # would hide /dev/snd, /dev/spidev0.0, /dev/i2c-1, /dev/gpiochip0
    # real time and locked memory by limits, with no capability at all
    assert int(one(unit, "Service", "LimitRTPRIO")) >= cfg.realtime.priority
    assert one(unit, "Service", "LimitMEMLOCK") == "infinity"
    assert one(unit, "Service", "CapabilityBoundingSet") == "" and one(unit, "Service", "NoNewPrivileges") == "yes"
    assert svc.get("RestrictRealtime", ["no"]) == ["no"]  # "yes" would refuse the audio thread its priority
    assert one(unit, "Service", "CPUSchedulingPolicy") == "fifo"
    # the status socket and systemd's notify socket are AF_UNIX; nothing else, no network
    assert one(unit, "Service", "RestrictAddressFamilies") == "AF_UNIX"
    assert one(unit, "Service", "PrivateNetwork") == "yes"
    # writable: its runtime and state folders and a private /tmp, nothing else
    assert one(unit, "Service", "ProtectSystem") == "strict" and one(unit, "Service", "PrivateTmp") == "yes"
    assert one(unit, "Service", "RuntimeDirectory") == "pedal" and one(unit, "Service", "StateDirectory") == "pedal"
    assert str(cfg.status.socket).startswith("/run/pedal/")
    assert str(cfg.model.bundle).startswith("/var/lib/pedal/")
    # the device classes exist when systemd resolves DeviceAllow= at start
    assert "systemd-modules-load.service" in one(unit, "Unit", "After")
    modules = [w for w in (FIRMWARE / "modules-load.d/pedal.conf").read_text().splitlines()
               if w.strip() and not w.startswith("#")]
    assert {"i2c-dev", "spidev", "snd"} <= set(modules)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_the_system_call_filter_lets_the_daemon_set_its_priority_and_lock_its_memory():
    allowed = allowed_syscalls(parse_unit(UNITS / "pedal.service"))
    assert {"sched_setscheduler", "sched_setparam", "sched_setaffinity", "mlockall", "ioctl", "mmap", "poll",
            "socket", "sendto", "bind", "listen", "accept4", "mknodat", "clone3", "futex"} <= allowed
    assert not {"setuid", "mount", "reboot", "init_module", "ptrace", "setrlimit", "ioprio_set"} & allowed
    selftest = allowed_syscalls(parse_unit(UNITS / "pedal-selftest.service"))
    assert "sched_setscheduler" not in selftest and "ioctl" in selftest


@pytest.mark.skipif(shutil.which("strace") is None or shutil.which("systemd-analyze") is None,
                    reason="needs strace and systemd-analyze")
def test_every_system_call_the_daemon_makes_is_in_its_filter(tmp_path, bundle_path):
    """The daemon traced while it plays (file-backed PCMs), answers the status socket and
    hot-swaps a bundle: every call it makes is one its unit allows. (The Pi's own drivers, lgpio,
    spidev and the ADS1115's smbus2, speak through ioctl, which is allowed.)"""
    rc = tmp_path / "asoundrc"
    (tmp_path / "in.raw").write_bytes(np.zeros((4800, 2), np.float32).tobytes())
    rc.write_text(f'pcm.filecap {{ type file slave.pcm "null" file "/dev/null" infile "{tmp_path}/in.raw" format "raw" }}\n'
                  f'pcm.fileplay {{ type file slave.pcm "null" file "{tmp_path}/out.raw" format "raw" }}\n')
    sock = Path(f"/tmp/pd-{os.getpid()}-strace.sock")
    trace = tmp_path / "strace.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{rc}"}
    proc = subprocess.Popen(["strace", "-f", "-qq", "-c", "-o", str(trace), sys.executable, "-m", "device", "run",
                             "--bundle", str(bundle_path), "--capture", "filecap", "--playback", "fileplay",
                             "--period", "128", "--priority", "0", "--status-socket", str(sock)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        from device.daemon import query_status
        deadline = time.monotonic() + 60
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert query_status(sock)["effect"]
        assert query_status(sock, f"load {bundle_path}")["ok"]
        deadline = time.monotonic() + 60
        while query_status(sock)["swaps"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():  # the daemon, under strace
            os.kill(int(pid), signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    used = {line.split()[-1] for line in trace.read_text().splitlines()[2:]
            if line.strip() and not line.startswith("-") and line.split()[-1] != "total"}
    assert {"ioctl", "mlockall", "sched_setscheduler"} <= used  # it did play, lock and set priorities
    assert used - allowed_syscalls(parse_unit(UNITS / "pedal.service")) == set()


# --- ALSA --------------------------------------------------------------------------------------------

def _alsa_env(conf: Path) -> dict:
    return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}"}


@pytest.mark.skipif(shutil.which("aplay") is None or not Path("/usr/share/alsa/alsa.conf").exists(),
                    reason="alsa-utils not installed")
def test_alsa_lists_the_pedal_pcm_and_opens_it_up_to_the_missing_card():
    listing = sh(["aplay", "-L"], env=_alsa_env(FIRMWARE / "asound.conf"))
    assert "may be old or corrupted" not in listing.stderr, listing.stderr
    assert re.search(r"^pedal\n\s+SignalTrain-Pi pedal", listing.stdout, re.M), listing.stdout
    capture = sh(["arecord", "-L"], env=_alsa_env(FIRMWARE / "asound.conf"))
    assert re.search(r"^pedal$", capture.stdout, re.M)
    # Opening it gets as far as looking for the HAT, which this machine does not have.
    opened = sh(["aplay", "-D", "pedal", "-d", "1", "/dev/zero"], env=_alsa_env(FIRMWARE / "asound.conf"), check=False)
    assert opened.returncode != 0
    assert "Cannot get card index for sndrpihifiberry" in opened.stderr, opened.stderr
    assert "Invalid argument" not in opened.stderr and "Unknown field" not in opened.stderr


def _libasound():
    name = ctypes.util.find_library("asound")
    if not name:
        pytest.skip("no libasound here")
    lib = ctypes.CDLL(name)
    vp, pp, sp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_char_p)
    for fn, args, res in [("snd_config_top", [pp], ctypes.c_int),
                          ("snd_input_stdio_open", [pp, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
                          ("snd_config_load", [vp, vp], ctypes.c_int), ("snd_input_close", [vp], ctypes.c_int),
                          ("snd_config_delete", [vp], ctypes.c_int), ("snd_config_get_type", [vp], ctypes.c_int),
                          ("snd_config_iterator_first", [vp], vp), ("snd_config_iterator_next", [vp], vp),
                          ("snd_config_iterator_end", [vp], vp), ("snd_config_iterator_entry", [vp], vp),
                          ("snd_config_get_id", [vp, sp], ctypes.c_int), ("snd_config_get_ascii", [vp, sp], ctypes.c_int),
                          ("snd_strerror", [ctypes.c_int], ctypes.c_char_p)]:
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, res
    return lib


def alsa_config_tree(path: Path) -> dict:
    """The file as alsa-lib's own parser reads it, as nested dicts of strings."""
    lib = _libasound()
    top, inp = ctypes.c_void_p(), ctypes.c_void_p()
    assert lib.snd_config_top(ctypes.byref(top)) == 0
    assert lib.snd_input_stdio_open(ctypes.byref(inp), str(path).encode(), b"r") == 0
    err = lib.snd_config_load(top, inp)
    lib.snd_input_close(inp)
    if err < 0:
        lib.snd_config_delete(top)
        raise ValueError(f"{path}: alsa-lib refuses it: {lib.snd_strerror(err).decode()}")

    def walk(node):
        if lib.snd_config_get_type(node) == 1024:  # SND_CONFIG_TYPE_COMPOUND
            out, it, end = {}, lib.snd_config_iterator_first(node), lib.snd_config_iterator_end(node)
            while it != end:
                child, cid = lib.snd_config_iterator_entry(it), ctypes.c_char_p()
                lib.snd_config_get_id(child, ctypes.byref(cid))
                out[cid.value.decode()] = walk(child)
                it = lib.snd_config_iterator_next(it)
            return out
        text = ctypes.c_char_p()
        lib.snd_config_get_ascii(node, ctypes.byref(text))
        return text.value.decode()

    tree = walk(top)
    lib.snd_config_delete(top)
    return tree


def test_alsa_lib_parses_asound_conf_into_a_direct_hw_pcm():
    tree = alsa_config_tree(FIRMWARE / "asound.conf")
    pedal = tree["pcm"]["pedal"]
    hw_plugin_keys = {"comment", "type", "hint", "card", "device", "subdevice", "format", "channels", "rate",
                      "nonblock", "sync_ptr_ioctl", "chmap"}
    assert pedal["type"] == "hw"  # not plug, dmix, dsnoop or asym: nothing between daemon and codec
    assert set(pedal) <= hw_plugin_keys, set(pedal) - hw_plugin_keys
    assert pedal["format"] == "S32_LE" == load_config(FIRMWARE / "pedal.toml").audio.format
    assert int(pedal["channels"]) == load_config(FIRMWARE / "pedal.toml").audio.capture_channels
    assert tree["ctl"]["pedal"]["card"] == pedal["card"] == tree["defaults"]["pcm"]["card"]


def test_alsa_lib_check_would_catch_a_syntax_error(tmp_path):
    bad = tmp_path / "asound.conf"
    bad.write_text((FIRMWARE / "asound.conf").read_text().replace("ctl.pedal {", "ctl.pedal {{"))
    with pytest.raises(ValueError, match="alsa-lib refuses it"):
        alsa_config_tree(bad)


# --- boot config, limits, NetworkManager --------------------------------------------------------------

def boot_settings() -> list[tuple[str, str]]:
    lines = (FIRMWARE / "config.txt.append").read_text().splitlines()
    assert lines[0] == "# >>> SignalTrain-Pi pedal >>>" and lines[-1] == "# <<< SignalTrain-Pi pedal <<<"
    settings = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        if re.fullmatch(r"\[[a-z0-9]+\]", line):
            continue
        m = re.fullmatch(r"([a-z_]+[a-z0-9_]*)=(\S+)", line)
        assert m, f"config.txt line is not key=value: {line!r}"
        settings.append((m[1], m[2]))
    return settings


def test_boot_config_turns_on_the_hat_spi_and_i2c():
    settings = boot_settings()
    assert ("dtparam", "audio=off") in settings
    assert ("dtparam", "spi=on") in settings and ("dtparam", "i2c_arm=on") in settings
    assert ("gpu_mem", "16") in settings
    overlays = [v for k, v in settings if k == "dtoverlay" and v.split(",")[0] in HAT_CARD_IDS]
    assert len(overlays) == 1, f"exactly one audio HAT overlay must be active, got {overlays}"
    assert (FIRMWARE / "config.txt.append").read_text().splitlines()[4] == "[all]"  # out of any [cm4]/[pi5] filter


def test_the_hat_in_the_boot_config_is_the_card_asound_conf_opens():
    overlay = next(v for k, v in boot_settings() if k == "dtoverlay" and v in HAT_CARD_IDS)
    assert alsa_config_tree(FIRMWARE / "asound.conf")["pcm"]["pedal"]["card"] == HAT_CARD_IDS[overlay]


def test_the_default_config_keeps_its_pins_off_the_hat_and_the_adc():
    cfg = load_config(FIRMWARE / "pedal.toml")  # load_config already refuses SPI pins for the MCP3008
    assert cfg.footswitch.gpio not in I2S_GPIOS and cfg.led.gpio not in I2S_GPIOS
    check_knob_names(cfg, COMPRESSOR_KNOBS)


def test_limits_give_the_audio_group_realtime_and_memlock():
    rules = {}
    for line in (FIRMWARE / "99-pedal-realtime.conf").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        assert len(fields) == 4, f"limits.conf lines have 4 fields: {line!r}"
        domain, kind, item, value = fields
        assert kind in {"-", "soft", "hard"} and item in {"rtprio", "memlock", "nice"}
        assert value == "unlimited" or re.fullmatch(r"-?\d+", value)
        rules[(domain, item)] = value
    assert int(rules[("@audio", "rtprio")]) >= load_config(FIRMWARE / "pedal.toml").realtime.priority
    assert rules[("@audio", "memlock")] == "unlimited"


def test_network_manager_turns_wifi_power_saving_off():
    ini = configparser.ConfigParser()
    ini.read(FIRMWARE / "NetworkManager/99-pedal-wifi-powersave.conf")
    assert ini["connection"]["wifi.powersave"] == "2"


# --- the pi-gen image ------------------------------------------------------------------------------

def test_the_image_stage_is_laid_out_as_pi_gen_expects():
    assert (STAGE / "EXPORT_IMAGE").read_text().count('IMG_SUFFIX="-pedal"') == 1
    assert "copy_previous" in (STAGE / "prerun.sh").read_text()
    config = (IMAGE / "config.pedal").read_text()
    assert re.search(r'^STAGE_LIST="stage0 stage1 stage2 stage-pedal"$', config, re.M)
    assert re.search(r"^TARGET_HOSTNAME=pedal$", config, re.M) and re.search(r"^RELEASE=bookworm$", config, re.M)
    readme = (IMAGE / "README.md").read_text()
    assert "--branch arm64" in readme and "rpi-imager" in readme.lower().replace("raspberry pi imager", "rpi-imager")
    assert "dd of=" in readme


def test_prepare_fills_a_pi_gen_checkout(tmp_path):
    pigen = tmp_path / "pi-gen"
    (pigen / "stage2").mkdir(parents=True)
    (pigen / "config").write_text("IMG_NAME=mine\n")
    bundle = tmp_path / "comp4.pedal"
    bundle.write_bytes(b"bundle")
    sh([str(IMAGE / "prepare.sh"), str(pigen), str(bundle)])
    files = pigen / "stage-pedal/00-install/files/signaltrain-pi"
    assert (files / "device/config.py").read_bytes() == (REPO / "device/config.py").read_bytes()
    assert (files / "requirements/device.txt").is_file() and (files / "bundles/comp4.pedal").is_file()
    assert os.access(files / "firmware_cfg/provision.sh", os.X_OK)
    assert os.access(pigen / "stage-pedal/00-install/00-run.sh", os.X_OK)
    assert not (files / "firmware_cfg/image").exists()
    assert (pigen / "config").read_bytes() == (IMAGE / "config.pedal").read_bytes()
    assert (pigen / "config.before-pedal").read_text() == "IMG_NAME=mine\n"
    assert (pigen / "stage2/SKIP_IMAGES").exists()
    refused = sh([str(IMAGE / "prepare.sh"), str(tmp_path)], check=False)
    assert refused.returncode != 0 and "does not look like pi-gen" in refused.stderr


def test_the_stage_runs_provision_inside_the_image(tmp_path):
    """00-run.sh as pi-gen runs it, with on_chroot standing in for the arm64 chroot: the same
    commands, run by provision.sh against the image's root folder (DESTDIR)."""
    pigen = tmp_path / "pi-gen"
    (pigen / "stage2").mkdir(parents=True)
    bundle = tmp_path / "comp4.pedal"
    bundle.write_bytes(b"bundle")
    sh([str(IMAGE / "prepare.sh"), str(pigen), str(bundle)])
    rootfs = tmp_path / "rootfs"
    (rootfs / "tmp").mkdir(parents=True)
    (rootfs / "boot/firmware").mkdir(parents=True)
    (rootfs / "boot/firmware/config.txt").write_text("dtparam=audio=on\n")
    fake_chroot = ('on_chroot() { sed "s#/tmp/signaltrain-pi#${ROOTFS_DIR}/tmp/signaltrain-pi#g" '
                   '| DESTDIR="${ROOTFS_DIR}" bash -s; }; export -f on_chroot; exec ./00-run.sh')
    env = {"ROOTFS_DIR": str(rootfs), "FIRST_USER_NAME": "pi", "IMG_NAME": "signaltrain-pi",
           "IMG_DATE": "2025-01-01", "RELEASE": "bookworm"}
    out = sh(["bash", "-c", fake_chroot], env=env, cwd=pigen / "stage-pedal/00-install")
    assert "==> done" in out.stdout
    assert (rootfs / "opt/pedal/device/config.py").is_file()
    assert (rootfs / "var/lib/pedal/bundles/comp4.pedal").read_bytes() == b"bundle"
    assert "hifiberry-dacplusadc" in (rootfs / "boot/firmware/config.txt").read_text()
    assert not (rootfs / "tmp/signaltrain-pi").exists()  # the copy is cleaned out of the image
    info = (rootfs / "etc/pedal/image-info").read_text()
    assert "image=signaltrain-pi 2025-01-01" in info and "source=" in info
    load_config(rootfs / "etc/pedal/pedal.toml")


# --- the README ---------------------------------------------------------------------------------------

def test_the_readme_tells_a_user_how_to_flash_copy_a_bundle_and_self_test():
    readme = (FIRMWARE / "README.md").read_text()
    assert "scp comp4.pedal pi@pedal.local:/var/lib/pedal/bundles/" in readme
    assert "sudo systemctl start pedal-selftest" in readme
    assert "docs/hardware.md" in readme and "Raspberry Pi Imager" in readme
    assert "provision.sh" in readme and "image/README.md" in readme
    for precision in PRECISIONS:  # what model.precision accepts is what the comment in pedal.toml lists
        assert precision in (FIRMWARE / "pedal.toml").read_text()
