"""The model bundle: the one contract between the host and the box.

A bundle is a directory (or a ``.pedal`` tar archive of one) holding

    manifest.json          what this file's ``Manifest`` describes (schema below)
    step_<precision>.tflite  the streaming step model(s): hop samples + knobs + state -> hop samples + state
    golden.npz             input audio, knob automation (physical units, one row per hop) and the
                           PyTorch reference output, so a box can prove it computes what the host did

The device side owns this format because it must stand alone on the Pi: this module imports only
the standard library and numpy. ``convert/`` writes bundles with ``write_bundle``; the daemon and
the self-test read them with ``load_bundle``, which refuses a bundle whose schema version,
checksums, files or shapes do not match, with a message that names what is wrong.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_path, fsync_dir
from .knobspec import KnobSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ARCHIVE_SUFFIX = ".pedal"
PRECISIONS = ("float32", "float16", "dynamic_int8", "int8")


class BundleError(Exception):
    """A bundle that must not be run; the message names the file, field or value at fault."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class TensorInfo:
    name: str  # name in the TFLite model (signature input name or tensor name)
    shape: list[int]
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TensorInfo":
        try:
            return cls(name=str(d["name"]), shape=[int(s) for s in d["shape"]], dtype=str(d.get("dtype", "float32")))
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{where}: malformed tensor description {d!r} ({e})") from None


@dataclass
class ModelEntry:
    """One TFLite file of the bundle: the step model in one precision."""
    precision: str
    file: str
    inputs: dict[str, TensorInfo]  # role ("audio", "knobs", "state") -> tensor
    outputs: dict[str, TensorInfo]  # role ("audio", "state") -> tensor
    quantization: dict = field(default_factory=dict)
    verified: dict = field(default_factory=dict)  # SNR vs PyTorch etc., measured by convert/

    def to_dict(self) -> dict:
        return {
            "precision": self.precision, "file": self.file,
            "inputs": {k: vars(v) for k, v in self.inputs.items()},
            "outputs": {k: vars(v) for k, v in self.outputs.items()},
            "quantization": self.quantization, "verified": self.verified,
        }


@dataclass
class Manifest:
    effect: str
    knobs: list[KnobSpec]
    sample_rate: int
    hop: int
    latency_samples: int
    state_size: int
    state_layout: list[dict]  # [{"name", "offset", "size", "shape"}], slices of the flat state
    models: dict[str, ModelEntry]  # precision -> entry
    default_precision: str
    files: dict[str, str]  # file name -> sha256, every file of the bundle but the manifest
    tolerances: dict[str, dict]  # precision -> {"snr_db_min": ...} that the on-device test must meet
    golden: dict  # {"file": "golden.npz", "seconds": ...}
    training: dict = field(default_factory=dict)  # metrics and provenance
    description: str = ""
    schema_version: int = SCHEMA_VERSION
    # how the models were made and chosen: the precision rule and its outcome, calibration, I/O
    # layout, precisions left out and why (written by convert/; optional, informational)
    conversion: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "effect": self.effect,
            "description": self.description,
            "knobs": [k.to_dict() for k in self.knobs],
            "sample_rate": self.sample_rate,
            "hop": self.hop,
            "latency_samples": self.latency_samples,
            "state": {"size": self.state_size, "layout": self.state_layout},
            "models": {p: m.to_dict() for p, m in self.models.items()},
            "default_precision": self.default_precision,
            "files": self.files,
            "tolerances": self.tolerances,
            "golden": self.golden,
            "training": self.training,
            "conversion": self.conversion,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST) -> "Manifest":
        if not isinstance(d, dict):
            raise BundleError(f"{where}: expected a JSON object at the top level")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{where}: schema_version {version!r} is not supported (this device reads {SCHEMA_VERSION})")

        def need(key, typ):
            if key not in d:
                raise BundleError(f"{where}: missing field {key!r}")
            if not isinstance(d[key], typ):
                raise BundleError(f"{where}: field {key!r} should be {typ.__name__}, got {d[key]!r}")
            return d[key]

        try:
            knobs = [KnobSpec.from_dict(k, f"{where}: knobs[{i}]") for i, k in enumerate(need("knobs", list))]
        except ValueError as e:
            raise BundleError(str(e)) from None
        state = need("state", dict)
        models = {}
        for prec, m in need("models", dict).items():
            w = f"{where}: models.{prec}"
            if prec not in PRECISIONS:
                raise BundleError(f"{w}: unknown precision (known: {PRECISIONS})")
            for key in ("file", "inputs", "outputs"):
                if key not in m:
                    raise BundleError(f"{w}: missing field {key!r}")
            models[prec] = ModelEntry(
                precision=prec, file=str(m["file"]),
                inputs={r: TensorInfo.from_dict(t, f"{w}.inputs.{r}") for r, t in m["inputs"].items()},
                outputs={r: TensorInfo.from_dict(t, f"{w}.outputs.{r}") for r, t in m["outputs"].items()},
                quantization=m.get("quantization", {}), verified=m.get("verified", {}))
            for role in ("audio", "knobs", "state"):
                if role not in models[prec].inputs:
                    raise BundleError(f"{w}.inputs: missing role {role!r}")
            for role in ("audio", "state"):
                if role not in models[prec].outputs:
                    raise BundleError(f"{w}.outputs: missing role {role!r}")
        man = cls(
            effect=need("effect", str), description=d.get("description", ""), knobs=knobs,
            sample_rate=int(need("sample_rate", int)), hop=int(need("hop", int)),
            latency_samples=int(need("latency_samples", int)),
            state_size=int(state.get("size", -1)), state_layout=list(state.get("layout", [])),
            models=models, default_precision=need("default_precision", str), files=need("files", dict),
            tolerances=need("tolerances", dict), golden=need("golden", dict), training=d.get("training", {}),
            conversion=d.get("conversion", {}),
        )
        man._check_shapes(where)
        return man

    def _check_shapes(self, where: str) -> None:
        """The shapes every model declares must agree with hop, knob count and state size."""
        if self.default_precision not in self.models:
            raise BundleError(f"{where}: default_precision {self.default_precision!r} has no model (have {sorted(self.models)})")
        if self.hop <= 0 or self.sample_rate <= 0 or self.state_size <= 0:
            raise BundleError(f"{where}: hop {self.hop}, sample_rate {self.sample_rate} and state.size {self.state_size} must be positive")
        used = sum(int(s["size"]) for s in self.state_layout)
        if self.state_layout and used != self.state_size:
            raise BundleError(f"{where}: state.layout covers {used} values but state.size is {self.state_size}")
        want = {"audio": [1, self.hop], "knobs": [1, len(self.knobs)], "state": [1, self.state_size]}
        for prec, m in self.models.items():
            for side, tensors in (("inputs", m.inputs), ("outputs", m.outputs)):
                for role, t in tensors.items():
                    if role in want and t.shape != want[role]:
                        raise BundleError(f"{where}: models.{prec}.{side}.{role} has shape {t.shape}, expected {want[role]}")


