"""The box's own Python: Raspberry Pi OS bookworm ships 3.11.2, which has neither
``tarfile.data_filter`` nor ``extractall(filter=...)`` (both arrived in 3.11.4). A ``.pedal``
archive must load there, and a hostile or broken one must be refused with a message that names
the member at fault, leaving no temp dir behind and no traceback on the command line."""
import io
import subprocess
import sys
import tarfile
import tempfile

import pytest

import device.bundle
from device.bundle import BundleError, load_bundle

from .conftest import REPO


@pytest.fixture
def python_3_11_2(monkeypatch):
    """tarfile as Python 3.11.2 has it: no data_filter, no filter= keyword."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    plain = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kw):
        if kw:
            raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kw))!r}")
        return plain(self, path, members, numeric_owner=numeric_owner)
    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temp dir of the test's own, so what the loader leaves behind in it can be seen."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def left_behind(tmp) -> list[str]:
    return sorted(p.name for p in tmp.glob("pedal-bundle-*"))


def archive(path, *members):
    """A .pedal archive of (TarInfo, bytes or None) pairs."""
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def test_a_bundle_archive_loads_without_tarfile_filters(python_3_11_2, private_tmp, bundle_path):
    assert not hasattr(tarfile, "data_filter")
    with pytest.raises(TypeError):
        with tarfile.open(bundle_path) as tar:
            tar.extractall(private_tmp / "x", filter="data")
    b = load_bundle(bundle_path)
    assert b.root.parent == private_tmp and (b.root / "manifest.json").is_file()
    assert sorted(p.name for p in b.root.iterdir()) == sorted(["manifest.json", *b.manifest.files])
    assert all(p.stat().st_mode & 0o7777 == 0o644 for p in b.root.iterdir())
    assert "float32" in b.card()


@pytest.mark.parametrize("name, kind, linkname, why", [
    ("../manifest.json", tarfile.REGTYPE, "", "a path outside the bundle"),
    ("/etc/manifest.json", tarfile.REGTYPE, "", "an absolute path"),
    ("golden.npz", tarfile.SYMTYPE, "/etc/passwd", "a symbolic link to '/etc/passwd'"),
    ("golden.npz", tarfile.LNKTYPE, "manifest.json", "a hard link to 'manifest.json'"),
    ("models", tarfile.DIRTYPE, "", "a directory"),
    ("models/step.tflite", tarfile.REGTYPE, "", "not a plain file name"),
    ("audio", tarfile.FIFOTYPE, "", "a device, fifo or other special file"),
    ("sda", tarfile.BLKTYPE, "", "a device, fifo or other special file"),
    (".hidden", tarfile.REGTYPE, "", "not a plain file name"),
    ("manifest.json", tarfile.REGTYPE, "", "in the archive twice"),
])
def test_an_archive_member_that_is_not_a_plain_file_is_refused_by_name(
        python_3_11_2, private_tmp, tmp_path, bundle_path, name, kind, linkname, why):
    evil = tmp_path / "evil.pedal"
    data = b"{}" if kind == tarfile.REGTYPE else None
    archive(evil, (member("manifest.json"), b"{}"), (member(name, kind, linkname), data))
    with pytest.raises(BundleError) as e:
        load_bundle(evil)
    assert str(e.value).startswith(f"{evil}: unexpected archive member {name!r}: {why}")
    assert left_behind(private_tmp) == []
    assert not (tmp_path / "manifest.json").exists()


def test_an_oversize_member_is_refused_before_it_is_written(python_3_11_2, private_tmp, tmp_path, monkeypatch):
    monkeypatch.setattr(device.bundle, "MAX_MEMBER_BYTES", 1000)
    big = archive(tmp_path / "big.pedal", (member("manifest.json"), b"{}"), (member("golden.npz"), bytes(1001)))
    with pytest.raises(BundleError, match=r"big.pedal: unexpected archive member 'golden.npz': 1001 bytes, over the "
                                          r"1000-byte limit"):
        load_bundle(big)
    assert left_behind(private_tmp) == []


def test_too_many_bytes_or_files_in_all_are_refused(python_3_11_2, private_tmp, tmp_path, monkeypatch):
    monkeypatch.setattr(device.bundle, "MAX_ARCHIVE_BYTES", 1500)
    files = [(member(f"part{i}.bin"), bytes(600)) for i in range(3)]
    with pytest.raises(BundleError, match=r"over 1500 bytes unpacked \(at member 'part2.bin'\)"):
        load_bundle(archive(tmp_path / "a.pedal", *files))
    monkeypatch.setattr(device.bundle, "MAX_ARCHIVE_BYTES", 1 << 20)
    monkeypatch.setattr(device.bundle, "MAX_MEMBERS", 2)
    with pytest.raises(BundleError, match=r"more than 2 files \(at member 'part2.bin'\)"):
        load_bundle(archive(tmp_path / "b.pedal", *files))
    assert left_behind(private_tmp) == []


def test_an_archive_refused_after_unpacking_leaves_nothing_behind(python_3_11_2, private_tmp, tmp_path, bundle_path):
    """Unpacked fine, but the manifest is wrong: the temp dir goes at once, not at exit."""
    bad = archive(tmp_path / "bad.pedal", (member("manifest.json"), b"{not json"))
    with pytest.raises(BundleError, match=r"bad.pedal/manifest.json: not valid JSON"):
        load_bundle(bad)
    cut = tmp_path / "cut.pedal"
    cut.write_bytes(bundle_path.read_bytes()[: bundle_path.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"cut.pedal: (not a readable bundle archive|missing|checksum)"):
        load_bundle(cut)
    assert left_behind(private_tmp) == []


def test_the_root_entry_of_a_tar_of_a_directory_is_allowed(python_3_11_2, private_tmp, tmp_path, bundle_path):
    """`tar -C bundle -cf x.pedal .` names its members ./manifest.json etc. after a "." entry."""
    src = load_bundle(bundle_path).root
    dotted = tmp_path / "dotted.pedal"
    with tarfile.open(dotted, "w") as tar:
        tar.add(src, arcname=".")
    assert "./manifest.json" in tarfile.open(dotted).getnames()
    assert load_bundle(dotted).manifest.effect == load_bundle(bundle_path).manifest.effect


# `python -m device ...` with tarfile as Python 3.11.2 has it
AS_3_11_2 = """\
import runpy, tarfile
if hasattr(tarfile, "data_filter"):
    del tarfile.data_filter
