"""Which parts a model needs, read from the data: never from an effect's name.

    python -m training.parts data/drive-demo      # prints the measurements and the choice

The model (training/model.py) always has the gain path; the other parts are switched on by
what the recorded pairs show, so a user's own compressor, drive or delay gets the right model:

- **delay lines** when the pairs' linear impulse responses (Wiener deconvolution of target by
  input, per pair at its fixed knob setting) hold a clear peak beyond the FIR's reach: an echo,
  a chorus's delayed voice, drums pushed back on the grid. The per-pair peak lags (to a
  fraction of a sample) are what the model's delay map is fitted to, by least squares over the
  pairs' knob settings (``SignalTrainPi.fit_delay_map``): a delay cannot be found by gradient
  descent from afar (the loss is flat except within a sample of the right one). The range of the
  lines (``delay_min``, ``delay_max``) spans the peaks found.
- **the nonlinear path (shaper)** when, within short frames, a linear filter of the input leaves
  much of the target unexplained (new harmonics: drive, fuzz, amps), after removing the
  long-lag part of the impulse response (so an echo does not count as nonlinear).
- **the FIR residual** unless one gain per frame explains the target (a compressor, a limiter:
  a time-varying gain, which learns fastest without it).

The measures are medians over up to ``max_pairs`` training pairs; thresholds are in
``THRESHOLDS`` with the values measured on the catalogue's effects in docs/model.md.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .lfo import HARMONICS, measure_set
from .model import float16_exact

THRESHOLDS = {
    "gain_only_residual": 0.01,  # per-frame best single gain leaves < 1% of the target: gain path only,
    "gain_vs_dry": 0.5,  # ... and < half of what the input itself misses (comp4 0.02; a de-noiser 1.0: its noise is no gain's)
    "nonlinear_residual": 0.012,  # per-frame 32-tap linear fit leaves > 1.2%: add the shaper (amp 0.0145, drive 0.014, timing_inv 0.005, echo 0.0016)
    "delay_peak": 0.25,  # a pair's far peak reaches >= 25% of its IR's largest tap: it has a delay
    "delay_pairs": 0.25,
    "delay_floor": 100.0,  # ... and stands 100x above the median far tap (echoes: 110-3000x; chorus, phaser: mostly 7-90x)  # ... in at least a quarter of the pairs: add delay lines
}
FRAME = 2048  # samples per frame of the local fits
MOD_ECHOES = 6  # passes through a swept delay that feeds back
LFO_PROBE_PAIRS = 64  # pairs whose tracks are read to see whether there is a swept delay at all (demo: 9 s
#                       for a drive; 32 missed the flanger's)
LFO_PAIRS = 128  # pairs the swept-delay measurement reads (chorus demo: 64 -> 128 halves the held-out sweep error; 2.5 min)
LOCAL_TAPS = 32  # the local linear fit's taps (the FIR residual's reach)


@dataclass
class PairMeasures:
    gain_residual: float  # per-frame single-gain fit: residual energy / target energy
    local_residual: float  # per-frame 32-tap fit of the target minus its long-lag part
    far_peak: float  # largest |IR| beyond the FIR's reach, relative to the largest |IR|
    far_lag: float  # its lag in samples
    dry_residual: float = 0.0  # the input itself as the target's estimate: residual energy / target energy


@dataclass
class Parts:
    fir_taps: int
    shaper_units: int
    delay_lines: int
    delay_min: int
    delay_max: int
    lookback_s: float | None  # a longer look-back the delays need (None: the default)
    measures: dict = field(default_factory=dict)
    pair_delays: dict = field(default_factory=dict)  # pair index -> measured delay in samples (training pairs)
    mod_lines: int = 0  # an LFO-swept delay (training/lfo.py found one)
    mod_max: int = 2048  # its longest delay, samples
    mod_echoes: int = 1  # passes through it (more than one: the pairs show feedback)
    lfo: object = None  # the LfoFit the model's swept delay is set from

    def model_overrides(self) -> dict:
        return {"fir_taps": self.fir_taps, "shaper_units": self.shaper_units, "delay_lines": self.delay_lines,
                "delay_min": self.delay_min, "delay_max": self.delay_max, "mod_lines": self.mod_lines,
                "mod_max": self.mod_max, "mod_harmonics": HARMONICS, "mod_echoes": self.mod_echoes}

    def summary(self) -> str:
        on = ["gain"] + [n for n, v in (("fir", self.fir_taps), ("shaper", self.shaper_units),
                                        ("delay", self.delay_lines), ("mod", self.mod_lines)) if v]
        m = self.measures
        text = (f"parts from the data: {' + '.join(on)} (gain-only residual {m['gain_residual']:.3f} vs the dry input's {m.get('dry_residual', float('nan')):.3f}, "
                f"local linear residual {m['local_residual']:.3f}, pairs with a far peak {m['delay_pairs']:.2f}")
        if self.delay_lines:
            text += f"; delays {self.delay_min}..{self.delay_max} samples"
        if self.lfo is not None:
            text += f"; {self.lfo.summary()}"
        return text + ")"


def impulse_response(x: np.ndarray, y: np.ndarray, max_lag: int) -> np.ndarray:
    """Least-squares linear impulse response of y from x (Wiener deconvolution), lags 0..max_lag-1."""
    n = 1 << int(np.ceil(np.log2(len(x) + max_lag)))
    X, Y = np.fft.rfft(x, n), np.fft.rfft(y, n)
    power = np.abs(X) ** 2
    h = np.fft.irfft(Y * np.conj(X) / (power + 1e-3 * power.mean() + 1e-12), n)
    return h[:max_lag]


def far_peak(h: np.ndarray, near: int) -> tuple[float, float]:
    """The largest tap beyond ``near`` -> (lag, its size relative to the IR's largest tap); 0 unless
    it stands out of the far taps' floor (a time-varying effect smears a noisy floor over every lag).
    The lag is to a fraction of a sample: the centroid of the peak and its two neighbours (a delay
    between samples spreads over the two taps it falls between, as linear interpolation does)."""
    far = np.abs(h[near:])
    if not len(far):
        return 0.0, 0.0
    top = float(far.max())
    if top < THRESHOLDS["delay_floor"] * float(np.median(far)):
        return 0.0, 0.0
    i = int(far.argmax())
    around = far[max(i - 1, 0): i + 2]
    lag = near + max(i - 1, 0) + float(np.arange(len(around)) @ around) / float(around.sum())
    return lag, top / (float(np.abs(h).max()) + 1e-12)


def measure_pair(x: np.ndarray, y: np.ndarray, max_lag: int, near: int) -> PairMeasures:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    h = impulse_response(x, y, max_lag)
    lag, peak = far_peak(h, near)
    h_far = h.copy()
    h_far[:near] = 0.0
    y_near = y - np.convolve(x, h_far)[: len(y)]  # the target without its long-lag (echo) part
    frames = len(x) // FRAME
    g_res = l_res = d_res = tot = 0.0
    for f in range(frames):
        s = slice(f * FRAME, (f + 1) * FRAME)
        xs, ys, yn = x[s], y[s], y_near[s]
        e = float(ys @ ys)
        if e < 1e-8 * FRAME:  # silence says nothing
            continue
        g = float(xs @ ys) / max(float(xs @ xs), 1e-12)
        g_res += float(((ys - g * xs) ** 2).sum())
        d_res += float(((ys - xs) ** 2).sum())
        start = f * FRAME
        past = np.lib.stride_tricks.sliding_window_view(np.pad(x, (LOCAL_TAPS - 1, 0)), LOCAL_TAPS)[start:start + FRAME]
        coef, *_ = np.linalg.lstsq(past, yn, rcond=None)
        l_res += float(((yn - past @ coef) ** 2).sum())
        tot += e
    tot = max(tot, 1e-12)
    return PairMeasures(g_res / tot, l_res / tot, peak, lag, d_res / tot)


def choose_parts(pairs_xy, sample_rate: int, hop: int = 64, max_delay_s: float = 1.0, log=None) -> Parts:
    """pairs_xy: list of (pair index, input, target) at fixed knobs -> the parts and their measures."""
    near = 2 * LOCAL_TAPS  # lags the FIR residual (and the frame's own timing) cover
    ms = {}
    for i, x, y in pairs_xy:
        n = min(len(x), len(y))
        max_lag = min(int(max_delay_s * sample_rate), n // 2)
        ms[i] = measure_pair(x[:n], y[:n], max_lag, near)
    if not ms:
        raise ValueError("no pairs to measure")
    g = float(np.median([m.gain_residual for m in ms.values()]))
    loc = float(np.median([m.local_residual for m in ms.values()]))
    dry = float(np.median([m.dry_residual for m in ms.values()]))
    delayed = {i: m.far_lag for i, m in ms.items() if m.far_peak >= THRESHOLDS["delay_peak"]}
    share = len(delayed) / len(ms)
    measures = {"gain_residual": g, "local_residual": loc, "dry_residual": dry, "delay_pairs": share,
                "pairs_measured": len(ms)}
    # a gain alone when it explains the target and most of what sets it apart from the input (a
    # de-noiser's target differs from its input by a little noise, which no gain removes)
    # (to 1e-4, -40 dB, a gain is enough whatever the input misses: a compressor mostly below threshold)
    fir = 0 if g < THRESHOLDS["gain_only_residual"] and g < max(THRESHOLDS["gain_vs_dry"] * dry, 1e-4) else 32
    shaper = 8 if loc > THRESHOLDS["nonlinear_residual"] else 0
    lines, dmin, dmax, lookback = 0, 129, 24129, None
    if share >= THRESHOLDS["delay_pairs"]:
        lags = np.array(sorted(delayed.values()))
        lines = 1
        # the shortest delay found less a quarter, but more than a hop (the streaming step reads the
        # past only; the offline form recurses in blocks of delay_min - 1 samples: the longer, the
        # faster); the longest, with a quarter to spare for settings between the recorded ones
        dmin = float16_exact(int(max(hop + 1, min(0.75 * lags.min(), 4096))))
        span = int(max(hop, min(1.25 * lags.max(), max_delay_s * sample_rate) - dmin))
        dmax = dmin + float16_exact(span + (1 << max(0, span.bit_length() - 11)))  # exact in a float16 bundle
        lookback = float(min(1.5, max(0.5, 2.0 * dmax / sample_rate)))  # two repeats of the longest echo
        measures["delay_lags"] = [round(float(v), 1) for v in (lags.min(), np.median(lags), lags.max())]
    parts = Parts(fir, shaper, lines, dmin, dmax, lookback, measures, delayed if lines else {})
    if log:
        log(parts.summary())
    return parts


def parts_for(train_set, max_pairs: int = 48, seed: int = 0, hop: int = 64, log=None) -> Parts:
    """The parts for a PairSet (its pairs are at fixed knob settings), from up to ``max_pairs``
    pairs; every pair's delay is measured so that the training loop can teach each one."""
    rng = np.random.default_rng(seed)
    idx = list(range(len(train_set.pairs)))
    chosen = sorted(rng.choice(idx, min(max_pairs, len(idx)), replace=False).tolist())
    parts = choose_parts([(i, train_set.x[i], train_set.y[i]) for i in chosen], train_set.sample_rate, hop)
    if parts.fir_taps and not parts.delay_lines:
        # a swept delay (chorus, flanger, vibrato) shows as a linear residual the FIR cannot reach
        # and no fixed far peak: look for an LFO on a few pairs' tracks (training/lfo.py; seconds), and
        # measure it on many, refined against their audio, when there is one (minutes)
        lfo = measure_set(train_set, max_pairs=LFO_PROBE_PAIRS, seed=seed, refinements=1, audio_refine=False)
        if lfo.modulated:
            lfo = measure_set(train_set, max_pairs=LFO_PAIRS, seed=seed)
            if not lfo.modulated:  # a second chance on the probe's pairs when more pairs are refused (added for the
                #                        flanger demo's seed 2, 3.6% rms; since the rate map's trimmed start its 128
                #                        pairs pass and no demo reaches this line)
                lfo = measure_set(train_set, max_pairs=LFO_PROBE_PAIRS, seed=seed)
        parts.measures["lfo"] = {"modulated": lfo.modulated, "reason": lfo.reason,
                                 **{k: v for k, v in lfo.measures.items() if not isinstance(v, list)}}
        if lfo.modulated:
            parts.mod_lines, parts.lfo = 1, lfo
            # the swept delay is what no 32-tap filter explains: the local linear residual measured
            # it, not a nonlinearity (chorus on the demo tier: 0.20, against a drive's 0.014)
            parts.shaper_units = 0
            # fed back (a flanger): its repeats unrolled, each a pass further back (flanger demo: a second
            # pass removes 61% of what one leaves, chorus 0.4%); 6 passes leave 0.85^12 = 14% of the
            # regeneration's energy at the catalogue's highest feedback, 1% at 0.55
            parts.mod_echoes = MOD_ECHOES if lfo.feedback else 1
            reach = parts.mod_echoes * (float(lfo.measures["delay_range"][1]) + 1)
            parts.mod_max = float16_exact(int(min(max(1.25 * reach + 4, 64), 8192)))
    if parts.delay_lines:  # teach every pair's delay, not only the measured sample's
        near = 2 * LOCAL_TAPS
        for i in idx:
            if i in parts.pair_delays or i in chosen:
                continue
            x, y = train_set.x[i], train_set.y[i]
            n = min(len(x), len(y))
            h = impulse_response(np.asarray(x[:n], np.float64), np.asarray(y[:n], np.float64),
                                 min(int(1.25 * parts.delay_max), n // 2))
            lag, peak = far_peak(h, near)
            if peak >= THRESHOLDS["delay_peak"]:
                parts.pair_delays[i] = lag
    if log:
        log(parts.summary())
    return parts


def fit_delays(model, parts: Parts, pair_knobs: np.ndarray, log=print) -> dict:
    """Fit the model's delay map (its first line) to the pairs' measured delays, at their knob
    settings (``pair_knobs``: every training pair's knobs in 0..1, indexed like ``pair_delays``)."""
    idx = sorted(parts.pair_delays)
    fit = model.fit_delay_map(pair_knobs[idx], [parts.pair_delays[i] for i in idx])
    fit["left_out"] = [idx[j] for j in fit["left_out"]]
    parts.measures["delay_fit"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in fit.items()}
    log(f"delay map fitted to {fit['pairs']} measured delays: rms error {fit['rms_samples']:.2f} samples, largest "
        f"{fit['max_samples']:.2f}" + (f"; left out pairs {fit['left_out']}: the fit misses their measured delay "
                                       f"by far (a wrong peak?)" if fit["left_out"] else ""))
    return fit


def main(argv=None):
    from .data import PairSet
    ap = argparse.ArgumentParser(description="Measure a dataset's training pairs and print the model parts they call for.")
    ap.add_argument("data", type=Path)
    a = ap.parse_args(argv)
    ts = PairSet(a.data, "Train")
    parts = parts_for(ts, log=print)
    lfo, parts.lfo = parts.lfo, None
    d = asdict(parts)
    d["pair_delays"] = len(parts.pair_delays)
    d["lfo"] = lfo.summary() if lfo is not None else None
    print(json.dumps(d, indent=1))


if __name__ == "__main__":
    main()
