"""The web page's locks: nothing without a session, no change without the CSRF token, no file
name trusted, no upload over the limit, wrong passwords slowed down; and uploads verified before
they are kept. Plain HTTP through Starlette's TestClient against a stand-in daemon socket (the
real daemon behind a real browser: test_web_browser.py)."""
import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web page needs starlette (requirements/device.txt)")
pytest.importorskip("starlette.testclient", reason="the TestClient needs httpx2 (requirements/device-test.txt)")
from starlette.testclient import TestClient  # noqa: E402

from device.web.app import PUBLIC_ROUTES, Settings, make_app  # noqa: E402
from device.web.auth import LoginLimiter, check_password, read_password_file, write_password_file  # noqa: E402

from .jackkit import short_socket_path  # noqa: E402

PASSWORD = "correct horse battery"


class FakeDaemon:
    """A status socket that answers like the daemon and remembers every command line it got."""

    def __init__(self, path: Path):
        self.path, self.commands = path, []
        self.panel = {"ok": True, "effect": "comp4", "knobs": {"threshold_db": -20.0}}
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                line = data.decode().strip()
                self.commands.append(line)
                cmd = line.split()[0] if line else "status"
                reply = {"status": {"rate": 48000, "period": 128}, "panel": self.panel}.get(cmd, {"ok": True})
                if cmd == "load" and "refused" in line:
                    reply = {"ok": False, "error": "bundle refused: checksum mismatch"}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self):
        self.server.close()


@pytest.fixture
def box(tmp_path):
    sock = short_socket_path()
    daemon = FakeDaemon(sock)
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    write_password_file(tmp_path / "web-password", PASSWORD)
    settings = Settings(socket=sock, bundles_dir=bundles, password_file=tmp_path / "web-password",
                        precision="float32", max_upload_bytes=4 << 20, state_dir=tmp_path / "web")
    with TestClient(make_app(settings), base_url="http://pedal.local") as client:
        client.daemon, client.bundles, client.settings = daemon, bundles, settings
        yield client
    daemon.close()


def login(client, password=PASSWORD):
    page = client.get("/login")
    token = page.text.split('name="token" value="')[1].split('"')[0]
    return client.post("/login", data={"token": token, "password": password}, follow_redirects=False)


def logged_in(client) -> str:
    """Log in; -> the session's CSRF token (from the page)."""
    r = login(client)
    assert r.status_code == 303, r.text
    page = client.get("/")
    return page.text.split('name="csrf-token" content="')[1].split('"')[0]


def routes(app):
    return [(r.path, m) for r in app.routes for m in sorted(r.methods - {"HEAD"})]


def test_every_route_refuses_without_a_session(box):
    guarded = [(p, m) for p, m in routes(box.app) if (p, m) not in PUBLIC_ROUTES]
    assert len(guarded) >= 14
    capture_routes = {("/api/captures", "GET"), ("/api/capture/plan", "POST"), ("/api/capture/start", "POST"),
                      ("/api/capture/go", "POST"), ("/api/capture/stop", "POST"), ("/api/capture/download", "GET")}
    assert capture_routes <= set(guarded)
    for path, method in guarded:
        r = box.request(method, path, follow_redirects=False)
        if path == "/":
            assert r.status_code == 303 and r.headers["location"] == "/login", (path, r.status_code)
        else:
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.json() == {"ok": False, "error": "not logged in"}
    # a made-up session cookie is no session either
    box.cookies.set("pedal_session", "forged")
    assert box.get("/api/panel").status_code == 401
    assert box.daemon.commands == []  # nothing reached the daemon


