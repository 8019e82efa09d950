"""The web page's server: a Starlette app that talks to the daemon through its status socket only.

    GET  /login, POST /login      the only routes open without a session (and /style.css)
    GET  /                        the page (status, meters, knobs, bypass, bundles, upload)
    GET  /app.js                  its script (plain JavaScript, no build step)
    GET  /api/panel               everything the page shows, polled a few times a second
    POST /api/bypass              {"on": true|false} or {"toggle": true}
    POST /api/knob                {"name": N, "value": V} (physical units) or {"name": N, "pot": true}
    POST /api/bundle              {"name": "x.pedal"}: play a bundle of the bundles folder
    POST /api/upload?name=x.pedal the bundle file as the request body: verified, stored, played
    GET  /api/captures            the capture folders, and whether captures can be made here
    POST /api/capture/plan        {"knobs": ["drive=0..10", ...], "settings": N, "seconds": S}: the plan
    POST /api/capture/start       {"name": N, "knobs": [...], "settings", "seconds", "level_db"}; a name
                                  alone carries an existing capture on
    POST /api/capture/go          the knobs are set (the answer to the capture's prompt)
    POST /api/capture/stop        stop it (at a prompt, or mid-pass: that pass is played again)
    GET  /api/capture/download?name=N   the capture folder as one tar
    POST /logout

Every POST needs the session's CSRF token in ``X-CSRF-Token`` (auth.py). The daemon's socket
speaks one line per command, so nothing a client sends reaches it unchecked: knob names must be
knob names, values numbers, bundle names plain names of files that exist in the bundles folder.
A capture runs as its own process (capture.py). A bundle played from here is the daemon's choice
like any other switch: the daemon records it (model.choice) and starts with it after a restart.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response,
                                 StreamingResponse)
from starlette.routing import Route

from . import capture as cap
from . import store
from .auth import LoginLimiter, Sessions, check_password, read_password_file

STATIC = Path(__file__).parent / "static"
COOKIE, LOGIN_COOKIE = "pedal_session", "pedal_login"
KNOB_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
JSON_LIMIT = 4096  # bytes of a JSON or login request body
# The daemon is asked for its panel at most this often, however many pages poll however fast: its
# answer takes the monitor thread, and Python's lock, a fraction of a millisecond each time.
PANEL_MIN_INTERVAL_S = 0.2
log = logging.getLogger("pedal.web")


@dataclass
class Settings:
    socket: Path = Path("/run/pedal/status.sock")
    bundles_dir: Path = Path("/var/lib/pedal/bundles")
    password_file: Path = Path("/etc/pedal/web-password")
    precision: str = ""  # the daemon's model.precision: uploads are verified in it
    max_upload_bytes: int = 32 << 20
    session_idle_s: float = 12 * 3600
    poll_ms: int = 250  # how often the page asks for the panel
    secure_cookies: bool = False  # True behind HTTPS
    login_free_failures: int = 3
    login_max_wait_s: float = 300.0
    verify_timeout_s: float = 120.0
    config: Path | None = None  # the daemon's pedal.toml: a capture opens the audio interface it names
    state_dir: Path = Path("/var/lib/pedal/web")  # captures/ (and what the capture runner keeps)
    captures_dir: Path | None = None  # default: state_dir / "captures"
    daemon_stop: str = ""  # a command that stops the daemon for a capture ("systemctl stop pedal.service")
    daemon_start: str = ""  # ... and starts it again afterwards


class DaemonDown(Exception):
    pass


async def ask(socket_path: Path, command: str, timeout_s: float = 3.0) -> dict:
    """One command line to the daemon's status socket -> its JSON reply."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path), limit=1 << 20),
                                                timeout_s)
    except (OSError, asyncio.TimeoutError) as e:
        raise DaemonDown(f"the pedal daemon does not answer at {socket_path} "
                         f"({getattr(e, 'strerror', None) or type(e).__name__}): is it running?") from None
    try:
        writer.write(command.encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        return json.loads(line)
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        raise DaemonDown(f"the pedal daemon did not reply to {command.split()[0]!r} ({type(e).__name__})") from None
    finally:
        writer.close()


class BoxCPU:
    """The whole box's CPU use since the last call, from /proc/stat (all cores; 1.0 = all busy)."""

    def __init__(self):
        self.last = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait
        except (OSError, ValueError, IndexError):
            return None

    def use(self) -> float | None:
        now = self._read()
        last, self.last = self.last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return round(1.0 - (now[1] - last[1]) / (now[0] - last[0]), 3)


def temperature_c() -> float | None:
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None


class SecurityHeaders:
    """Plain ASGI middleware: every response says no framing, no sniffing, no caching, own origin only."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                            b"form-action 'self'; base-uri 'none'"),
               (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + self.HEADERS
            await send(message)
        await self.app(scope, receive, send_with_headers)


def make_app(settings: Settings) -> Starlette:
    if settings.captures_dir is None:
        settings.captures_dir = Path(settings.state_dir) / "captures"
    sessions = Sessions(idle_s=settings.session_idle_s)
    limiter = LoginLimiter(free=settings.login_free_failures, max_wait_s=settings.login_max_wait_s)
    box_cpu = BoxCPU()
    upload_lock = asyncio.Lock()
    panel_lock = asyncio.Lock()
    panel_cache = {"at": -1e9, "reply": None, "error": None}
    pages = {name: (STATIC / name).read_text() for name in ("index.html", "login.html")}

    async def daemon_alive() -> bool:
        try:
            await ask(settings.socket, "knobs", timeout_s=1.0)
            return True
        except DaemonDown:
            return False
    capture = cap.CaptureRunner(settings, daemon_alive)

    def refuse(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"ok": False, "error": message, **extra}, status_code=status)

    def guarded(change: bool, page: bool = False):
        """A route that needs a session; ``change``: and the session's CSRF token, from this origin."""
        def wrap(fn):
            async def endpoint(request: Request):
                session = sessions.get(request.cookies.get(COOKIE))
                if session is None:
                    if page:
                        return RedirectResponse("/login", status_code=303)
                    return refuse(401, "not logged in")
                if change:
                    origin = request.headers.get("origin")
                    if origin and urlsplit(origin).netloc != request.headers.get("host"):
                        return refuse(403, "a request from another site")
                    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                        return refuse(403, "a request from another site")
                    token = request.headers.get("x-csrf-token", "")
                    if not token or not _same(token, session.csrf):
                        return refuse(403, "missing or wrong CSRF token: reload the page")
                request.state.session = session
                return await fn(request)
            endpoint.__name__ = fn.__name__
            return endpoint
        return wrap

    async def read_limited(request: Request, limit: int) -> bytes | None:
        """The request body, or None when it is over ``limit`` bytes (or says nonsense about its length)."""
        try:
            if int(request.headers.get("content-length") or 0) > limit:
                return None
        except ValueError:
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return None
        return body

    async def read_json(request: Request) -> dict | None:
        body = await read_limited(request, JSON_LIMIT)
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def daemon(command: str) -> JSONResponse:
        try:
            reply = await ask(settings.socket, command)
        except DaemonDown as e:
            return refuse(503, str(e))
        return JSONResponse(reply, status_code=200 if reply.get("ok", True) else 400)

    # --- login ---------------------------------------------------------------------------------
    def login_page(message: str = "", status: int = 200, headers: dict | None = None) -> HTMLResponse:
        token = os.urandom(24).hex()
        body = (pages["login.html"].replace("{{token}}", token)
                .replace("{{message}}", html.escape(message)))
        r = HTMLResponse(body, status_code=status, headers=headers)
        r.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=settings.secure_cookies, path="/login")
        return r

    async def login_get(request: Request):
        if read_password_file(settings.password_file) is None:
            return login_page("No password is set on this box yet: on the box, run "
                              "sudo /opt/pedal/venv/bin/python -m device.web passwd")
        return login_page()

    async def login_post(request: Request):
        client = request.client.host if request.client else "?"
        body = await read_limited(request, JSON_LIMIT)
        form = {k: v[0] for k, v in parse_qs((body or b"").decode(errors="replace")).items()}
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie or not _same(form.get("token", ""), cookie):
            return login_page("The login form expired: try again.", 403)
        wait = limiter.wait_s(client)
        if wait > 0:
            return login_page(f"Too many wrong passwords: wait {wait:.0f} s before the next try.", 429,
                              {"Retry-After": str(int(wait + 0.999))})
        stored = read_password_file(settings.password_file)
        if stored is None:
            return login_page("No password is set on this box yet: on the box, run "
                              "sudo /opt/pedal/venv/bin/python -m device.web passwd", 403)
        if not await anyio.to_thread.run_sync(check_password, form.get("password", ""), stored):
            limiter.failed(client)
            return login_page("Wrong password.", 401)
        limiter.succeeded(client)
        session = sessions.new()
        r = RedirectResponse("/", status_code=303)
        r.set_cookie(COOKIE, session.token, httponly=True, samesite="strict", secure=settings.secure_cookies, path="/")
        r.delete_cookie(LOGIN_COOKIE, path="/login")
        return r

    @guarded(change=True)
    async def logout(request: Request):
        sessions.end(request.state.session.token)
        r = JSONResponse({"ok": True})
        r.delete_cookie(COOKIE, path="/")
        return r

    # --- the page ------------------------------------------------------------------------------
    @guarded(change=False, page=True)
    async def index(request: Request):
        body = (pages["index.html"].replace("{{csrf}}", html.escape(request.state.session.csrf))
                .replace("{{poll_ms}}", str(int(settings.poll_ms))))
        return HTMLResponse(body)

    @guarded(change=False)
    async def app_js(request: Request):
        return FileResponse(STATIC / "app.js", media_type="text/javascript")

    async def style_css(request: Request):
        return FileResponse(STATIC / "style.css", media_type="text/css")

    async def fetch_panel() -> dict | None:
        """The daemon's ``panel``, asked at most every PANEL_MIN_INTERVAL_S whoever asks."""
        async with panel_lock:  # one question in flight; pages polling together share its answer
            if time.monotonic() - panel_cache["at"] >= PANEL_MIN_INTERVAL_S:
                try:
                    panel_cache.update(reply=await ask(settings.socket, "panel"), error=None)
                except DaemonDown as e:
                    panel_cache.update(reply=None, error=str(e))
                panel_cache["at"] = time.monotonic()
        return panel_cache["reply"]

    @guarded(change=False)
    async def api_panel(request: Request):
        out = {"ok": True, "bundles": store.list_bundles(settings.bundles_dir),
               "box": {"cpu": box_cpu.use(), "temp_c": temperature_c()},
               "upload_max_bytes": settings.max_upload_bytes, "capture": capture.status()}
        out["daemon"] = await fetch_panel()
        if panel_cache["error"]:
            out["daemon_error"] = panel_cache["error"]
        return JSONResponse(out)

    # --- changes -------------------------------------------------------------------------------
    @guarded(change=True)
    async def api_bypass(request: Request):
        data = await read_json(request)
        if data is None:
            return refuse(400, "send JSON: {\"on\": true|false} or {\"toggle\": true}")
        if data.get("toggle") is True:
            return await daemon("bypass toggle")
        if not isinstance(data.get("on"), bool):
            return refuse(400, "bypass: \"on\" must be true or false")
        return await daemon("bypass " + ("on" if data["on"] else "off"))

    @guarded(change=True)
    async def api_knob(request: Request):
        data = await read_json(request)
        name = data.get("name") if data else None
        if not isinstance(name, str) or not KNOB_NAME.fullmatch(name):
            return refuse(400, "knob: a knob name (letters, digits, '_') is needed")
        if data.get("pot") is True:
            return await daemon(f"knob {name} pot")
        value = data.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e9:
            return refuse(400, f"knob {name}: the value must be a number")
        return await daemon(f"knob {name} {float(value)!r}")

    @guarded(change=True)
    async def api_bundle(request: Request):
        data = await read_json(request)
        name = data.get("name") if data else None
        problem = store.name_problem(name) if isinstance(name, str) else "a bundle name is needed"
        if problem:
            return refuse(400, problem)
        path = Path(settings.bundles_dir) / name
        if not path.is_file():
            return refuse(404, f"no bundle {name} in {settings.bundles_dir}")
        return await daemon(f"load {path}")  # the daemon records the choice (model.choice)

    @guarded(change=True)
    async def api_upload(request: Request):
        name = request.query_params.get("name", "")
        problem = store.name_problem(name)
        if problem:
            return refuse(400, problem)
        try:
            length = int(request.headers.get("content-length") or 0)
        except ValueError:
            return refuse(400, "a bad Content-Length")
        if length > settings.max_upload_bytes:
            return refuse(413, f"the file is {length / 2**20:.1f} MiB; uploads may be at most "
                               f"{settings.max_upload_bytes / 2**20:.0f} MiB")
        if upload_lock.locked():
            return refuse(409, "another upload is being verified: try again in a moment")
        async with upload_lock:
            return await _upload(request, name)

    async def _upload(request: Request, name: str):
        try:
            tmp, fd = store.open_temp(settings.bundles_dir)
        except OSError as e:
            return refuse(500, f"cannot write into {settings.bundles_dir}: {e.strerror}")
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        return refuse(413, f"the upload is over the {settings.max_upload_bytes / 2**20:.0f} MiB limit")
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if size == 0:
                return refuse(400, "the upload is empty")
            rate = period = 0
            try:
                st = await ask(settings.socket, "status")
                rate, period = int(st.get("rate", 0)), int(st.get("period", 0))
            except DaemonDown:
                pass
            result = await verify_in_subprocess(tmp, rate, period)
            if not result.get("ok"):
                return refuse(422, f"{name} refused: {result.get('message')}", verified=False)
            dest = store.commit(tmp, settings.bundles_dir, name)
            try:
                loading = await ask(settings.socket, f"load {dest}")
            except DaemonDown as e:
                loading = {"ok": False, "error": str(e)}
            return JSONResponse({"ok": True, "name": name, "verified": True, "message": result["message"],
                                 "effect": result.get("effect"), "load": loading})
        finally:
            tmp.unlink(missing_ok=True)

    async def verify_in_subprocess(path: Path, rate: int, period: int) -> dict:
        cmd = [sys.executable, "-m", "device.web.store", "verify", str(path), "--precision", settings.precision,
               "--rate", str(rate), "--period", str(period)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), settings.verify_timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return {"ok": False, "message": f"verification took longer than {settings.verify_timeout_s:.0f} s"}
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            return json.loads(lines[-1])
        except (IndexError, ValueError):
            why = f"signal {-proc.returncode}" if proc.returncode and proc.returncode < 0 else f"exit {proc.returncode}"
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            return {"ok": False, "message": f"the model crashed the verifier ({why}) {tail[0]}".strip()}

    # --- capture -------------------------------------------------------------------------------
    def refused(e: cap.Refused) -> JSONResponse:
        return refuse(e.status, str(e))

    @guarded(change=False)
    async def api_captures(request: Request):
        captures = await anyio.to_thread.run_sync(cap.list_captures, settings.captures_dir)
        return JSONResponse({"ok": True, "available": capture.available() is None, "why": capture.available(),
                             "daemon_control": bool(settings.daemon_stop), "captures": captures})

    @guarded(change=True)
    async def api_capture_plan(request: Request):
        data = await read_json(request)
        try:
            req = cap.parse_request({"name": "plan", **(data or {})})
            plan = await anyio.to_thread.run_sync(cap.plan_preview, req["knobs"], req["settings"], req["seconds"])
        except cap.Refused as e:
            return refused(e)
        except ValueError as e:
            return refuse(400, str(e))
        return JSONResponse({"ok": True, **plan})

    @guarded(change=True)
    async def api_capture_start(request: Request):
        data = await read_json(request)
        try:
            return JSONResponse(capture.start(cap.parse_request(data or {})))
        except cap.Refused as e:
            return refused(e)

    @guarded(change=True)
    async def api_capture_go(request: Request):
        try:
            return JSONResponse(capture.go())
        except cap.Refused as e:
            return refused(e)

    @guarded(change=True)
    async def api_capture_stop(request: Request):
        try:
            return JSONResponse(capture.stop())
        except cap.Refused as e:
            return refused(e)

    @guarded(change=False)
    async def api_capture_download(request: Request):
        name = request.query_params.get("name", "")
        problem = cap.name_problem(name)
        if problem:
            return refuse(400, problem)
        folder = Path(settings.captures_dir) / name
        if folder.is_symlink() or not (folder / "capture.json").is_file():
            return refuse(404, f"no capture {name}")
        if capture.busy and capture.name == name:
            return refuse(409, f"{name} is being captured: stop it (or let it finish) first")
        return StreamingResponse(cap.tar_stream(folder), media_type="application/x-tar",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.tar"'})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            await capture.recover()
        except OSError as e:
            log.warning("capture recovery: %s", e)
        try:
            yield
        finally:
            await capture.shutdown()

    routes = [Route("/login", login_get, methods=["GET"]), Route("/login", login_post, methods=["POST"]),
              Route("/style.css", style_css, methods=["GET"]),
              Route("/", index, methods=["GET"]), Route("/app.js", app_js, methods=["GET"]),
              Route("/logout", logout, methods=["POST"]),
              Route("/api/panel", api_panel, methods=["GET"]),
              Route("/api/bypass", api_bypass, methods=["POST"]), Route("/api/knob", api_knob, methods=["POST"]),
              Route("/api/bundle", api_bundle, methods=["POST"]), Route("/api/upload", api_upload, methods=["POST"]),
              Route("/api/captures", api_captures, methods=["GET"]),
              Route("/api/capture/plan", api_capture_plan, methods=["POST"]),
              Route("/api/capture/start", api_capture_start, methods=["POST"]),
              Route("/api/capture/go", api_capture_go, methods=["POST"]),
              Route("/api/capture/stop", api_capture_stop, methods=["POST"]),
              Route("/api/capture/download", api_capture_download, methods=["GET"])]
    app = Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)], lifespan=lifespan)
    app.state.settings, app.state.sessions, app.state.limiter = settings, sessions, limiter
    app.state.capture = capture
    return app


PUBLIC_ROUTES = {("/login", "GET"), ("/login", "POST"), ("/style.css", "GET")}


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
