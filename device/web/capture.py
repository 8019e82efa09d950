"""The capture flow on the web page: ``python -m device capture`` as its own process, answered from
a phone the way a person answers it at a terminal.

The capture needs the sound card, and the daemon holds it while it plays, so (as the command
itself requires: docs/capture.md) the daemon is stopped for the capture and started again when the
capture ends, is stopped, or fails. The web server does that through two commands it is given
(``--daemon-stop``, ``--daemon-start``; on the box ``systemctl stop|start pedal.service``); without
them it refuses to start a capture while the daemon answers, and says how to stop it.

    web server (asyncio)  --argv, no shell-->  python -m device capture --out DIR --config C --no-footswitch ...
           ^    stdin: "\\n" (go) / "q\\n" (stop at a prompt)      |  stdout: its prompts and verdicts
           |                                                       v
           +-- reads DIR/capture.json (written atomically by the capture): plan, reference, every attempt

Nothing of the capture runs in the web server's event loop or near the daemon's audio thread:
the signal, the plan, the checks and the files are the command's own (device/capture/), and the
server only starts it, answers its prompts, stops it (``q`` at a prompt; SIGTERM during a pass,
which the capture survives like a power cut: that pass is played again on resume) and reads its
progress file. The plan shown before a capture starts is ``device.capture.plan.make_plan`` with
the command's own defaults, so it is the plan the command then plays.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import re
import shlex
import signal
import sys
import tarfile
import time
from pathlib import Path

log = logging.getLogger("pedal.web")

# A capture's name is its folder's name and its effect's name (the bundle's): letters, digits, "_".
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
# A knob as the command takes it (NAME=MIN..MAX[,UNIT][,log], NAME=clock, NAME=9..3,clock): checked
# by device.capture.plan.parse_knob too; this keeps anything else (quotes, slashes, options) out.
KNOB_ARG = re.compile(r"[A-Za-z0-9_]{1,32}=[A-Za-z0-9_.,%' +-]{1,48}")
MAX_KNOBS, MAX_SETTINGS = 8, 200
SECONDS_RANGE, LEVEL_DB_RANGE = (6.0, 120.0), (-40.0, 0.0)
HELD_MARK = ".daemon-stopped-for-capture"  # in the captures folder while the daemon is stopped for one
PROMPT_END = "  then press Enter or the footswitch"  # the capture's prompts end with this line
DAEMON_GONE_S = 20.0  # after the stop command, until its socket stops answering


class Refused(Exception):
    """A capture request that cannot be done, with the reason to show."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def name_problem(name) -> str | None:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        return ("a capture's name: a letter, then letters, digits or '_' (at most 40), e.g. my_drive; "
                "it names the folder and the bundle")
    return None


def parse_request(data: dict) -> dict:
    """A start request's fields, checked: -> {"name", "knobs" (argument strings), "settings",
    "seconds", "level_db"}. Raises Refused (400) with what is wrong."""
    from device.capture.plan import parse_knob
    problem = name_problem(data.get("name"))
    if problem:
        raise Refused(400, problem)
    knobs = data.get("knobs") or []
    if not isinstance(knobs, list) or len(knobs) > MAX_KNOBS or not all(isinstance(k, str) for k in knobs):
        raise Refused(400, f"knobs: a list of at most {MAX_KNOBS} knobs like drive=0..10 or tone=clock")
    knobs = [k.strip() for k in knobs if k.strip()]
    for k in knobs:
        if not KNOB_ARG.fullmatch(k):
            raise Refused(400, f"knob {k[:60]!r}: write it as NAME=MIN..MAX[,UNIT][,log] or NAME=clock "
                               "(letters, digits and _ in the name)")
        try:
            parse_knob(k)
        except ValueError as e:
            raise Refused(400, str(e)) from None
    names = [k.split("=", 1)[0].strip() for k in knobs]
    if len(set(names)) != len(names):
        raise Refused(400, f"knobs: a knob named twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")

    def number(key, default, lo, hi, integer=False):
        v = data.get(key, default)
        if v is None or v == "":
            v = default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi \
                or (integer and v != int(v)):
            raise Refused(400, f"{key}: {'a whole number' if integer else 'a number'} from {lo:g} to {hi:g}")
        return int(v) if integer else float(v)
    return {"name": data["name"], "knobs": knobs,
            "settings": number("settings", 0, 0, MAX_SETTINGS, integer=True),
            "seconds": number("seconds", 60.0, *SECONDS_RANGE),
            "level_db": number("level_db", -10.0, *LEVEL_DB_RANGE)}