def test_a_change_without_the_csrf_token_is_refused(box):
    csrf = logged_in(box)
    assert box.get("/api/panel").status_code == 200  # reading needs the session only
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
                    {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}):
        for path, body in (("/api/bypass", {"on": True}), ("/api/knob", {"name": "threshold_db", "value": -30}),
                           ("/api/bundle", {"name": "x.pedal"}), ("/logout", {})):
            r = box.post(path, json=body, headers=headers)
            assert r.status_code == 403, (path, headers, r.status_code)
        r = box.post("/api/upload?name=x.pedal", content=b"x", headers=headers)
        assert r.status_code == 403
        for path, body in (("/api/capture/plan", {"knobs": ["drive=0..10"]}),
                           ("/api/capture/start", {"name": "my_drive", "knobs": ["drive=0..10"]}),
                           ("/api/capture/go", {}), ("/api/capture/stop", {})):
            r = box.post(path, json=body, headers=headers)
            assert r.status_code == 403, (path, headers, r.status_code)
    assert box.app.state.capture.task is None  # no capture was started
    assert not (box.settings.state_dir / "captures").exists()
    assert [c for c in box.daemon.commands if not c.startswith("panel")] == []
    # the same requests with the token go through
    assert box.post("/api/bypass", json={"on": True}, headers={"X-CSRF-Token": csrf}).json() == {"ok": True}
    assert box.post("/api/knob", json={"name": "threshold_db", "value": -30},
                    headers={"X-CSRF-Token": csrf}).status_code == 200
    assert box.daemon.commands[-2:] == ["bypass on", "knob threshold_db -30.0"]


def test_session_cookie_is_httponly_and_samesite_strict_and_the_hash_is_all_that_is_stored(box, tmp_path):
    r = login(box)
    cookie = r.headers["set-cookie"]
    assert "pedal_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    stored = (tmp_path / "web-password").read_text()
    assert PASSWORD not in stored and stored.startswith("scrypt$")
    assert check_password(PASSWORD, stored) and not check_password(PASSWORD + "x", stored)
    assert stat.S_IMODE(os.stat(tmp_path / "web-password").st_mode) == 0o640
    r = box.get("/")
    assert r.headers["x-frame-options"] == "DENY" and "default-src 'self'" in r.headers["content-security-policy"]


