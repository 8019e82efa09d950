"""What makes a captured pass good: checks on one recording of the capture signal.

First a short reference pass, with the pedal bypassed (or a cable from the box's output straight to
its input): the sync clicks come back unchanged, so their lag is the chain's latency (the box's
round trip, the converters, a digital pedal's buffer), exactly; their level is the box's output
-> input gain; the silence after them is the interface's own noise floor. Every target is
aligned by that one latency, so what a pedal does to timing at each setting (a tone control's
group delay, an echo) stays in the data for the model to learn.

``check_pass(signal, recording, ...)`` then measures each pass, on the pedal's return
(``recording``, on the same clock as what the box played):

- latency: the sync clicks at the start and at the end, found by cross-correlation with what was
  played. Both must be found (a pass with no clicks back is silent or cut off) and agree with each
  other (else the return slipped during the pass: a dropout, or a pedal with its own clock
  drifting). Their lag may differ from the reference by the pedal's own delay at this setting
  (a filter's group delay: up to ~0.5 ms through the catalogue's drive, fuzz and amp), but not
  by more than ``max_latency_shift_ms``: a period slipped in the box, a buffer setting changed;
- clipping: samples at full scale in the return: the box's input (or the pedal) clipped;
- silence: the return's peak over the program material;
- noise floor: the RMS of the return in the silent stretch after the start clicks;
- drift: the two plays of the repeated section, compared sample for sample: their difference
  (below the section's level, dB) holds the noise and anything that changed during the pass (a
  warming valve, a battery sagging, a knob knocked); their level difference is reported beside
  it. A modulation pedal (chorus, phaser, tremolo) differs by design: raise
  ``max_repeat_diff_db`` for it; an echo or chorus without dry signal moves the clicks by its
  delay: raise ``max_latency_shift_ms``;
- xruns: the box was late and audio was lost.

A pass that fails any check is redone. Thresholds are ``Limits``; every figure goes into the
capture's progress file whatever the verdict.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .signal import CaptureSignal

CLIP_LEVEL = 0.999  # as training/recordings.py: a sample this close to full scale was clipped


@dataclass
class Limits:
    max_latency_ms: float = 500.0  # the box's buffers plus the pedal's own (a digital pedal: a few ms)
    latency_tolerance: int = 2  # samples: start and end clicks of one pass (one setting) agree this well
    max_latency_shift_ms: float = 1.0  # a pass's clicks vs the reference: the pedal's own delay may move them
    min_click_correlation: float = 0.1  # a fuzz turns a click into a square burst; it still correlates
    min_reference_correlation: float = 0.9  # bypassed or a cable: the clicks come back as they went
    silence_dbfs: float = -60.0  # program peak below this: nothing came back
    max_clipped: int = 0  # samples at full scale allowed
    max_noise_dbfs: float = -40.0  # RMS of the return with nothing playing
    max_repeat_diff_db: float = -20.0  # difference of the two repeats, dB below their level

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClickLatency:
    samples: int
    correlation: float  # normalised, -1..1 (negative: the pedal inverts polarity)
    margin: float  # |peak| over the best |correlation| more than 1 ms away


def click_latency(played: np.ndarray, recording: np.ndarray, start: int, max_lag: int,
                  sample_rate: int) -> ClickLatency:
    """The lag (0..max_lag) at which ``recording`` holds ``played`` (the clicks, which begin at
    ``start`` on both clocks), by FFT cross-correlation normalised per lag."""
    x = np.asarray(played, np.float64)
    w = len(x)
    seg = np.zeros(w + max_lag)
    got = np.asarray(recording[start:start + w + max_lag], np.float64)
    seg[:len(got)] = got
    nfft = 1 << int(np.ceil(np.log2(len(seg) + w)))
    c = np.fft.irfft(np.fft.rfft(seg, nfft) * np.conj(np.fft.rfft(x, nfft)), nfft)[:max_lag + 1]
    e = np.concatenate([[0.0], np.cumsum(seg ** 2)])
    norm = np.sqrt((x ** 2).sum() * (e[w:w + max_lag + 1] - e[:max_lag + 1])) + 1e-20
    rho = c / norm
    rho[(e[w:w + max_lag + 1] - e[:max_lag + 1]) < 1e-12] = 0.0  # silence correlates with nothing
    k = int(np.argmax(np.abs(rho)))
    guard = max(1, sample_rate // 1000)
    far = np.abs(rho)
    far[max(0, k - guard):k + guard + 1] = 0.0
    rest = float(far.max()) if far.size else 0.0
    peak = float(abs(rho[k]))
    return ClickLatency(k, float(rho[k]), peak / rest if rest > 0 else float("inf"))


def db(ratio: float) -> float:
    return float(20 * np.log10(ratio)) if ratio > 0 else float("-inf")


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))) if len(x) else 0.0


@dataclass
class PassCheck:
    latency_samples: int | None = None  # where the start clicks came back: the chain's latency + the pedal's delay
    latency_end_samples: int | None = None  # ... and the end clicks
    click_correlation: float = 0.0
    peak_dbfs: float = float("-inf")
    clipped: int = 0
    noise_dbfs: float = float("-inf")
    program_rms_dbfs: float = float("-inf")
    repeat_diff_db: float = float("inf")
    repeat_level_db: float = 0.0
    xruns: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return {k: (round(v, 3) if isinstance(v, float) and np.isfinite(v) else v if not isinstance(v, float)
                    else str(v)) for k, v in d.items()}

    def summary(self, reference_latency: int | None) -> str:
        lat = ("clicks ?" if self.latency_samples is None else f"clicks at {self.latency_samples} samples"
               + (f" ({self.latency_samples - reference_latency:+d} on the reference)" if reference_latency is not None
                  else ""))
        return (f"{lat}, peak {self.peak_dbfs:.1f} dBFS, noise floor {self.noise_dbfs:.1f} dBFS, "
                f"repeats differ by {self.repeat_diff_db:.1f} dB (level {self.repeat_level_db:+.2f} dB), "
                f"{self.clipped} clipped, {self.xruns} xruns")


def _noise_window(sig: CaptureSignal, lat: int) -> slice:
    """The last second (at most 60%) of the quiet stretch after the start clicks, as it came back."""
    a, b = sig.regions["quiet"]
    n = int(min(sig.sample_rate, 0.6 * (b - a)))
    return slice(b - n + lat, b + lat)


@dataclass
class ReferenceCheck:
    latency_samples: int | None = None
    correlation: float = 0.0
    gain_db: float = 0.0  # what came back over what went out (the box's output -> input, and a bypass)
    noise_dbfs: float = float("-inf")
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return PassCheck.to_dict(self)  # same rounding

    def summary(self, sample_rate: int, box_latency: int) -> str:
        if self.latency_samples is None:
            return "no clicks came back"
        return (f"latency {self.latency_samples} samples ({1000 * self.latency_samples / sample_rate:.2f} ms; "
                f"{self.latency_samples - box_latency:+d} beyond the box's buffers), clicks correlate "
                f"{self.correlation:.3f}, gain {self.gain_db:+.2f} dB, noise floor {self.noise_dbfs:.1f} dBFS")


def check_reference(sig: CaptureSignal, recording: np.ndarray, level: float, limits: Limits,
                    xruns: int = 0) -> ReferenceCheck:
    """The reference pass: ``recording`` of ``sig.reference()`` played at ``level``, pedal bypassed."""
    sr, r = sig.sample_rate, sig.regions
    out = ReferenceCheck()
    p = out.problems
    if xruns:
        p.append(f"{xruns} xrun(s): audio was lost (is the daemon still running? sudo systemctl stop pedal)")
    rec = np.asarray(recording, np.float64)
    clipped = int(np.count_nonzero(np.abs(rec) >= CLIP_LEVEL))
    if clipped:
        p.append(f"clipping: {clipped} samples at full scale: turn the box's input gain down or play quieter "
                 "(--level-db)")
    played = sig.audio[r["clicks_a"][0]:r["clicks_a"][1]] * level
    c = click_latency(played, rec, r["clicks_a"][0], int(limits.max_latency_ms * sr / 1000), sr)
    out.correlation = abs(c.correlation)
    if out.correlation < limits.min_reference_correlation:
        p.append(f"latency: the clicks came back changed (correlation {c.correlation:.2f} < "
                 f"{limits.min_reference_correlation}): is the pedal bypassed (or a cable from the box's output "
                 "to its input)? Silent, or too noisy?")
        return out
    out.latency_samples = c.samples
    back = rec[r["clicks_a"][0] + c.samples:r["clicks_a"][1] + c.samples]
    out.gain_db = db(rms(back) / rms(played))
    out.noise_dbfs = db(rms(rec[_noise_window(sig, c.samples)]))
    if out.noise_dbfs > limits.max_noise_dbfs:
        p.append(f"noise floor {out.noise_dbfs:.1f} dBFS (> {limits.max_noise_dbfs:.0f}) with nothing playing: hum "
                 "or hiss in the cables or the interface (a ground loop?)")
    return out


def early_stop(sig: CaptureSignal, limits: Limits):
    """For ``play_and_record``: a pass that clips, or is still silent once the first repeat should
    have come back, is bad already; stop it rather than play the rest (most of a minute)."""
    silent_by = sig.regions["repeat_a"][1] + int(limits.max_latency_ms * sig.sample_rate / 1000)
    state = {"checked": 0}

    def bad(recording: np.ndarray, frames: int) -> bool:
        new = recording[state["checked"]:frames]
        state["checked"] = frames
        if np.count_nonzero(np.abs(new) >= CLIP_LEVEL) > limits.max_clipped:
            return True
        return frames >= silent_by and db(float(np.abs(recording[:frames]).max())) < limits.silence_dbfs

    return bad


def _clipping(out: PassCheck) -> str:
    return (f"clipping: {out.clipped} samples at full scale (peak {out.peak_dbfs:+.1f} dBFS): turn the pedal's "
            "output down, or the box's input gain, or play quieter (--level-db)")


def _silence(peak_dbfs: float, limits: Limits) -> str:
    return (f"silence: the return peaks at {peak_dbfs:.1f} dBFS (< {limits.silence_dbfs:.0f}): is the pedal on, "
            "its cables in (box out -> pedal in, pedal out -> box in), its level up?")


def check_pass(sig: CaptureSignal, recording: np.ndarray, level: float, limits: Limits,
               reference_latency: int | None, xruns: int = 0, frames: int | None = None) -> PassCheck:
    """Every check on one pass. ``level``: the gain the signal was played at; ``reference_latency``:
    the chain's latency from the reference pass; ``frames``: how much was recorded when the pass
    was stopped early (``early_stop``): then only the clipping and silence found so far are said."""
    sr, r = sig.sample_rate, sig.regions
    out = PassCheck(xruns=xruns)
    p = out.problems
    if xruns:  # the recording stops at the xrun: nothing else in it can be judged
        p.append(f"{xruns} xrun(s) during the pass: the box was late and audio was lost (is the daemon still "
                 "running? sudo systemctl stop pedal)")
        return out
    if frames is not None and frames < len(recording):  # stopped early: clipping or silence
        rec = np.asarray(recording[:frames], np.float64)
        out.peak_dbfs = db(float(np.abs(rec).max()) if len(rec) else 0.0)
        out.clipped = int(np.count_nonzero(np.abs(rec) >= CLIP_LEVEL))
        if out.clipped > limits.max_clipped:
            p.append(_clipping(out))
        else:
            p.append(_silence(out.peak_dbfs, limits))
        p[-1] += f" (stopped after {frames / sr:.1f} s)"
        return out
    max_lag = int(limits.max_latency_ms * sr / 1000)
    played = sig.audio * level
    a = click_latency(played[r["clicks_a"][0]:r["clicks_a"][1]], recording, r["clicks_a"][0], max_lag, sr)
    b = click_latency(played[r["clicks_b"][0]:r["clicks_b"][1]], recording, r["clicks_b"][0], max_lag, sr)
    out.click_correlation = min(abs(a.correlation), abs(b.correlation))
    rec = np.asarray(recording, np.float64)
    out.peak_dbfs = db(float(np.abs(rec).max()) if len(rec) else 0.0)
    out.clipped = int(np.count_nonzero(np.abs(rec) >= CLIP_LEVEL))
    if out.clipped > limits.max_clipped:
        p.append(_clipping(out))
    found = [abs(x.correlation) >= limits.min_click_correlation for x in (a, b)]
    lat = a.samples if found[0] else b.samples if found[1] else None
    if reference_latency is not None and lat is not None:
        lat = reference_latency  # align as the targets are (a tone control's delay moves the clicks a little)
    out.latency_samples = a.samples if found[0] else None
    out.latency_end_samples = b.samples if found[1] else None
    prog = rec[r["repeat_a"][0] + (lat or 0):r["test"][1] + (lat or 0)]
    prog_peak = float(np.abs(prog).max()) if len(prog) else 0.0
    out.program_rms_dbfs = db(rms(prog))
    if db(prog_peak) < limits.silence_dbfs:
        p.append(_silence(db(prog_peak), limits))
        return out
    if not all(found):
        which = " and ".join(w for w, f in zip(("start", "end"), found) if not f)
        p.append(f"latency: the sync clicks at the {which} did not come back (correlation "
                 f"{a.correlation:.2f} / {b.correlation:.2f} < {limits.min_click_correlation}): the return was cut "
                 "off, or is too noisy")
    elif abs(a.samples - b.samples) > limits.latency_tolerance:
        p.append(f"latency moved during the pass: {a.samples} samples at the start, {b.samples} at the end "
                 "(a dropout, a pedal clock drifting, a knob moved)")
    elif reference_latency is not None and abs(a.samples - reference_latency) > limits.max_latency_shift_ms * sr / 1000:
        p.append(f"latency changed: {a.samples} samples, the reference is {reference_latency} (more than "
                 f"{limits.max_latency_shift_ms:g} ms apart): something in the chain changed (a buffer setting, a "
                 "cable into another input), or the pedal delays everything (an echo or chorus with no dry signal: "
                 "raise --max-latency-shift-ms)")
    out.noise_dbfs = db(rms(rec[_noise_window(sig, lat or 0)]))
    if out.noise_dbfs > limits.max_noise_dbfs:
        p.append(f"noise floor {out.noise_dbfs:.1f} dBFS (> {limits.max_noise_dbfs:.0f}) with nothing playing: hum "
                 "or hiss (a ground loop, a cable near a power supply), or the pedal self-oscillates here")
    if lat is not None:
        ra = rec[r["repeat_a"][0] + lat:r["repeat_a"][1] + lat]
        rb = rec[r["repeat_b"][0] + lat:r["repeat_b"][1] + lat]
        m = min(len(ra), len(rb))
        if m:
            ra, rb = ra[:m], rb[:m]
            out.repeat_diff_db = 10 * float(np.log10((np.sum((rb - ra) ** 2) + 1e-30) / (np.sum(ra ** 2) + 1e-30)))
            out.repeat_level_db = db(rms(rb) / rms(ra)) if rms(ra) > 0 else 0.0
            if out.repeat_diff_db > limits.max_repeat_diff_db:
                p.append(f"drift: the two plays of the repeated section differ by {out.repeat_diff_db:.1f} dB against "
                         f"its level (> {limits.max_repeat_diff_db:.0f} dB; level {out.repeat_level_db:+.2f} dB): the pedal "
                         "changed during the pass (a knob knocked, a battery sagging); for a modulation pedal "
                         "raise --max-repeat-diff-db")
    return out
