"""python -m device.web serve | passwd  (see device/web/__init__.py)"""
from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from .app import Settings

DEFAULT_PASSWORD_FILE = "/etc/pedal/web-password"


def cmd_serve(a) -> int:
    import uvicorn

    from .app import make_app
    s = Settings(password_file=Path(a.password_file), max_upload_bytes=int(a.max_upload_mb * 2**20),
                 poll_ms=a.poll_ms, secure_cookies=a.secure_cookies)
    if a.config:
        from device.config import load_config
        cfg = load_config(a.config)
        if cfg.status.socket is None:
            print(f"{a.config}: status.socket is empty: the web page needs the daemon's status socket", file=sys.stderr)
            return 2
        s.socket = Path(cfg.status.socket)
        s.config = Path(a.config).resolve()
        s.precision = cfg.model.precision
        s.bundles_dir = Path(cfg.model.bundles_dir or Path(cfg.model.bundle).parent)
    if a.socket:
        s.socket = Path(a.socket)
    if a.bundles_dir:
        s.bundles_dir = Path(a.bundles_dir)
    if a.state_dir:
        s.state_dir = Path(a.state_dir)
    if a.captures_dir:
        s.captures_dir = Path(a.captures_dir)
    s.daemon_stop, s.daemon_start = a.daemon_stop, a.daemon_start
    if a.login_free_failures is not None:
        s.login_free_failures = a.login_free_failures
    logging.getLogger("pedal.web").info("web page on http://%s:%d/ (daemon socket %s, bundles %s)", a.host, a.port,
                                        s.socket, s.bundles_dir)
    # h11 (pure Python), no proxy headers (the client address is the socket's: the login limit
    # trusts nothing a client says), small header limit, few connections at a time.
    uvicorn.run(make_app(s), host=a.host, port=a.port, log_level=a.log_level, access_log=False,
                proxy_headers=False, server_header=False, limit_concurrency=32, timeout_keep_alive=5,
                h11_max_incomplete_event_size=16 * 1024, http="h11", loop="asyncio")
    return 0


def cmd_passwd(a) -> int:
    from .auth import MIN_PASSWORD_CHARS, write_password_file
    if a.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"web page password (at least {MIN_PASSWORD_CHARS} characters): ")
        if getpass.getpass("again: ") != password:
            print("passwd: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    try:
        path = write_password_file(a.file, password)
    except ValueError as e:
        print(f"passwd: {e}; nothing changed", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"passwd: {e.filename}: permission denied (run with sudo)", file=sys.stderr)
        return 1
    print(f"password hash written to {path} (scrypt); restart nothing: the next login reads it")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device.web", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="serve the web page")
    p.add_argument("--config", default=None, help="the daemon's pedal.toml: its status socket, bundles_dir, precision")
    p.add_argument("--socket", default=None, help="the daemon's status socket (overrides the config)")
    p.add_argument("--bundles-dir", default=None, help="where bundles are listed and uploads go (overrides the config)")
    p.add_argument("--password-file", default=DEFAULT_PASSWORD_FILE)
    p.add_argument("--state-dir", default=None, help="where captures go (captures/); "
                   "default /var/lib/pedal/web")
    p.add_argument("--captures-dir", default=None, help="where captures go (default: STATE_DIR/captures)")
    p.add_argument("--daemon-stop", default="", metavar="CMD", help="a command that stops the daemon for a capture "
                   "(it holds the sound card), e.g. 'systemctl stop pedal.service'; without it a capture needs "
                   "the daemon stopped by hand")
    p.add_argument("--daemon-start", default="", metavar="CMD", help="the command that starts it again after a "
                   "capture, e.g. 'systemctl start pedal.service'")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0: every network; 127.0.0.1: this box only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-upload-mb", type=float, default=32.0)
    p.add_argument("--poll-ms", type=int, default=250, help="how often the page asks for fresh status")
    p.add_argument("--secure-cookies", action="store_true", help="behind an HTTPS proxy: cookies only over HTTPS")
    p.add_argument("--login-free-failures", type=int, default=None, help="wrong passwords before the waits start (3)")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("passwd", help="set the web page's password (stored as an scrypt hash)")
    p.add_argument("--file", default=DEFAULT_PASSWORD_FILE)
    p.add_argument("--stdin", action="store_true", help="read the password from one line of stdin (scripts)")
    p.set_defaults(fn=cmd_passwd)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