def test_login_needs_its_form_token(box):
    box.get("/login")
    r = box.post("/login", data={"token": "not-the-cookie", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 403 and "pedal_session" not in r.headers.get("set-cookie", "")


def test_repeated_wrong_passwords_are_slowed_down(box):
    limiter = box.app.state.limiter
    now = [1000.0]
    limiter.clock = lambda: now[0]
    for _ in range(3):  # the first tries are free
        assert login(box, "wrong password").status_code == 401
    r = login(box)  # even the right password must wait now
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 1 and "wait 1 s" in r.text
    now[0] += 1.01
    assert login(box, "wrong again").status_code == 401
    r = login(box)
    assert r.status_code == 429 and int(r.headers["retry-after"]) == 2  # each failure doubles the wait
    now[0] += 2.01
    assert login(box).status_code == 303  # the right password after the wait: in, and the count is cleared
    assert login(box, "wrong").status_code == 401 and login(box, "wrong").status_code == 401


def test_the_limit_grows_to_its_cap_and_counts_every_client_together():
    now = [0.0]
    lim = LoginLimiter(free=3, base_s=1.0, max_wait_s=300.0, free_all=5, clock=lambda: now[0])
    waits = []
    for _ in range(14):
        lim.failed("10.0.0.2")
        waits.append(lim.wait_s("10.0.0.2"))
    assert waits[:3] == [0.0, 0.0, 1.0] and waits[3:6] == [2.0, 4.0, 8.0] and waits[-1] == 300.0
    assert lim.wait_s("10.0.0.3") == 300.0  # a guesser on many addresses is slowed as one
    lim.succeeded("10.0.0.3")
    assert lim.wait_s("10.0.0.3") == 0.0


@pytest.mark.parametrize("name", ["../evil.pedal", "..%2Fevil.pedal", "%2Fetc%2Fevil.pedal", "sub/evil.pedal",
                                  "..\\evil.pedal", ".hidden.pedal", "evil.pedal%00.txt", "evil.txt", ""])
def test_path_traversal_in_an_upload_name_is_refused(box, name, bundle_path):
    csrf = logged_in(box)
    before = sorted(p.name for p in box.bundles.parent.rglob("*"))
    r = box.post(f"/api/upload?name={name}", content=bundle_path.read_bytes(), headers={"X-CSRF-Token": csrf})
    assert r.status_code == 400 and r.json()["ok"] is False, r.text
    assert sorted(p.name for p in box.bundles.parent.rglob("*")) == before  # nothing written anywhere
    r = box.post("/api/bundle", json={"name": name.replace("%2F", "/")}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 400
    assert not any(c.startswith("load") for c in box.daemon.commands)


def test_an_oversize_upload_is_refused_and_leaves_nothing(box):
    csrf = logged_in(box)
    big = b"\0" * (box.settings.max_upload_bytes + 1)
    r = box.post("/api/upload?name=big.pedal", content=big, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 413 and "at most 4 MiB" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(5):
            yield b"\0" * (1 << 20)
    r = box.post("/api/upload?name=big.pedal", content=chunks(), headers={"X-CSRF-Token": csrf})
    assert r.status_code == 413 and "over the 4 MiB limit" in r.json()["error"]
    assert list(box.bundles.iterdir()) == []


def test_knob_and_bundle_requests_cannot_smuggle_a_second_socket_command(box):
    csrf = logged_in(box)
    h = {"X-CSRF-Token": csrf}
    assert box.post("/api/knob", json={"name": "threshold_db\nbypass on", "value": 1}, headers=h).status_code == 400
    assert box.post("/api/knob", json={"name": "threshold_db", "value": "1\nnext"}, headers=h).status_code == 400
    assert box.post("/api/knob", content=b'{"name": "threshold_db", "value": NaN}',
                    headers={**h, "Content-Type": "application/json"}).status_code == 400
    assert box.post("/api/bypass", content=b"x" * 10000, headers=h).status_code == 400  # over the JSON limit
    assert box.post("/api/bundle", json={"name": "missing.pedal"}, headers=h).status_code == 404
    assert [c for c in box.daemon.commands if not c.startswith(("panel", "status"))] == []


def test_a_corrupted_upload_is_refused_with_the_reason_and_a_good_one_is_kept_and_played(box, bundle_path):
    csrf = logged_in(box)
    h = {"X-CSRF-Token": csrf}
    good = bundle_path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # one flipped byte inside a member: its checksum no longer matches
    r = box.post("/api/upload?name=broken.pedal", content=bytes(bad), headers=h)
    assert r.status_code == 422, r.text
    assert "broken.pedal refused" in r.json()["error"] and "checksum mismatch" in r.json()["error"]
    r = box.post("/api/upload?name=truncated.pedal", content=good[:5000], headers=h)
    assert r.status_code == 422 and "refused" in r.json()["error"]
    assert list(box.bundles.iterdir()) == []  # refused uploads leave nothing, not even a temp file
    assert not any(c.startswith("load") for c in box.daemon.commands)

    r = box.post("/api/upload?name=comp4-new.pedal", content=good, headers=h)
    assert r.status_code == 200 and r.json()["verified"] is True, r.text
    assert (box.bundles / "comp4-new.pedal").read_bytes() == good
    assert [p.name for p in box.bundles.iterdir()] == ["comp4-new.pedal"]
    assert box.daemon.commands[-1] == f"load {box.bundles / 'comp4-new.pedal'}"
    listed = box.get("/api/panel").json()["bundles"]
    assert [(b["name"], b["effect"]) for b in listed] == [("comp4-new.pedal", "comp4")]


def test_the_passwd_command_stores_only_a_hash(tmp_path):
    import subprocess
    import sys
    from .conftest import REPO
    f = tmp_path / "pw"
    r = subprocess.run([sys.executable, "-m", "device.web", "passwd", "--file", str(f), "--stdin"],
                       input="short\n", text=True, capture_output=True, cwd=REPO)
    assert r.returncode == 1 and "at least 8" in r.stderr and not f.exists()
    r = subprocess.run([sys.executable, "-m", "device.web", "passwd", "--file", str(f), "--stdin"],
                       input=PASSWORD + "\n", text=True, capture_output=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert check_password(PASSWORD, read_password_file(f)) and PASSWORD not in f.read_text()


def test_pages_polling_fast_ask_the_daemon_at_most_five_times_a_second(box):
    """However many pages poll however fast, the daemon's monitor thread answers a panel at most
    every 0.2 s (app.PANEL_MIN_INTERVAL_S); the pages share the answer."""
    import time
    logged_in(box)
    t0 = time.monotonic()
    for _ in range(40):
        assert box.get("/api/panel").json()["daemon"]["effect"] == "comp4"
    elapsed = time.monotonic() - t0
    asked = box.daemon.commands.count("panel")
    assert 1 <= asked <= elapsed / 0.2 + 1, (asked, elapsed)


@pytest.mark.parametrize("name", ["../evil", "a/b", "-rf", "--out=/etc", ".hidden", "x" * 41, "", "my drive", "my_drive\n"])
def test_a_capture_name_with_a_path_or_an_option_in_it_is_refused(box, name):
    csrf = logged_in(box)
    h = {"X-CSRF-Token": csrf}
    r = box.post("/api/capture/start", json={"name": name, "knobs": ["drive=0..10"]}, headers=h)
    assert r.status_code == 400 and "a capture's name" in r.json()["error"], r.text
    r = box.get("/api/capture/download", params={"name": name})
    assert r.status_code == 400
    assert box.app.state.capture.task is None and not (box.settings.state_dir / "captures").exists()


@pytest.mark.parametrize("knob", ["drive=0..10 --out=/etc", "drive=0..10\n--yes", "--out=/tmp/x", "drive=0..10;rm",
                                  "drive=\"0..10\"", "drive=ten..eleven", "=0..10", "drive=0..10,ms,log,extra,x"])
def test_a_capture_knob_that_is_not_a_knob_is_refused_before_anything_runs(box, knob):
    csrf = logged_in(box)
    h = {"X-CSRF-Token": csrf}
    for path in ("/api/capture/plan", "/api/capture/start"):
        r = box.post(path, json={"name": "my_drive", "knobs": [knob]}, headers=h)
        assert r.status_code == 400, (path, knob, r.text)
    assert box.app.state.capture.task is None


def test_the_capture_plan_is_the_commands_own_and_a_capture_needs_the_daemons_config(box):
    from device.capture.plan import format_value, make_plan, parse_knob
    csrf = logged_in(box)
    h = {"X-CSRF-Token": csrf}
    knobs = ["drive=0..10", "tone=clock", "time_ms=40..800,ms,log"]
    r = box.post("/api/capture/plan", json={"knobs": knobs, "settings": 12, "seconds": 30}, headers=h)
    assert r.status_code == 200, r.text
    plan = r.json()
    specs = [parse_knob(k) for k in knobs]
    assert plan["settings"] == 12 and len(plan["plan"]) == 12 and plan["playing_s"] == round(12 * 30 + 2.5)
    # inputs and targets per setting, float32: the Train, Val and Test parts of a 30 s signal (22 s)
    assert plan["disk_bytes"] == int(4 * 48000 * 22.0 * 2 * 12)
    assert plan["plan"] == [[format_value(k, v) for k, v in zip(specs, s)] for s in make_plan(specs, 12)]
    assert [k["label"] for k in plan["knobs"]] == ["drive", "tone [o'clock]", "time_ms [ms]"]
    r = box.post("/api/capture/plan", json={"knobs": ["drive=0..10"]}, headers=h)  # default: 5 per knob, at least 10
    assert r.json()["settings"] == 10
    # this server was started without the daemon's config: it cannot open the audio interface
    r = box.post("/api/capture/start", json={"name": "my_drive", "knobs": knobs}, headers=h)
    assert r.status_code == 409 and "--config" in r.json()["error"]
    assert box.get("/api/captures").json()["available"] is False


