"""Checks on recordings: what real input/output captures through hardware get wrong.

Every problem is a ``Problem`` (an error or a warning) that names the file and the value, e.g.

    Train/target_7_comp4__-20__4__10__100.wav: 312 samples clipped at |x| >= 0.999 (peak +0.4 dBFS)

Errors make a pair unusable (the loader stops with all of them listed); warnings are worth
knowing (the loader prints them once). Checked per file: channels, sample rate, NaN/Inf,
silence, clipping, DC offset; per pair: length mismatch and the latency of the target behind its
input, estimated by FFT cross-correlation with a confidence measure, and optionally compensated.

    python -m training.recordings DIR [--latency] [--max-latency-ms 50]

prints the report of a dataset directory (any form ``training.data.read_dataset`` reads).
"""
from __future__ import annotations

import argparse
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

# Thresholds. Levels are of float samples where full scale is 1.0.
CLIP_LEVEL = 0.999  # a sample this close to full scale was (or will be) clipped by a converter
SILENCE_PEAK_DBFS = -80.0  # a file whose loudest sample is below this holds nothing to learn
DC_WARN = 0.01  # |mean| above -40 dBFS, and above half that in every eighth of the file: a DC offset
LATENCY_TOLERANCE = 2  # samples: estimates this close count as the same latency (a fast compressor on a
#                        bass note shifts the correlation peak by a sample or two; no interface is that fast)
LATENCY_MIN_CORRELATION = 0.5  # a latency estimate counts when input and shifted target correlate at least this well
LATENCY_MIN_MARGIN = 1.05  # ... and its peak stands 5% above any other lag more than 1 ms away (a plucked
#                           note correlates with itself one period on: its margin is ~1.1)
LATENCY_WINDOW = 1 << 16  # samples of the input (its loudest stretch) correlated with the target


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    file: str  # the file, relative to the dataset root where there is one
    message: str  # what is wrong, with the value

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


class RecordingError(ValueError):
    """Raised when recordings have errors; lists every one of them."""

    def __init__(self, problems: list[Problem], limit: int = 30):
        self.problems = problems
        lines = [str(p) for p in problems[:limit]]
        if len(problems) > limit:
            lines.append(f"... and {len(problems) - limit} more errors (python -m training.recordings lists them all)")
        super().__init__("\n".join(lines))


def dbfs(v: float) -> str:
    return f"{20 * np.log10(v):+.1f} dBFS" if v > 0 else "-inf dBFS"


# --- reading -------------------------------------------------------------------------------------
def _float32_wav_layout(path: Path):
    """(data offset, frames, channels) when ``path`` is a little-endian IEEE float32 WAV whose samples
    can be memory-mapped as they are, else None."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        fmt = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                body = f.read(size + (size & 1))
                tag, channels, _, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's first two bytes
                    tag = struct.unpack("<H", body[24:26])[0]
                fmt = (tag, channels, bits)
            elif cid == b"data":
                if fmt is None or fmt[0] != 3 or fmt[2] != 32:
                    return None
                return f.tell(), size // (4 * fmt[1]), fmt[1]
            else:
                f.seek(size + (size & 1), 1)


def read_audio(path: Path, mmap: bool = False) -> tuple[np.ndarray, int]:
    """(samples (frames, channels) float32, sample rate) of any file soundfile reads. With ``mmap``,
    float32 WAV files are memory-mapped (read-only, paged in on use) rather than read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    if mmap:
        layout = _float32_wav_layout(path)
        if layout is not None:
            offset, frames, channels = layout
            sr = sf.info(str(path)).samplerate
            if frames == 0:
                return np.zeros((0, channels), np.float32), sr
            return np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(frames, channels)), sr
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable audio file ({e})") from None
    return x, sr


