"""Who may use the box's web page: one password, sessions, CSRF tokens, a login rate limit.

- The password is set at provisioning (``python -m device.web passwd``) and stored only as an
  scrypt hash (stdlib ``hashlib.scrypt``, n=2**14, r=8, p=1: 16 MiB and tens of milliseconds a
  try on a Pi, so a stolen file is slow to guess): one line ``scrypt$n$r$p$salt$hash``.
- A session is a random 256-bit token in a cookie (HttpOnly, SameSite=Strict, Path=/; Secure
  when served over HTTPS), kept in memory only: restarting the web service logs everyone out. It
  ends after ``idle_s`` without a request.
- Every change (POST) must carry the session's CSRF token in an ``X-CSRF-Token`` header; the
  login form carries a one-time token that must match its own cookie (double submit).
- Wrong passwords are slowed down per client address and for all clients together: after
  ``free`` failures each further try must wait twice as long as the one before (1 s, 2 s, 4 s
  ... up to ``max_wait_s``); a try made too early is refused unchecked (HTTP 429). A success
  clears the count.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
MIN_PASSWORD_CHARS = 8


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${n}${r}${p}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time comparison against a stored ``scrypt$...`` line; False for a malformed one."""
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=64 << 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


WEB_GROUP = "pedal-web"  # the web service's group: it may read the hash, nobody else but root


def write_password_file(path: str | os.PathLike, password: str) -> Path:
    """Hash ``password`` into ``path`` atomically, mode 0640: owner and group only. The group is
    the old file's, else ``pedal-web`` where that group exists (and we may give it: root)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        gid = path.stat().st_gid
    except FileNotFoundError:
        import grp
        try:
            gid = grp.getgrnam(WEB_GROUP).gr_gid
        except KeyError:
            gid = -1
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(hash_password(password) + "\n")
        if gid >= 0:
            try:
                os.chown(tmp, -1, gid)
            except PermissionError:
                pass
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_password_file(path: str | os.PathLike) -> str | None:
    """The stored hash, or None when no password has been set (every login is then refused)."""
    try:
        text = Path(path).read_text().strip()
    except (FileNotFoundError, PermissionError):
        return None
    return text if text.startswith("scrypt$") else None


@dataclass
class Session:
    token: str
    csrf: str
    last_seen: float = field(default_factory=time.monotonic)


class Sessions:
    """Sessions in memory: token -> Session. At most ``max_sessions`` (the oldest goes first)."""

    def __init__(self, idle_s: float = 12 * 3600, max_sessions: int = 32):
        self.idle_s, self.max_sessions = idle_s, max_sessions
        self._by_token: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def new(self) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        self._by_token[s.token] = s
        while len(self._by_token) > self.max_sessions:
            self._by_token.popitem(last=False)
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        s = self._by_token.get(token)
        now = time.monotonic()
        if s is None or now - s.last_seen > self.idle_s:
            self._by_token.pop(token, None)
            return None
        s.last_seen = now
        self._by_token.move_to_end(token)
        return s

    def end(self, token: str | None) -> None:
        self._by_token.pop(token or "", None)


class LoginLimiter:
    """Failed logins per client address and for everyone ("*"); -> how long a client must wait."""

    def __init__(self, free: int = 3, base_s: float = 1.0, max_wait_s: float = 300.0, free_all: int = 20,
                 max_clients: int = 1024, clock=time.monotonic):
        self.free, self.base_s, self.max_wait_s, self.free_all = free, base_s, max_wait_s, free_all
        self.max_clients, self.clock = max_clients, clock
        self._fails: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()  # -> (count, last)

    def _wait(self, key: str, free: int, now: float) -> float:
        count, last = self._fails.get(key, (0, 0.0))
        if count < free:
            return 0.0
        return max(0.0, last + min(self.base_s * 2 ** (count - free), self.max_wait_s) - now)

    def wait_s(self, client: str) -> float:
        """Seconds until ``client`` may try a password again (0: now)."""
        now = self.clock()
        return max(self._wait(client, self.free, now), self._wait("*", self.free_all, now))

    def failed(self, client: str) -> None:
        now = self.clock()
        for key in (client, "*"):
            count, _ = self._fails.pop(key, (0, 0.0))
            self._fails[key] = (count + 1, now)
        while len(self._fails) > self.max_clients:
            self._fails.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._fails.pop(client, None)
        self._fails.pop("*", None)