def plan_preview(knobs: list[str], settings: int, seconds: float) -> dict:
    """The plan the command will play for these knobs (its own defaults: Latin hypercube, 5 values
    per knob, seed 0): knobs, each setting as the prompts will say it, and the time it takes."""
    import numpy as np

    from device.capture.plan import format_value, make_plan, moves, parse_knob
    from device.capture.signal import dataset_bytes
    if not knobs:
        raise Refused(400, "name the pedal's knobs first, one per line: drive=0..10, tone=clock, time_ms=40..800,ms,log")
    specs = [parse_knob(k) for k in knobs]
    n = settings or max(10, 5 * len(specs))
    plan = make_plan(specs, n, 5, 0, "lhs")
    return {"knobs": [{"name": k.name, "unit": k.unit, "minimum": k.minimum, "maximum": k.maximum,
                       "taper": k.taper, "label": k.label()} for k in specs],
            "settings": n, "seconds_per_setting": seconds,
            "plan": [[format_value(k, v) for k, v in zip(specs, s)] for s in plan],
            "knobs_moved_per_pass": round(float(np.mean(moves(plan))) if n > 1 else 0.0, 2),
            # the signal per setting plus a reference pass of 2.5 s; setting the knobs is the player's time
            "playing_s": round(n * seconds + 2.5),
            "disk_bytes": dataset_bytes(seconds, n)}  # a program per setting, the command's default


def _finite(v):
    return v if not isinstance(v, float) or math.isfinite(v) else None


def progress(folder: Path) -> dict | None:
    """What a capture folder's progress file says, for the page: the plan, which settings are
    captured, the reference, the last attempts with their figures and the reasons a pass was
    refused. None when the folder holds no capture (yet)."""
    from device.capture.plan import format_value
    from device.knobspec import KnobSpec
    try:
        st = json.loads((folder / "capture.json").read_text())
        specs = [KnobSpec.from_dict(k, "capture.json") for k in st["knobs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    plan, passes = st.get("plan", []), st.get("passes", [])
    sig = st.get("signal", {})
    rate = sig.get("sample_rate") or 48000
    done = sum(p is not None for p in passes)
    pending = [i for i, p in enumerate(passes) if p is None]

    def attempt(a: dict) -> dict:
        keys = ("try", "ok", "problems", "latency_samples", "peak_dbfs", "clipped", "noise_dbfs", "repeat_diff_db",
                "xruns", "correlation", "gain_db")
        out = {k: _finite(a[k]) for k in keys if k in a}
        out["pass"] = a["pass"] + 1 if "pass" in a else 0  # 0: the reference
        return out
    ref_attempts = [attempt(a) for a in st.get("reference_attempts", [])]
    attempts = ref_attempts + [attempt(a) for a in st.get("attempts", [])]
    return {"name": folder.name, "effect": st.get("effect"), "knobs": [k.label() for k in specs],
            "settings": len(plan), "done": done, "next": pending[0] + 1 if pending else None,
            "captured": [p is not None for p in passes],
            "plan": [[format_value(k, v) for k, v in zip(specs, s)] for s in plan],
            "seconds_per_setting": round(sig.get("samples", 0) / rate, 2), "sample_rate": rate,
            "reference": attempt(st["reference"]) if st.get("reference") else None,
            "latency_samples": st.get("latency_samples"), "box_latency": st.get("box_latency"),
            "attempts": attempts[-8:], "attempts_total": len(attempts),
            "redone": len(st.get("attempts", [])) - done, "started": st.get("started")}


def list_captures(folder: Path) -> list[dict]:
    out = []
    try:
        entries = sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.is_symlink() and NAME.fullmatch(p.name))
    except OSError:
        return out
    for p in entries:
        pr = progress(p)
        if pr is not None:
            out.append({"name": p.name, "effect": pr["effect"], "settings": pr["settings"], "done": pr["done"],
                        "knobs": pr["knobs"], "bytes": folder_bytes(p)})
    return out


def capture_files(folder: Path) -> list[Path]:
    """The files a capture folder holds, for its download: regular files only (no links), no hidden
    ones (a write cut short leaves a hidden temporary: device/atomic.py)."""
    files = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        for n in sorted(names):
            p = Path(root) / n
            if not n.startswith(".") and p.is_file() and not p.is_symlink():
                files.append(p)
    return files


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in capture_files(folder))