# --- checks on one signal ------------------------------------------------------------------------
def check_signal(x: np.ndarray, file: str, role: str = "audio", block: int = 1 << 20) -> list[Problem]:
    """NaN/Inf, silence, clipping and DC offset of one mono signal (``role``: "input"/"target").
    Reads ``x`` in blocks, so a memory-mapped hour costs no more memory than a second."""
    problems = []
    if len(x) == 0:
        return [Problem("error", file, f"{role} is empty (0 samples)")]
    n_bad, first_bad, peak, n_clip, total = 0, -1, 0.0, 0, 0.0
    eighth = -(-len(x) // 8)
    block = max(1, min(block, eighth))  # at least 8 blocks: a DC offset is one that every block shares
    block_means = []
    for s in range(0, len(x), block):
        b = np.asarray(x[s:s + block], np.float32)
        bad = ~np.isfinite(b)
        if bad.any():
            if first_bad < 0:
                first_bad = s + int(np.argmax(bad))
            n_bad += int(bad.sum())
            b = np.where(bad, np.float32(0), b)
        a = np.abs(b)
        peak = max(peak, float(a.max()))
        n_clip += int(np.count_nonzero(a >= CLIP_LEVEL))
        total += float(b.sum(dtype=np.float64))
        block_means.append(float(b.mean(dtype=np.float64)))
    if n_bad:
        problems.append(Problem("error", file, f"{n_bad} NaN/Inf samples (first at sample {first_bad})"))
    if peak < 10 ** (SILENCE_PEAK_DBFS / 20):
        problems.append(Problem("error", file, f"{role} is silent: peak {dbfs(peak)} < {SILENCE_PEAK_DBFS:.0f} dBFS"))
        return problems
    if n_clip:
        problems.append(Problem("warning", file, f"{n_clip} samples clipped at |x| >= {CLIP_LEVEL} (peak {dbfs(peak)})"))
    dc = total / len(x)
    steady = all(m * np.sign(dc) > DC_WARN / 2 for m in block_means)  # not a note's wandering mean
    if abs(dc) > DC_WARN and steady:
        problems.append(Problem("warning", file, f"DC offset {dc:+.4f} ({dbfs(abs(dc))}); high-pass the {role} "
                                                 f"(e.g. 10 Hz) or the model learns the offset"))
    return problems


# --- latency -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Latency:
    samples: int  # > 0: the target lags its input (what hardware does); < 0: the target leads
    correlation: float  # normalised cross-correlation at that lag, -1..1 (negative: polarity inverted)
    margin: float  # |peak| over the best |correlation| more than 1 ms away: > 1 means a clear peak

    @property
    def confident(self) -> bool:
        return abs(self.correlation) >= LATENCY_MIN_CORRELATION and self.margin >= LATENCY_MIN_MARGIN

    def describe(self, sample_rate: int) -> str:
        ms = 1000.0 * self.samples / sample_rate
        return f"{self.samples} samples ({ms:.2f} ms; correlation {self.correlation:.2f}, peak margin {self.margin:.2f})"


def estimate_latency(x: np.ndarray, y: np.ndarray, max_lag: int, window: int = LATENCY_WINDOW,
                     sample_rate: int = 48000) -> Latency:
    """The lag (in samples, |lag| <= max_lag) at which ``y`` best matches ``x`` delayed, by FFT
    cross-correlation of the loudest ``window`` samples of ``x`` against ``y`` around them,
    normalised per lag by both segments' energies (so it is a correlation coefficient)."""
    x = np.nan_to_num(np.asarray(x, np.float64))
    y = np.nan_to_num(np.asarray(y, np.float64))
    n = min(len(x), len(y))
    w = min(window, n)
    if w < 16:
        return Latency(0, 0.0, 0.0)
    # the loudest stretch of the input, so the correlation is not made of noise floor
    e = np.concatenate([[0.0], np.cumsum(x[:n] ** 2)])
    s = int(np.argmax(e[w:] - e[:-w])) if n > w else 0
    xs = x[s:s + w]
    # y[s - max_lag : s + w + max_lag], zero-padded outside the file
    lo, hi = s - max_lag, s + w + max_lag
    ys = np.zeros(hi - lo)
    a, b = max(lo, 0), min(hi, len(y))
    ys[a - lo:b - lo] = y[a:b]
    nfft = 1 << int(np.ceil(np.log2(len(ys) + w)))
    c = np.fft.irfft(np.fft.rfft(ys, nfft) * np.conj(np.fft.rfft(xs, nfft)), nfft)[:2 * max_lag + 1]
    # c[k] = sum_t ys[t + k] * xs[t], lag = k - max_lag
    ey = np.concatenate([[0.0], np.cumsum(ys ** 2)])
    norm = np.sqrt((xs ** 2).sum() * (ey[w:w + 2 * max_lag + 1] - ey[:2 * max_lag + 1])) + 1e-20
    rho = c / norm
    k = int(np.argmax(np.abs(rho)))
    guard = max(1, sample_rate // 1000)
    far = np.abs(rho).copy()
    far[max(0, k - guard):k + guard + 1] = 0.0
    rest = float(far.max()) if far.size else 0.0
    peak = float(abs(rho[k]))
    return Latency(k - max_lag, float(rho[k]), peak / rest if rest > 0 else float("inf"))


# --- checks on one pair --------------------------------------------------------------------------
class _Problems:
    """``errors`` and ``warnings`` of a ``problems`` list."""
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]


@dataclass
class PairCheck(_Problems):
    problems: list[Problem] = field(default_factory=list)
    latency: Latency | None = None
    x: np.ndarray | None = None  # mono input, when usable
    y: np.ndarray | None = None  # mono target, when usable


def check_pair(x: np.ndarray, sr_x: int, y: np.ndarray, sr_y: int, input_name: str, target_name: str,
               sample_rate: int | None = None, latency_max_lag: int | None = None) -> PairCheck:
    """Checks on an (input, target) pair read as (frames, channels) arrays. ``sample_rate``: the
    dataset's rate both must have; ``latency_max_lag``: estimate latency up to that many samples
    (None: don't)."""
    out = PairCheck()
    p = out.problems
    for arr, sr, name, role in ((x, sr_x, input_name, "input"), (y, sr_y, target_name, "target")):
        if arr.ndim == 2 and arr.shape[1] != 1:
            p.append(Problem("error", name, f"{arr.shape[1]} channels, expected mono (mix down or pick one channel)"))
        if sample_rate is not None and sr != sample_rate:
            p.append(Problem("error", name, f"sample rate {sr} Hz, the dataset is {sample_rate} Hz"))
    if sr_x != sr_y and sample_rate is None:  # with a dataset rate, each file was compared with it
        p.append(Problem("error", target_name, f"sample rate {sr_y} Hz, its input {input_name} has {sr_x} Hz"))
    if len(x) != len(y):
        p.append(Problem("error", target_name, f"{len(y)} samples, its input {input_name} has {len(x)} "
                                               f"(difference {len(y) - len(x):+d}); trim both to the same length"))
    mono_x = x[:, 0] if x.ndim == 2 else x
    mono_y = y[:, 0] if y.ndim == 2 else y
    p += check_signal(mono_x, input_name, "input")
    p += check_signal(mono_y, target_name, "target")
    if not out.errors:
        out.x, out.y = mono_x, mono_y
        if latency_max_lag:
            out.latency = estimate_latency(mono_x, mono_y, latency_max_lag, sample_rate=sr_x)
            if out.latency.confident and abs(out.latency.samples) > LATENCY_TOLERANCE:
                p.append(Problem("warning", target_name, ("lags" if out.latency.samples > 0 else "leads")
                                 + f" its input by {out.latency.describe(sr_x)}"))
            if out.latency.confident and out.latency.correlation < 0:
                p.append(Problem("warning", target_name, f"polarity inverted against its input "
                                                         f"(correlation {out.latency.correlation:.2f})"))
    return out


def constant_latency(latencies: list[Latency | None]) -> int | None:
    """The dataset's constant latency: the median of the confident estimates (None if there are none)."""
    lags = [lat.samples for lat in latencies if lat is not None and lat.confident]
    return int(np.median(lags)) if lags else None


def latency_summary(latencies: dict[str, Latency | None], sample_rate: int) -> list[str]:
    """Lines on a dataset's latency: its constant value, and the pairs that disagree (warnings)."""
    n = len(latencies)
    const = constant_latency(list(latencies.values()))
    if const is None:
        return [f"latency: no confident estimate in {n} pairs (effects that smear time, e.g. an echo, hide it)"]
    agree = [f for f, lat in latencies.items() if lat is not None and lat.confident
             and abs(lat.samples - const) <= LATENCY_TOLERANCE]
    differ = [(f, lat) for f, lat in latencies.items() if lat is not None and lat.confident
              and abs(lat.samples - const) > LATENCY_TOLERANCE]
    lines = [f"latency: {const} samples ({1000 * const / sample_rate:.2f} ms) in {len(agree)} of {n} pairs "
             f"(within +-{LATENCY_TOLERANCE}), {n - len(agree) - len(differ)} without a confident estimate"
             + ("; compensate with PairSet(..., compensate_latency=True)" if abs(const) > LATENCY_TOLERANCE else "")]
    lines += [f"warning: {f}: latency {lat.samples} samples differs from the dataset's {const}" for f, lat in differ]
    return lines


def align(x: np.ndarray, y: np.ndarray, latency: int) -> tuple[np.ndarray, np.ndarray]:
    """Compensate a latency: shift the target earlier by ``latency`` samples (later if negative),
    trimming both to the overlap, so that y[n] answers x[n]."""
    if latency > 0:
        return x[:len(x) - latency], y[latency:]
    if latency < 0:
        return x[-latency:], y[:len(y) + latency]
    return x, y


# --- a whole dataset -----------------------------------------------------------------------------
@dataclass
class Report(_Problems):
    root: Path
    problems: list[Problem]
    latencies: dict[str, Latency]  # target file -> estimate
    n_pairs: int
    sample_rate: int

    def lines(self) -> list[str]:
        out = [f"{p.level}: {p}" for p in self.problems]
        if self.latencies:
            out += latency_summary(self.latencies, self.sample_rate)
        out.append(f"{self.root}: {self.n_pairs} pairs at {self.sample_rate} Hz, "
                   f"{len(self.errors)} errors, {len(self.warnings)} warnings")
        return out


def check_dataset(root: Path, latency: bool | None = None, max_latency_ms: float = 50.0, effect=None,
                  knobs=None) -> Report:
    """Check every pair of a dataset directory. ``latency``: estimate it (None: only where the
    dataset does not declare it, i.e. user recordings and SignalTrain folders)."""
    from .data import read_dataset  # data imports this module for its checks

    root = Path(root)
    info = read_dataset(root, effect, knobs)
    problems = list(info.problems)
    if latency is None:
        latency = info.latency_samples is None
    max_lag = int(max_latency_ms * info.sample_rate / 1000) if latency else None
    lats = {}
    for pair in info.pairs:
        x, sr_x = read_audio(pair.input, mmap=True)
        y, sr_y = read_audio(pair.target, mmap=True)
        res = check_pair(x, sr_x, y, sr_y, _rel(pair.input, root), _rel(pair.target, root), info.sample_rate, max_lag)
        problems += res.problems
        if res.latency is not None:
            lats[_rel(pair.target, root)] = res.latency
    return Report(root, problems, lats, len(info.pairs), info.sample_rate)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Check the recordings of a dataset directory and print a report.")
    ap.add_argument("root", type=Path)
    ap.add_argument("--latency", action=argparse.BooleanOptionalAction, default=None,
                    help="estimate input->target latency (default: only where the dataset does not declare it)")
    ap.add_argument("--max-latency-ms", type=float, default=50.0)
    ap.add_argument("--knobs", type=Path, help="knob specs (JSON/TOML) when the folder has none and the effect is not in the catalogue")
    a = ap.parse_args(argv)
    knobs = None
    if a.knobs is not None:
        from .data import read_knobs_file
        knobs = read_knobs_file(a.knobs)[1]
    try:
        report = check_dataset(a.root, a.latency, a.max_latency_ms, knobs=knobs)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