plain = tarfile.TarFile.extractall
def extractall(self, path=".", members=None, *, numeric_owner=False):
    return plain(self, path, members, numeric_owner=numeric_owner)
tarfile.TarFile.extractall = extractall
runpy.run_module("device", run_name="__main__", alter_sys=True)
"""


def device_cli(*args, tmp):
    r = subprocess.run([sys.executable, "-c", AS_3_11_2, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp)})
    return r.returncode, r.stdout + r.stderr


def test_the_command_line_inspects_a_good_archive(tmp_path, bundle_path):
    rc, out = device_cli("inspect", bundle_path, tmp=tmp_path)
    assert rc == 0 and "Traceback" not in out, out
    assert out.startswith(f"bundle   {bundle_path}") and "float32" in out


@pytest.mark.parametrize("args, lines", [(["inspect"], 1), (["selftest", "--bundle"], 2)])
def test_the_command_line_refuses_a_bad_archive_without_a_traceback(tmp_path, args, lines):
    """inspect: one line; selftest: its FAIL line and its verdict."""
    evil = archive(tmp_path / "evil.pedal", (member("manifest.json"), b"{}"),
                   (member("step_float32.tflite", tarfile.SYMTYPE, "/etc/passwd"), None))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    rc, out = device_cli(*args, evil, tmp=tmp)
    assert rc != 0, out
    assert "Traceback" not in out
    assert len(out.strip().splitlines()) == lines, out
    assert f"{evil}: unexpected archive member 'step_float32.tflite': a symbolic link" in out
    assert left_behind(tmp) == []