@dataclass
class Bundle:
    root: Path  # the directory the files live in (an archive is unpacked to a private temp dir)
    manifest: Manifest
    source: Path | None = None  # what was loaded: the directory or the .pedal archive

    def path(self, file: str) -> Path:
        return self.root / file

    def model(self, precision: str | None = None) -> ModelEntry:
        precision = precision or self.manifest.default_precision
        if precision not in self.manifest.models:
            raise BundleError(f"{self.root}: no {precision!r} model in this bundle (have {sorted(self.manifest.models)})")
        return self.manifest.models[precision]

    def golden(self) -> dict:
        import numpy as np
        with np.load(self.path(self.manifest.golden["file"])) as z:
            return {k: z[k] for k in z.files}

    def card(self) -> str:
        """A human-readable summary: what `python -m device inspect` prints."""
        m = self.manifest
        lines = [f"bundle   {self.source or self.root}", f"effect   {m.effect}  {m.description}".rstrip(),
                 f"audio    {m.sample_rate} Hz, hop {m.hop} samples, latency {m.latency_samples} samples "
                 f"({1000 * m.latency_samples / m.sample_rate:.2f} ms)",
                 f"state    {m.state_size} floats in {len(m.state_layout)} parts", "knobs"]
        for k in m.knobs:
            lines.append(f"  {k.name:<16} {k.minimum:g}..{k.maximum:g} {k.unit:<4} default {k.default:g} ({k.taper})")
        lines.append("models")
        for p, e in m.models.items():
            size = self.path(e.file).stat().st_size if self.path(e.file).exists() else 0
            ver = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in e.verified.items())
            star = "*" if p == m.default_precision else " "
            lines.append(f" {star}{p:<13} {e.file:<26} {size / 1024:8.1f} KiB  {ver}")
        if m.conversion.get("default_reason"):
            lines.append(f"default  {m.default_precision}: {m.conversion['default_reason']}")
        for p, why in m.conversion.get("left_out", {}).items():
            lines.append(f"left out {p}: {why}")
        if m.training:
            met = m.training.get("metrics", {})
            lines.append("training " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in met.items()))
        return "\n".join(lines)


# What a .pedal archive may hold: a flat set of a few files (the manifest, the step models, the
# golden vectors), each far smaller than these limits. Anything else is refused before a byte is
# written, so a hostile or broken archive cannot fill the disk or write outside its temp dir.
MAX_MEMBERS = 64
MAX_MEMBER_BYTES = 256 << 20
MAX_ARCHIVE_BYTES = 512 << 20
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")  # no "/", no leading "." (so no "..")


