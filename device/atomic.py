"""Files that survive a power cut: the whole new version or the whole old one, never half.

A pedal is switched off at the wall, often while it is doing something. Every tool that writes a
bundle or the config goes through here:

    write a temporary file in the same directory  ->  fsync it  ->  rename it over the target
    ->  fsync the directory (so the rename itself is on the card)

rename() within one file system is atomic, so a reader (the daemon at start-up) sees either the
old file or the new one. A cut before the rename leaves the old file and a stray temporary file
(``.NAME.tmp-XXXX``: hidden, and not ending in ``.pedal`` or ``.toml``, so nothing picks it up);
the next write in that directory removes stray temporaries older than a minute.

A symbolic link is followed: on a read-only root /etc/pedal/pedal.toml links to the writable data
partition, and the new file must land beside the real one, not replace the link in the overlay.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

TMP_INFIX = ".tmp-"
STALE_TMP_S = 60.0


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new file in ``directory`` durable (its entry, not only the data)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clean_stale(directory: Path, name: str) -> None:
    """Temporaries a killed or power-cut writer left behind for this name."""
    now = time.time()
    for p in directory.glob(f".{name}{TMP_INFIX}*"):
        try:
            if now - p.lstat().st_mtime > STALE_TMP_S:
                p.unlink()
        except OSError:
            pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None):
    """Yield a temporary path beside ``path`` (after symlinks) to write; on a clean exit it is
    fsynced and renamed over ``path``, and the directory fsynced. On an exception it is removed
    and ``path`` is untouched. The new file keeps the old one's permissions (and owner, when we
    may set it), else ``mode`` (default 0644 less the umask)."""
    target = Path(os.path.realpath(path))
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    _clean_stale(directory, target.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{TMP_INFIX}", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            old = target.stat()
            os.chmod(tmp, old.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, old.st_uid, old.st_gid)
        except FileNotFoundError:
            if mode is None:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str, mode: int | None = None) -> Path:
    """Replace ``path`` with ``data`` (str: UTF-8) atomically and durably; -> the path written."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path, mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(os.path.realpath(path))


def copy_atomic(src: str | os.PathLike, dest: str | os.PathLike, mode: int | None = None) -> Path:
    """Copy the file ``src`` to ``dest`` atomically and durably; -> the path written."""
    with atomic_path(dest, mode) as tmp:
        shutil.copyfile(src, tmp)
    return Path(os.path.realpath(dest))
