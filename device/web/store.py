"""The bundles folder as the web page sees it: list, check a name, take an upload in, verify it.

An upload is written to a hidden temp file inside the bundles folder (the same file system, so
the final rename is atomic), verified in a separate process, and only then renamed to its name;
a refused upload is deleted. The daemon never sees a half-written or unverified file: it loads
``*.pedal`` names only, and only when told to.

Verification (``python -m device.web.store verify FILE``) runs in its own process because a
broken model can abort the TFLite runtime (RECIPES.md: int16 kernels SIGABRT the process): the
bundle loader's checks (archive members, schema, SHA-256 of every file, shapes), the golden
vectors through the step model within the manifest's tolerance (device/selftest.py), and the
sample rate and hop against what the daemon runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import tarfile
from pathlib import Path

SUFFIX = ".pedal"
# A bundle's file name: letters, digits, "_", "-", "." inside, ".pedal" at the end; no path.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\.pedal")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a bundle's file name in the bundles folder (None: it can). Nothing
    is cleaned up or guessed: a name with a path in it is refused, not trimmed."""
    if not name:
        return "the upload has no file name"
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name:
        return f"file name {name!r} has a path in it: give a plain name like comp4.pedal"
    if not NAME.fullmatch(name):
        return (f"file name {name!r} is not a plain bundle name: letters, digits, '_', '-' and '.', "
                f"at most 69 characters, ending in .pedal")
    return None


def manifest_summary(path: Path) -> dict:
    """Effect, description and knob names from an archive's manifest (not verified: for the list)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.name.removeprefix("./") == "manifest.json" and member.isfile() and member.size < 1 << 20:
                    m = json.load(tar.extractfile(member))
                    return {"effect": str(m.get("effect", "?")), "description": str(m.get("description", "")),
                            "knobs": [str(k.get("name")) for k in m.get("knobs", [])]}
    except (OSError, tarfile.TarError, ValueError, AttributeError, TypeError):
        pass
    return {"effect": "?", "description": "unreadable manifest", "knobs": []}


_summaries: dict[tuple, dict] = {}


def list_bundles(folder: Path) -> list[dict]:
    """The ``*.pedal`` files of ``folder``: name, size, modification time, effect."""
    out = []
    try:
        entries = sorted(Path(folder).glob("*" + SUFFIX))
    except OSError:
        return out
    for p in entries:
        if p.name.startswith(".") or not p.is_file():
            continue
        st = p.stat()
        key = (p.name, st.st_size, st.st_mtime_ns)
        if key not in _summaries:
            _summaries[key] = manifest_summary(p)
        out.append({"name": p.name, "path": str(p), "bytes": st.st_size, "mtime": st.st_mtime, **_summaries[key]})
    return out


def open_temp(folder: Path) -> tuple[Path, int]:
    """A new hidden file in ``folder`` for an upload: (path, fd), mode 0640, never an existing file."""
    path = Path(folder) / f".upload-{secrets.token_hex(8)}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    return path, fd


def commit(tmp: Path, folder: Path, name: str) -> Path:
    """Move a verified upload into place under its checked name (atomic; replaces a file of that name)."""
    if name_problem(name):
        raise ValueError(name_problem(name))
    dest = Path(folder) / name
    os.replace(tmp, dest)
    try:  # the rename is durable once the folder's entry is on disk
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return dest


def verify(path: str, precision: str = "", rate: int = 0, period: int = 0) -> dict:
    """The bundle at ``path`` checked as the daemon would before it plays it: -> {"ok", "message", ...}."""
    from device.bundle import BundleError, load_bundle
    from device.selftest import check_golden
    try:
        bundle = load_bundle(path)
    except BundleError as e:
        return {"ok": False, "message": str(e).replace(str(path), "the upload")}
    m = bundle.manifest
    info = {"effect": m.effect, "knobs": [k.name for k in m.knobs], "hop": m.hop, "sample_rate": m.sample_rate}
    if rate and m.sample_rate != rate:
        return {"ok": False, "message": f"it runs at {m.sample_rate} Hz; this box runs at {rate} Hz", **info}
    if period and period % m.hop:
        return {"ok": False, "message": f"its hop of {m.hop} samples does not divide this box's period of "
                                        f"{period} frames", **info}
    chosen = precision if precision in m.models else m.default_precision
    try:
        r = check_golden(bundle, chosen)
    except BundleError as e:
        return {"ok": False, "message": str(e).replace(str(bundle.root), "the upload"), **info}
    if not r["ok"]:
        return {"ok": False, "message": f"golden vectors fail in {chosen}: {r['snr_db']:.1f} dB SNR against the "
                                        f"host's output, needs {r['snr_db_min']:g} dB", **info}
    return {"ok": True, "message": f"{m.effect}: {len(m.files)} files verified (SHA-256), golden vectors "
                                   f"{r['snr_db']:.1f} dB in {chosen} (needs {r['snr_db_min']:g})", **info}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device.web.store")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("verify", help="verify a bundle file; print one JSON line")
    p.add_argument("path")
    p.add_argument("--precision", default="")
    p.add_argument("--rate", type=int, default=0)
    p.add_argument("--period", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        result = verify(a.path, a.precision, a.rate, a.period)
    except Exception as e:  # anything else the bundle does to the loader is a refusal, said plainly
        result = {"ok": False, "message": f"{type(e).__name__}: {e}".replace(a.path, "the upload")}
    result = {k: (float(v) if hasattr(v, "dtype") else v) for k, v in result.items()}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