def _member_problem(member: tarfile.TarInfo, name: str) -> str | None:
    """Why this archive member cannot be part of a bundle (None: it can)."""
    if member.issym() or member.islnk():
        return f"a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}"
    if member.isdir():
        return "a directory (a bundle is a flat set of files)"
    if not member.isfile():
        return "a device, fifo or other special file"
    if name.startswith("/"):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a path outside the bundle"
    if not _FILE_NAME.fullmatch(name):
        return "not a plain file name (a bundle is a flat set of files)"
    if member.size > MAX_MEMBER_BYTES:
        return f"{member.size} bytes, over the {MAX_MEMBER_BYTES}-byte limit for one file"
    return None


def _checked_members(archive: Path, tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every member of the archive, checked before anything is written: file name -> member."""
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    for member in tar:
        name = member.name.removeprefix("./")
        if member.isdir() and name.rstrip("/") in ("", "."):
            continue  # the top entry of `tar -C dir -cf x.pedal .`
        why = _member_problem(member, name) or ("in the archive twice" if name in members else None)
        if why:
            raise BundleError(f"{archive}: unexpected archive member {member.name!r}: {why}")
        members[name] = member
        total += member.size
        if len(members) > MAX_MEMBERS:
            raise BundleError(f"{archive}: more than {MAX_MEMBERS} files (at member {member.name!r}): not a bundle")
        if total > MAX_ARCHIVE_BYTES:
            raise BundleError(f"{archive}: over {MAX_ARCHIVE_BYTES} bytes unpacked (at member {member.name!r}): not a bundle")
    return members


def _unpack_archive(archive: Path) -> Path:
    """Unpack a .pedal archive into a private temp dir, one checked member at a time.

    Not ``extractall(filter="data")``: that argument arrived in Python 3.11.4, and the box runs
    Raspberry Pi OS bookworm's 3.11.2. Any failure removes the temp dir and raises BundleError."""
    try:
        dest = Path(tempfile.mkdtemp(prefix="pedal-bundle-"))
    except OSError as e:
        raise BundleError(f"{archive}: no temporary directory to unpack it into ({e})") from None
    done = False
    try:
        with tarfile.open(archive, "r:*") as tar:
            for name, member in _checked_members(archive, tar).items():
                with tar.extractfile(member) as src, open(dest / name, "xb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(dest / name, 0o644)
        done = True
    except BundleError:
        raise
    except Exception as e:  # a damaged archive: tarfile, gzip/zlib, bz2, lzma, EOF or OS errors
        raise BundleError(f"{archive}: not a readable bundle archive ({type(e).__name__}: {e})") from None
    finally:
        if not done:
            shutil.rmtree(dest, ignore_errors=True)
    return dest


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle (directory or .pedal archive). Raises BundleError naming the fault."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    if not path.is_file():
        return _verified(path, path)
    root = _unpack_archive(path)
    try:
        bundle = _verified(root, path)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # a refused archive leaves nothing behind
        raise
    atexit.register(shutil.rmtree, root, True)  # the interpreter has the model mapped by then
    return bundle


def _verified(root: Path, path: Path) -> Bundle:
    """The bundle whose files are in ``root`` (``path`` is what was loaded, for messages)."""
    man_path = root / MANIFEST
    if not man_path.is_file():
        raise BundleError(f"{path}: missing {MANIFEST}")
    try:
        data = json.loads(man_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}/{MANIFEST}: not valid JSON ({e})") from None
    man = Manifest.from_dict(data, f"{path}/{MANIFEST}")
    needed = {e.file for e in man.models.values()} | {man.golden.get("file", "")}
    for f in sorted(needed - set(man.files)):
        raise BundleError(f"{path}/{MANIFEST}: file {f!r} is used but has no checksum in 'files'")
    for name, digest in man.files.items():
        fp = root / name
        if not fp.is_file():
            raise BundleError(f"{path}: missing file {name!r}")
        actual = sha256_file(fp)
        if actual != digest:
            raise BundleError(f"{path}: checksum mismatch for {name!r} (manifest {digest[:12]}..., file {actual[:12]}...)")
    return Bundle(root=root, manifest=man, source=path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bundle(dest: str | os.PathLike, manifest: Manifest, files: dict[str, Path], archive: bool = True) -> Path:
    """Write a bundle atomically and durably: files are copied into a temp dir beside ``dest``,
    checksummed into the manifest, fsynced, and the dir is renamed into place (never a
    half-written bundle, even across a power cut). With ``archive`` a ``dest.pedal`` tar file is
    written the same way (device/atomic.py). Returns the directory."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        manifest.files = {}
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
            manifest.files[name] = sha256_file(tmp / name)
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        Manifest.from_dict(json.loads((tmp / MANIFEST).read_text()))  # what we write, we can read
        for f in tmp.iterdir():
            _fsync_file(f)
        fsync_dir(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if archive:
        with atomic_path(dest.with_suffix(ARCHIVE_SUFFIX), mode=0o644) as tmp_arc:
            with tarfile.open(tmp_arc, "w") as tar:
                for f in sorted(p.name for p in dest.iterdir()):
                    tar.add(dest / f, arcname=f)
    return dest