class _Chunks:
    """A write-only file for tarfile's stream mode that hands on what was written."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def take(self):
        parts, self.parts = self.parts, []
        yield from parts


def tar_stream(folder: Path):
    """The capture folder as an uncompressed tar (``NAME/capture.json``, ``NAME/knobs.csv``, ...),
    produced file by file as it is sent (WAVs do not compress; a tar keeps it one download)."""
    buf = _Chunks()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for p in capture_files(folder):
            info = tar.gettarinfo(str(p), arcname=f"{folder.name}/{p.relative_to(folder).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as f:
                tar.addfile(info, f)
            yield from buf.take()
    yield from buf.take()


async def run_command(cmd: str, timeout_s: float = 60.0) -> tuple[int, str]:
    """A configured command (split like a shell would, run without one) -> (exit code, its output)."""
    try:
        proc = await asyncio.create_subprocess_exec(*shlex.split(cmd), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as e:
        return 127, f"{cmd}: {e.strerror}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, f"{cmd}: still running after {timeout_s:.0f} s"
    return proc.returncode, out.decode(errors="replace").strip()


class CaptureRunner:
    """One capture at a time: its process, where it stands, and the daemon stopped for it.

    ``state``: idle, stopping the daemon, running (a pass playing or being checked), waiting (a
    prompt: the player sets the knobs, then Go), stopping, done, stopped, failed."""

    def __init__(self, settings, daemon_alive):
        self.s = settings
        self.daemon_alive = daemon_alive  # async () -> bool: does the daemon answer on its socket
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task | None = None
        self.name: str | None = None
        self.state, self.prompt, self.message = "idle", "", ""
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self.exit_code: int | None = None
        self.stop_requested = False
        self.daemon_note = ""

    @property
    def dir(self) -> Path:
        return Path(self.s.captures_dir)

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def available(self) -> str | None:
        """Why captures cannot be made from this server (None: they can)."""
        import importlib.util
        if importlib.util.find_spec("device.capture.session") is None:
            return "this version of the box has no python -m device capture"
        if not self.s.config:
            return ("the web server was started without --config: it does not know the audio interface "
                    "(the daemon's pedal.toml), so it cannot run a capture")
        return None

    def status(self) -> dict:
        out = {"state": self.state, "name": self.name, "prompt": self.prompt, "message": self.message,
               "exit_code": self.exit_code, "log": list(self.lines)[-12:], "daemon": self.daemon_note,
               "daemon_control": bool(self.s.daemon_stop)}
        if self.name:
            out["progress"] = progress(self.dir / self.name)
        return out

    # --- the requests ---------------------------------------------------------------------------
    def start(self, req: dict) -> dict:
        """Start a new capture (knobs given) or carry on an existing one (its name alone)."""
        why = self.available()
        if why:
            raise Refused(409, why)
        if self.busy:
            raise Refused(409, f"a capture is on already ({self.name}: {self.state}); stop it first")
        folder = self.dir / req["name"]
        exists = (folder / "capture.json").is_file()
        if folder.is_symlink():
            raise Refused(400, f"{req['name']}: not a capture folder")
        if exists and req["knobs"]:
            raise Refused(409, f"{req['name']} exists already: carry it on (Resume, without knobs), or choose another name")
        if not exists and not req["knobs"]:
            raise Refused(400, f"no capture {req['name']} yet: name the pedal's knobs to start one")
        argv = [sys.executable, "-m", "device", "capture", "--out", str(folder), "--config", str(self.s.config),
                "--no-footswitch", "--priority", "0"]
        if not exists:
            argv += [f"--knob={k}" for k in req["knobs"]]
            argv += ["--effect", req["name"], "--settings", str(req["settings"]), "--seconds", f"{req['seconds']:g}",
                     "--level-db", f"{req['level_db']:g}"]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.state, self.prompt, self.message, self.exit_code = req["name"], "starting", "", "", None
        self.stop_requested = False
        self.lines.clear()
        self.task = asyncio.create_task(self._run(argv))
        return {"ok": True, "resumed": exists, **self.status()}

    def go(self) -> dict:
        if self.state != "waiting" or self.proc is None:
            raise Refused(409, f"the capture is not waiting for you ({self.state})")
        self._send(b"\n")
        self.state, self.prompt = "running", ""
        return {"ok": True, **self.status()}

    def stop(self) -> dict:
        if not self.busy:
            raise Refused(409, "no capture is on")
        self.stop_requested = True
        if self.state == "waiting" and self.proc is not None:
            self._send(b"q\n")  # the command's own way to stop at a prompt: it says what is left
        elif self.proc is not None and self.proc.returncode is None:
            # mid-pass: the capture survives this like a power cut (atomic files); the pass is replayed on resume
            self.proc.send_signal(signal.SIGTERM)
        self.state, self.prompt = "stopping", ""
        return {"ok": True, **self.status()}

    def _send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, ConnectionResetError, AttributeError):
            pass

    # --- the capture's life -----------------------------------------------------------------------
    async def _run(self, argv: list[str]) -> None:
        held = False
        try:
            held = await self._stop_daemon()
            if self.stop_requested:
                self.state, self.message = "stopped", "stopped before the first pass"
                return
            self.state = "running"
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYTHONUNBUFFERED": "1"}
            self.proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                             stdout=asyncio.subprocess.PIPE,
                                                             stderr=asyncio.subprocess.STDOUT, env=env)
            last = ""
            async for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if not line.strip():
                    continue
                self.lines.append(line)
                if line.startswith(PROMPT_END):
                    if self.stop_requested:
                        self._send(b"q\n")
                    else:
                        self.state, self.prompt = "waiting", last.strip()
                last = line
            code = self.exit_code = await self.proc.wait()
            tail = [line for line in self.lines if line.strip()][-1:] or [""]
            if code == 0:
                self.state, self.message = "done", "capture done: download it for training on the host"
            elif code == 3 or (self.stop_requested and code < 0):
                self.state = "stopped"
                self.message = ("stopped" + (" during a pass: that pass is played again" if code < 0 else "") +
                                "; Resume carries on where it stopped")
            else:
                self.state, self.message = "failed", f"the capture ended with exit code {code}: {tail[0].strip()}"
        except Refused as e:
            self.state, self.message = "failed", str(e)
        except Exception as e:  # the page must say it; the daemon must come back
            log.exception("capture")
            self.state, self.message = "failed", f"{type(e).__name__}: {e}"
        finally:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            self.proc, self.prompt = None, ""
            if held:
                await self.start_daemon()

    async def _stop_daemon(self) -> bool:
        """The daemon off the sound card: -> True when this stopped it (and must start it again)."""
        if not await self.daemon_alive():
            self.daemon_note = "the daemon was not running"
            return False
        if not self.s.daemon_stop:
            raise Refused(409, "the pedal daemon is playing and holds the sound card; this web server may not "
                               "stop it (no --daemon-stop): stop it on the box (sudo systemctl stop pedal) and "
                               "start the capture again")
        self.state = "stopping the daemon"
        (self.dir / HELD_MARK).write_text(f"{time.time():.0f}\n")
        code, out = await run_command(self.s.daemon_stop)
        if code != 0:
            await self.start_daemon()
            raise Refused(500, f"could not stop the daemon ({self.s.daemon_stop}: exit {code}: {out[-300:]}); "
                               "on the box this needs the polkit rule of docs/web.md, or stop it over ssh "
                               "(sudo systemctl stop pedal)")
        deadline = time.monotonic() + DAEMON_GONE_S
        while await self.daemon_alive():
            if time.monotonic() > deadline:
                raise Refused(500, f"the daemon still answers {DAEMON_GONE_S:.0f} s after {self.s.daemon_stop}")
            await asyncio.sleep(0.1)
        self.daemon_note = "stopped for the capture: the box plays no guitar until it is back"
        log.info("capture %s: daemon stopped (%s)", self.name, self.s.daemon_stop)
        return True

    async def start_daemon(self) -> None:
        if not self.s.daemon_start:
            self.daemon_note = "stopped: start it on the box (sudo systemctl start pedal)"
            return
        code, out = await run_command(self.s.daemon_start)
        if code == 0:
            (self.dir / HELD_MARK).unlink(missing_ok=True)
            self.daemon_note = "started again after the capture"
        else:
            self.daemon_note = f"could not start it again ({self.s.daemon_start}: exit {code}: {out[-300:]})"
        log.info("daemon start after capture: %s", self.daemon_note)

    async def recover(self) -> None:
        """At the server's start: a daemon this server stopped for a capture and never started again
        (the server was killed mid-capture) is started now."""
        if (self.dir / HELD_MARK).exists() and self.s.daemon_start and not await self.daemon_alive():
            log.warning("the daemon was stopped for a capture that did not finish; starting it again")
            await self.start_daemon()

    async def shutdown(self) -> None:
        if self.busy:
            self.stop_requested = True
            if self.proc is not None and self.proc.returncode is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.task), 15)
            except asyncio.TimeoutError:
                pass
