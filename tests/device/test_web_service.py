"""pedal-web.service: the web page as its own unprivileged user, never real time, sandboxed at
least as tightly as the daemon's own unit; installed and enabled by provision.sh, with the
password asked for there and stored only as a hash."""
import subprocess
import sys

from .conftest import REPO
from .test_firmware_cfg import PROVISION, UNITS, one, parse_unit

# Sandboxing keys: whatever pedal.service sets, the web page's unit sets the same way (or stricter:
# the web page needs the network, no devices, no real time, and writes only the bundles folder).
SANDBOX_PREFIXES = ("Protect", "Private", "Restrict", "NoNewPrivileges", "LockPersonality", "MemoryDeny",
                    "SystemCall", "Capability", "AmbientCapabilities", "UMask", "ReadOnlyPaths", "InaccessiblePaths",
                    "Device", "IPAddress", "RemoveIPC", "KeyringMode")
# Where the two differ on purpose: the page serves the LAN (network, no IP filter by default), has
# the sound card alone of the daemon's devices (a capture), no real time, writes only the bundles
# folder and its own state folder, makes files group pedal can read, and needs none of the
# daemon's scheduling calls.
STRICTER_HERE = {"PrivateDevices", "DeviceAllow", "PrivateNetwork", "IPAddressDeny", "IPAddressAllow",
                 "RestrictAddressFamilies", "ReadWritePaths", "RestrictRealtime", "UMask", "SystemCallFilter"}


def test_the_web_unit_runs_unprivileged_below_the_pedal_and_sandboxed_like_the_daemon():
    web, daemon = parse_unit(UNITS / "pedal-web.service"), parse_unit(UNITS / "pedal.service")
    s = web["Service"]
    assert one(web, "Service", "User") == "pedal-web" and one(web, "Service", "Group") == "pedal-web"
    # the status socket and the bundles folder; the sound card for a capture started from the page
    assert one(web, "Service", "SupplementaryGroups") == "pedal audio"
    assert s["DeviceAllow"] == ["char-alsa rw"] and one(web, "Service", "DevicePolicy") == "closed"
    # the chosen bundle and the captures: its own folder on the daemon's data folder (the data
    # partition with a read-only root), written by it alone
    assert one(web, "Service", "StateDirectory") == "pedal/web" and one(web, "Service", "StateDirectoryMode") == "0750"
    assert "CPUSchedulingPolicy" not in s and "LimitRTPRIO" not in s and one(web, "Service", "RestrictRealtime") == "yes"
    assert int(one(web, "Service", "Nice")) > 0
    assert one(web, "Service", "CapabilityBoundingSet") == "" and one(web, "Service", "NoNewPrivileges") == "yes"
    assert one(web, "Service", "ProtectSystem") == "strict"
    assert one(web, "Service", "ReadWritePaths") == "-/var/lib/pedal/bundles"
    for key, values in daemon["Service"].items():
        if key.startswith(SANDBOX_PREFIXES) and key not in STRICTER_HERE:
            assert s.get(key) == values, f"pedal.service sets {key}={values}; pedal-web.service has {s.get(key)}"
    assert s["SystemCallFilter"][:2] == ["@system-service", "~@privileged @resources"]
    assert one(web, "Service", "UMask") == "0027"  # uploads group-readable: the daemon (group pedal) loads them
    assert one(web, "Install", "WantedBy") == "multi-user.target"


def test_the_web_units_command_line_is_one_the_program_takes():
    exec_start = one(parse_unit(UNITS / "pedal-web.service"), "Service", "ExecStart").split()
    assert exec_start[:4] == ["/opt/pedal/venv/bin/python", "-m", "device.web", "serve"]
    out = subprocess.run([sys.executable, "-m", "device.web", "serve", "--help"], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    for flag in (w for w in exec_start if w.startswith("--")):
        assert flag in out.stdout, flag
    # a capture from the page stops the daemon and starts it again through systemd (polkit: docs/web.md)
    line = one(parse_unit(UNITS / "pedal-web.service"), "Service", "ExecStart")
    assert '--daemon-stop "systemctl stop pedal.service"' in line
    assert '--daemon-start "systemctl start pedal.service"' in line


def test_provision_makes_the_web_user_installs_the_unit_and_asks_for_the_password(tmp_path):
    text = PROVISION.read_text()
    assert "pedal-web.service" in text and 'WEB_USER=pedal-web' in text
    out = subprocess.run(["bash", str(PROVISION), "--dry-run", "--no-apt", "--no-boot-config"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PEDAL_WEB_PASSWORD": "s3cret-pass"})
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "pedal-web" in log and "/etc/systemd/system/pedal-web.service" in log
    assert "device.web passwd --stdin --file /etc/pedal/web-password" in log
    assert "s3cret-pass" not in log  # the password itself is never printed
    assert "systemctl enable pedal-cpu-performance.service pedal.service pedal-web.service" in log
