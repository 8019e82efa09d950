"""Measure a modulated delay (chorus, flanger: a delay swept by an LFO) from recorded pairs.

    python -m training.lfo data/chorus-demo     # prints the findings

A delay that an LFO sweeps cannot be learned by gradient descent any more than a fixed one can
(training/parts.py, ``fit_delay_map``): the loss is flat except within a sample of the right
delay, at every moment. So it is measured from the pairs, in five steps:

1. **A delay track per pair.** Per frame (1024 samples, every 256), for every lag in range, the
   share of the target's non-dry part that ``dry gain * x + wet gain * x[n - lag]`` explains (a
   normalised least-squares fit; correlations by FFT). A tonal input explains nearly as well at
   multiples of its period (a pure tone at any lag), so the lag is not each frame's best one but
   the best *path* through the frames: dynamic programming (max-plus) over frames with a
   penalty per sample of lag change (O(frames x lags)). Each frame's confidence is how far its
   path score stands above the frame's median.
2. **Rate, phase and shape per pair.** d(t) = c + A sin(2 pi r t + psi) fitted to the track over a
   grid of rates, then with harmonics (a sweep clipped at a minimum delay) on a finer grid around
   the best (robustly: frames the fit misses by far are dropped and it is repeated). A pair
   is *reliable* when it holds at least one cycle, the fit keeps most frames and misses them by
   little, and the sweep is more than a few samples.
3. **Maps of the knobs.** The rate as a spline of the knob positions (the same basis as the delay
   map, summed over the knobs), least squares over the reliable pairs (a pair the map misses by
   far is left out); the start phase psi shared by all pairs (their circular mean, and its spread
   as the check). The LFO's phase at a pair's first sample must be the same for every pair: each
   pair rendered (or recorded) from the effect's reset. A free-running hardware LFO captured
   mid-cycle is not covered (the spread says so: the finding is then "not consistent").
4. **The delay's shape.** With the rate from the map and the shared phase, the delay is linear
   in its harmonics: d(t) = c + sum_k a_k sin(k theta) + b_k cos(k theta), theta = 2 pi (p0 + r t)
   (harmonics up to ``HARMONICS``: a sweep clipped at a minimum delay is not a sinusoid). Each
   coefficient is fitted per pair to its track, then mapped over the knobs like the rate.
5. **Against the audio.** The tracks are good to a few samples; a model needs a fraction of one.
   Every pair's rate and shape refined against its own audio (``refine_audio``: coarse to fine,
   with the fed-back passes when the pairs show regeneration, ``second_echo_share``), and the
   maps fitted again to the refined pairs (``_refine_maps``).

The output (``LfoFit``) says whether the data show a modulated delay (and whether it feeds back),
and holds the maps (the spline weights) that a model's swept delay is set from
(``SignalTrainPi.fit_mod``), with every pair's track and the maps' error against it.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HARMONICS = 5  # harmonics of the delay's shape (a sweep clipped at 1 ms)
KNOTS = 16  # spline knots per knob (as the delay map)
FRAME, STEP = 1024, 256  # the track's frames
REFINE_PASSES = 3  # step 5: passes through the sweep when the pairs feed back
CYCLES_FOR_RATE = 2.0  # step 5: a pair's rate is refined against its audio only when it holds this many
PENALTY = 0.005  # dynamic programming: score lost per sample of lag change between frames
CRITERIA = {
    "min_cycles": 1.0,  # a pair's rate is measured only when it holds a cycle
    "min_sweep": 2.0,  # samples of amplitude: less is not a modulated delay
    "max_rms": 6.0,  # samples: the fitted sweep misses the kept frames by at most this (rms)
    "min_kept": 0.6,  # share of frames the robust fit keeps
    "reliable_pairs": 0.1,  # share of measured pairs that must be reliable (slow pairs never are) ...
    "rate_rms": 0.02,  # ... the rate map must explain their rates to 2% (rms, relative) ...
    "phase_spread": 0.35,  # ... and their start phases agree (1 - resultant length of the unit phasors)
    "echo_share": 0.1,  # step 5: the median share of the one-read residual a fed-back second read removes: feedback
}


def spline_basis(u: np.ndarray) -> np.ndarray:
    """knobs (..., K) in 0..1 -> (..., K * (2 + KNOTS)): per knob u, u^2, relu(u - t)^3 at each
    knot t = j / KNOTS: the basis of SignalTrainPi.delay_basis, in numpy float64."""
    u = np.asarray(u, np.float64)
    knots = np.arange(KNOTS) / KNOTS
    cols = []
    for i in range(u.shape[-1]):
        v = u[..., i:i + 1]
        r = np.maximum(v - knots, 0.0)
        cols += [v, v * v, r ** 3]
    return np.concatenate(cols, axis=-1)


def fit_map(knobs: np.ndarray, values: np.ndarray, weights=None, ridge: float = 1e-9,
            outlier: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Least squares: values (N, C) ~ spline_basis(knobs) @ W + b. -> ((n_basis + 1, C) weights with the
    constant last, kept (N,) bool). ``outlier``: starting from the rows a least-trimmed-squares fit
    keeps (``_trimmed_rows``), rows missed by more than max(outlier, 5 x the median miss) (largest
    column) are left out and the fit repeated."""
    a = spline_basis(knobs)
    used = basis_used(a.shape[1] // (2 + KNOTS), len(a))
    a1 = np.hstack([a[:, used], np.ones((len(a), 1))])
    v = np.asarray(values, np.float64).reshape(len(a), -1)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, np.float64)
    keep = w > 0
    sol = np.zeros((a1.shape[1], v.shape[1]))

    def solve(rows):
        sw = np.sqrt(w[rows])[:, None]
        A, V = a1[rows] * sw, v[rows] * sw
        pen = ridge * np.trace(A[:, :-1].T @ A[:, :-1]) / a1.shape[1] * np.eye(a1.shape[1])
        pen[-1, -1] = 0.0
        return np.linalg.lstsq(A.T @ A + pen, A.T @ V, rcond=None)[0]

    if outlier is not None and keep.sum() > a1.shape[1] + 2:
        keep = _trimmed_rows(a1, v, keep, solve)
    for _ in range(5):
        if keep.sum() < 2:
            break
        sol = solve(keep)
        if outlier is None:
            break
        miss = np.abs(a1 @ sol - v).max(1)
        now = (w > 0) & (miss <= max(outlier, 5.0 * float(np.median(miss[keep]))))
        if (now == keep).all():
            break
        keep = now
    full = np.zeros((a.shape[1] + 1, sol.shape[1]))
    full[np.r_[used, True]] = sol
    return full, keep


def _trimmed_rows(a1: np.ndarray, v: np.ndarray, rows: np.ndarray, solve, share: float = 0.75,
                  starts: int = 64) -> np.ndarray:
    """Least trimmed squares (concentration steps): the ``share`` of ``rows`` that a fit through
    them alone misses least, searched from the fit through all of them and from ``starts`` random
    minimal subsets (fixed seed). A pair whose track followed something else (flanger demo, seed 1:
    2 of 20 at 16x and 35x the rate) would otherwise bend the map so that every miss looks alike."""
    idx = np.flatnonzero(rows)
    h = max(a1.shape[1] + 1, int(math.ceil(share * len(idx))))
    rng = np.random.default_rng(0)

    def concentrate(sel):
        best, last = math.inf, None
        for _ in range(20):
            m = np.zeros(len(a1), bool)
            m[sel] = True
            miss = np.abs(a1[idx] @ solve(m) - v[idx]).max(1)
            order = np.argsort(miss, kind="stable")[:h]
            cost = float(np.sum(miss[order] ** 2))
            if cost >= best - 1e-15:
                break
            best, last, sel = cost, idx[order], idx[order]
        return best, last

    trials = [concentrate(idx)]
    for _ in range(starts):
        trials.append(concentrate(rng.choice(idx, min(len(idx), a1.shape[1] + 1), replace=False)))
    cost, sel = min(trials, key=lambda t: t[0])
    out = np.zeros(len(a1), bool)
    out[sel] = True
    return out


def basis_used(n_knobs: int, settings: int) -> np.ndarray:
    """Which spline columns a fit over ``settings`` distinct knob settings uses: as many knots as
    they support (about 4 settings per weight; with very few, only u per knob); the other
    columns' weights stay 0."""
    every = next((e for e in (1, 2, 4, 8, 16) if n_knobs * (2 + KNOTS // e) + 1 <= settings / 4), None)
    used = np.zeros(n_knobs * (2 + KNOTS), bool)
    quadratic = 2 * n_knobs + 1 <= settings / 4  # too few settings for u^2: a line in each knob
    for i in range(n_knobs):
        used[i * (2 + KNOTS): i * (2 + KNOTS) + (2 if quadratic else 1)] = True
        if every:
            used[i * (2 + KNOTS) + 2: (i + 1) * (2 + KNOTS): every] = True
    return used


def fit_shape(knobs: np.ndarray, thetas: list, lags: list, weights: list, floor: float = 1.0,
              cut: float = 3.0) -> tuple[np.ndarray, list]:
    """One least squares over every pair's frames: lag = sum_j B_j(knobs) sum_h W[j, h] H_h(theta),
    B the spline basis (with a constant), H the harmonics: the delay's shape as a map of the knobs,
    linear in W given the rate and phase (variable projection). Frames missed by more than
    max(floor, cut x rms) are dropped and the fit repeated. -> ((n_basis + 1, 1 + 2 HARMONICS) W,
    per pair the kept-frame mask)."""
    knobs = np.asarray(knobs, np.float64)
    a = spline_basis(knobs)
    used = np.r_[basis_used(knobs.shape[1], len(knobs)), True]
    a1 = np.hstack([a, np.ones((len(a), 1))])[:, used]
    rows, v, w, owner = [], [], [], []
    for p, (th, lg, wt) in enumerate(zip(thetas, lags, weights)):
        Hm = harmonic_columns(th, HARMONICS)  # (F, C)
        rows.append((a1[p][None, :, None] * Hm[:, None, :]).reshape(len(th), -1))
        v.append(lg)
        w.append(wt)
        owner.append(np.full(len(th), p))
    M, v, w, owner = np.vstack(rows), np.concatenate(v), np.concatenate(w), np.concatenate(owner)
    keep = w > 0
    sol = np.zeros(M.shape[1])
    for _ in range(6):
        sw = np.sqrt(w[keep])
        A = M[keep] * sw[:, None]
        pen = 1e-9 * np.trace(A.T @ A) / A.shape[1] * np.eye(A.shape[1])
        sol = np.linalg.solve(A.T @ A + pen, A.T @ (v[keep] * sw))
        miss = np.abs(M @ sol - v)
        rms = float(np.sqrt(np.average(miss[keep] ** 2, weights=w[keep])))
        now = (w > 0) & (miss <= max(floor, cut * rms))
        if (now == keep).all():
            break
        keep = now
    full = np.zeros((len(used), 1 + 2 * HARMONICS))
    full[used] = sol.reshape(int(used.sum()), -1)
    return full, [keep[owner == p] for p in range(len(thetas))]


def fit_rate_map(knobs: np.ndarray, rates: np.ndarray) -> tuple[np.ndarray, bool, np.ndarray, float]:
    """The rate map (``fit_map``) of the rate or of its log, whichever explains the pairs better (a
    rate knob's taper is often logarithmic: the log rate is then linear in it). -> (map, log,
    kept pairs, rms relative error of the kept pairs' rates)."""
    best = None
    for log_rate in (True, False):
        sol, keep = fit_map(knobs, (np.log(rates) if log_rate else rates)[:, None], outlier=0.0)
        got = eval_map(sol, knobs)[:, 0]
        rms = float(np.sqrt(np.mean(((np.exp(got) if log_rate else got) / rates - 1.0)[keep] ** 2)))
        if best is None or rms < best[3]:
            best = (sol, log_rate, keep, rms)
    return best


def eval_map(sol: np.ndarray, knobs: np.ndarray) -> np.ndarray:
    a = spline_basis(knobs)
    return a @ sol[:-1] + sol[-1]


def wet_scores(x, y, lmin: int, lmax: int, win: int = FRAME, step: int = STEP):
    """Per frame (``win`` samples every ``step``): for each lag in lmin..lmax, the share of the
    frame's non-dry target that a least-squares fit g x[n] + a x[n - lag] explains (0..1).
    -> (frame centres (F,), lags (L,), scores (F, L), frame energies (F,))."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y))
    nfft = 1 << int(np.ceil(np.log2(win + lmax + 1)))
    starts = np.arange(lmax, n - win + 1, step)
    lags = np.arange(lmin, lmax + 1)
    S = np.zeros((len(starts), len(lags)))
    energy = np.zeros(len(starts))
    cs = np.r_[0.0, np.cumsum(x * x)]
    k = (lags - lmax) % nfft  # correlation index of each lag
    for f, s in enumerate(starts):
        xf, yf = x[s:s + win], y[s:s + win]
        X = np.conj(np.fft.rfft(x[s - lmax:s + win], nfft))
        c = np.fft.irfft(np.fft.rfft(yf, nfft) * X, nfft)[k]  # sum_i y[s+i] x[s+i-lag]
        b = np.fft.irfft(np.fft.rfft(xf, nfft) * X, nfft)[k]  # sum_i x[s+i] x[s+i-lag]
        e = cs[s - lags + win] - cs[s - lags]  # sum_i x[s+i-lag]^2
        yy, xy0, xx0 = float(yf @ yf), float(xf @ yf), float(xf @ xf)
        energy[f] = yy
        if yy <= 1e-10 * win or xx0 <= 1e-10 * win:
            continue  # silence says nothing
        det = e * xx0 - b * b
        ok = det > 1e-9 * (e * xx0 + 1e-30)
        expl = np.where(ok, (c * c * xx0 - 2 * c * xy0 * b + xy0 * xy0 * e) / np.where(ok, det, 1.0), 0.0)
        dry = xy0 * xy0 / xx0
        S[f] = np.clip((expl - dry) / max(yy - dry, 1e-9 * yy), 0.0, 1.0)
    return starts + (win - 1) / 2.0, lags, S, energy


def best_path(S: np.ndarray, penalty: float) -> np.ndarray:
    """Max-plus dynamic programming over frames: the lag indices maximising
    sum_f S[f, l_f] - penalty * |l_f - l_{f-1}|, in O(F x L) (the linear penalty's distance
    transform is a running maximum each way)."""
    F, L = S.shape
    idx = np.arange(L)
    acc = S[0].copy()
    back = np.zeros((F, L), np.int64)
    for f in range(1, F):
        v = acc + penalty * idx  # from below: max_{j<=l} acc[j] - penalty (l - j)
        fm = np.maximum.accumulate(v)
        fa = np.maximum.accumulate(np.where(v >= fm, idx, 0))
        w = (acc - penalty * idx)[::-1]  # from above: max_{j>=l} acc[j] - penalty (j - l)
        bm = np.maximum.accumulate(w)
        ba = (L - 1 - np.maximum.accumulate(np.where(w >= bm, idx, 0)))
        up, down = fm - penalty * idx, bm[::-1] + penalty * idx
        back[f] = np.where(up >= down, fa, ba[::-1])
        acc = np.maximum(up, down) + S[f]
    path = np.zeros(F, np.int64)
    path[-1] = int(acc.argmax())
    for f in range(F - 1, 0, -1):
        path[f - 1] = back[f, path[f]]
    return path


@dataclass
class Track:
    t: np.ndarray  # frame centres, seconds from the pair's first sample
    lag: np.ndarray  # delay in samples (fractional: parabolic peak around the path)
    weight: np.ndarray  # confidence (path score above the frame's median; 0 for silence)


def delay_track(x, y, sample_rate: int, min_lag: int = 16, max_lag: int | None = None) -> Track:
    """The delay path through a pair (steps 1 of the module docstring)."""
    max_lag = max_lag or int(0.03 * sample_rate)
    t, lags, S, energy = wet_scores(x, y, min_lag, max_lag)
    path = best_path(S, PENALTY)
    F = len(t)
    rows = np.arange(F)
    lag = lags[path].astype(np.float64)
    inner = (path > 0) & (path < len(lags) - 1)
    a, b, c = (S[rows[inner], path[inner] + o] for o in (-1, 0, 1))
    den = a - 2 * b + c
    off = np.where(den < -1e-12, 0.5 * (a - c) / np.where(den < -1e-12, den, -1.0), 0.0)
    lag[inner] += np.clip(off, -0.5, 0.5)
    weight = np.clip(S[rows, path] - np.median(S, axis=1), 0.0, None)
    weight[energy <= 1e-10 * FRAME] = 0.0
    return Track(t / sample_rate, lag, weight)


def harmonic_columns(theta: np.ndarray, K: int) -> np.ndarray:
    """theta (N,) radians -> (N, 1 + 2K): 1, sin(k theta), cos(k theta) for k = 1..K."""
    cols = [np.ones_like(theta)]
    for k in range(1, K + 1):
        cols += [np.sin(k * theta), np.cos(k * theta)]
    return np.stack(cols, axis=1)


def robust_lstsq(M, v, w, cut: float = 3.0, floor: float = 1.0, rounds: int = 4):
    """Weighted least squares M c ~ v, frames missed by more than max(floor, cut x the rms miss)
    dropped and the fit repeated. -> (coefficients, kept mask, rms miss of the kept frames)."""
    keep = w > 0
    coef = np.zeros(M.shape[1])
    for _ in range(rounds):
        if keep.sum() <= M.shape[1]:
            return coef, keep, math.inf
        sw = np.sqrt(w[keep])
        coef = np.linalg.lstsq(M[keep] * sw[:, None], v[keep] * sw, rcond=None)[0]
        miss = np.abs(M @ coef - v)
        rms = float(np.sqrt(np.average(miss[keep] ** 2, weights=w[keep])))
        now = (w > 0) & (miss <= max(floor, cut * rms))
        if (now == keep).all():
            break
        keep = now
    return coef, keep, rms


@dataclass
class PairFit:
    rate: float  # Hz
    centre: float  # samples
    amplitude: float  # samples (first harmonic)
    phase: float  # radians: d(t) ~ centre + amplitude sin(2 pi rate t + phase)
    rms: float  # samples, over the kept frames
    kept: float  # share of weighted frames kept
    cycles: float  # rate x the track's span
    reliable: bool


def fit_pair(tr: Track, rates: np.ndarray | None = None) -> PairFit:
    """Step 2: the best single sinusoid over a grid of rates, then a finer grid around it."""
    if rates is None:
        rates = np.geomspace(0.02, 20.0, 400)
    active = tr.weight > 0
    span = float(tr.t[active].max() - tr.t[active].min()) if active.sum() > 2 else 0.0
    best = (math.inf, None)
    for stage in range(2):  # a sinusoid over the grid, then its shape (a clipped sweep) on a finer grid
        K = 1 if stage == 0 else HARMONICS
        for r in rates:
            if stage and r * span < 1.5:
                K = 1  # less than a cycle and a half holds no shape
            coef, keep, rms = robust_lstsq(harmonic_columns(2 * np.pi * r * tr.t, K), tr.lag, tr.weight, rounds=2)
            share = float(tr.weight[keep].sum() / max(tr.weight.sum(), 1e-12))
            score = rms / max(share, 1e-3) ** 2  # a fit that drops frames pays for it
            if score < best[0]:
                best = (score, r)
        r0 = best[1]
        rates = r0 * np.linspace(0.97, 1.03, 61)
    r = best[1]
    coef, keep, rms = robust_lstsq(harmonic_columns(2 * np.pi * r * tr.t, HARMONICS if r * span >= 1.5 else 1),
                                   tr.lag, tr.weight)
    share = float(tr.weight[keep].sum() / max(tr.weight.sum(), 1e-12))
    amp = float(math.hypot(coef[1], coef[2]))
    cycles = r * span
    reliable = (cycles >= CRITERIA["min_cycles"] and amp >= CRITERIA["min_sweep"] and rms <= CRITERIA["max_rms"]
                and share >= CRITERIA["min_kept"])
    return PairFit(float(r), float(coef[0]), amp, float(math.atan2(coef[2], coef[1])), float(rms), share,
                   float(cycles), bool(reliable))


@dataclass
class LfoFit:
    modulated: bool  # the data show a swept delay (with a rate map and a consistent start phase)
    reason: str
    sample_rate: int
    phase0: float = 0.0  # turns: theta(t) = 2 pi (phase0 + rate t)
    rate_map: np.ndarray | None = None  # (n_basis + 1, 1): Hz (or log Hz) from the knob positions
    rate_log: bool = False  # rate_map gives log Hz
    shape_map: np.ndarray | None = None  # (n_basis + 1, 1 + 2 HARMONICS): c, a_1, b_1, ... in samples
    measures: dict = field(default_factory=dict)
    pairs: dict = field(default_factory=dict)  # pair index -> PairFit
    tracks: dict = field(default_factory=dict)  # pair index -> Track
    kept_frames: dict = field(default_factory=dict)  # pair index -> the frames the shape fit kept
    refined: dict = field(default_factory=dict)  # pair index -> (rate, sweep, ESR after, ESR of the input alone)
    feedback: bool = False  # the swept delay feeds back (a second pass through it explains much)

    def rate(self, knobs) -> np.ndarray:
        v = eval_map(self.rate_map, np.atleast_2d(knobs))[:, 0]
        return np.exp(v) if self.rate_log else v

    def delay(self, knobs, t: np.ndarray) -> np.ndarray:
        """The mapped delay (samples) at times t (seconds from a pair's start) for one knob setting."""
        knobs = np.atleast_2d(knobs)
        r = float(self.rate(knobs)[0])
        coef = eval_map(self.shape_map, knobs)[0]
        return harmonic_columns(2 * np.pi * (self.phase0 + r * np.asarray(t, np.float64)), HARMONICS) @ coef

    def summary(self) -> str:
        m = self.measures
        text = (f"modulated delay: {'yes' if self.modulated else 'no'} ({self.reason}); "
                f"{m.get('reliable', 0)}/{m.get('pairs_measured', 0)} pairs reliable")
        if self.rate_map is not None:
            text += f", rate map rms {100 * m['rate_rms']:.2f}%, phase spread {m['phase_spread']:.3f}"
        if self.modulated:
            text += (f"; delays {m['delay_range'][0]:.0f}..{m['delay_range'][1]:.0f} samples; mapped delay vs the "
                     f"tracks: rms {m['track_rms']:.2f}, median pair {m['track_rms_median']:.2f} samples")
        return text


def example_fit(n_knobs: int, sample_rate: int = 48000, centre: float = 336.0, sweep: float = 300.0,
                rates=(0.1, 5.0), phase0: float = 0.25) -> LfoFit:
    """A swept delay as a chorus makes one, for tests and benchmarks of a model's swept delay: the
    rate log-spaced over the first knob's travel, the sweep ``centre`` +- ``sweep`` x the last knob's
    position (samples), the same start phase for every setting."""
    n_basis = n_knobs * (2 + KNOTS)
    rate = np.zeros((n_basis + 1, 1))
    rate[0, 0], rate[-1, 0] = math.log(rates[1] / rates[0]), math.log(rates[0])
    shape = np.zeros((n_basis + 1, 1 + 2 * HARMONICS))
    shape[-1, 0] = centre
    shape[(n_knobs - 1) * (2 + KNOTS), 1] = sweep
    return LfoFit(True, "example", sample_rate, phase0, rate, True, shape)


def refine_track(x, y, delay: np.ndarray, sample_rate: int, half: int = 32, win: int = 512, step: int = 256) -> Track:
    """The track again, relative to a predicted per-sample delay ``delay`` (N,): per frame the lag
    offset delta (-half..half) at which g x[n] + a x[n - delay(n) - delta] explains the target best
    (x read along the prediction, so a fast sweep no longer smears a frame), the offsets' path by
    dynamic programming, and the lag = prediction + offset at the frame centres."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y), len(delay))
    x, y = x[:n], y[:n]
    starts = np.arange(0, n - win + 1, step)
    deltas = np.arange(-half, half + 1)
    cs = lambda v: np.r_[0.0, np.cumsum(v)]
    def frame_sums(v):
        c = cs(v)
        return c[starts + win] - c[starts]
    yy, xy0, xx0 = frame_sums(y * y), frame_sums(x * y), frame_sums(x * x)
    S = np.zeros((len(starts), len(deltas)))
    pos0 = np.arange(n) - delay[:n]
    dry = xy0 * xy0 / np.maximum(xx0, 1e-30)
    live = (yy > 1e-10 * win) & (xx0 > 1e-10 * win)
    for j, dl in enumerate(deltas):
        p = pos0 - dl
        w = np.floor(p)
        fr = p - w
        i0 = w.astype(np.int64)
        xa = np.where((i0 >= 0) & (i0 < n), x[np.clip(i0, 0, n - 1)], 0.0)
        xb = np.where((i0 + 1 >= 0) & (i0 + 1 < n), x[np.clip(i0 + 1, 0, n - 1)], 0.0)
        xd = xa * (1 - fr) + xb * fr
        c, e, b = frame_sums(y * xd), frame_sums(xd * xd), frame_sums(x * xd)
        det = e * xx0 - b * b
        ok = live & (det > 1e-9 * (e * xx0 + 1e-30))
        expl = np.where(ok, (c * c * xx0 - 2 * c * xy0 * b + xy0 * xy0 * e) / np.where(ok, det, 1.0), 0.0)
        S[:, j] = np.where(ok, np.clip((expl - dry) / np.maximum(yy - dry, 1e-9 * yy + 1e-30), 0.0, 1.0), 0.0)
    path = best_path(S, PENALTY)
    rows = np.arange(len(starts))
    off = deltas[path].astype(np.float64)
    inner = (path > 0) & (path < len(deltas) - 1)
    a, b, c = (S[rows[inner], path[inner] + o] for o in (-1, 0, 1))
    den = a - 2 * b + c
    off[inner] += np.clip(np.where(den < -1e-12, 0.5 * (a - c) / np.where(den < -1e-12, den, -1.0), 0.0), -0.5, 0.5)
    centre = starts + (win - 1) / 2.0
    weight = np.clip(S[rows, path] - np.median(S, axis=1), 0.0, None)
    weight[~live] = 0.0
    weight[np.abs(deltas[path]) >= half] = 0.0  # at the edge of the search: not found
    return Track(centre / sample_rate, np.interp(centre, np.arange(n), delay[:n]) + off, weight)


def _lowpass(v: np.ndarray, cutoff: float) -> np.ndarray:
    """v through a zero-phase low-pass at ``cutoff`` (a fraction of the sample rate; a raised-cosine
    edge an octave wide), by FFT: the coarse stages of ``refine_audio``."""
    n = len(v)
    f = np.fft.rfftfreq(n)
    gain = np.clip(np.log2(np.maximum(2 * cutoff / np.maximum(f, 1e-12), 1e-12)), 0.0, 1.0)
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)
    return np.fft.irfft(np.fft.rfft(v) * gain, n)


def _read(x: np.ndarray, pos: np.ndarray):
    """x at fractional positions (zero before its start), linearly interpolated, and the slope
    of each interpolation segment (the derivative with respect to the position)."""
    pos = np.clip(pos, -1.0, len(x) - 2.0)
    i0 = np.floor(pos).astype(np.int64)
    f = pos - i0
    xp = np.r_[0.0, x, 0.0]
    a, b = xp[i0 + 1], xp[i0 + 2]
    return a + f * (b - a), b - a


def refine_audio(x, y, sample_rate: int, phase0: float, rate: float, coef: np.ndarray,
                 cutoffs=(300.0, 1000.0, 4000.0, None), iters: int = 8,
                 fit_rate: bool = True, passes: int = 1) -> tuple[float, np.ndarray, float, float]:
    """Step 5: one pair's rate and delay shape refined against its audio, not its track: the
    target modelled as ``g x[n] + a x[n - d(n)]`` (the gains by least squares at every step),
    d(n) = the harmonics of theta(n) = 2 pi (phase0 + rate n / sr) times ``coef``, by
    Levenberg-Marquardt on the delay's parameters. The error surface of a delay is flat beyond
    half a period of the signal's content, so the first stages see both signals low-passed
    (``cutoffs``, Hz; None = as they are) and each stage starts where the coarser one ended.
    ``fit_rate=False`` keeps the rate (a pair holding less than a couple of cycles cannot tell a
    rate from a shape: a slower rate with other harmonics fits its span as well). ``passes`` > 1:
    the reads fed back through the sweep too (a flanger's regeneration; ``second_echo_share``),
    each with its own gain, so that a pair with much feedback is explained, not mis-fitted.
    -> (rate, coef, the ESR of that model before, after)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    K = (len(coef) - 1) // 2
    p = np.r_[rate, np.asarray(coef, np.float64)]
    every = np.arange(n)

    def model(p, xs, ys, at):  # the residual at the samples ``at`` (a low-passed pair needs few)
        t = at / sample_rate
        Ds, H = pass_delays(at, sample_rate, phase0, p[0], p[1:], passes)
        cols, slopes = [xs[at]], []
        for D in Ds:
            wm, sm = _read(xs, at - D)
            cols.append(wm)
            slopes.append(sm)
        slope = slopes[0]
        A = np.stack(cols, 1)
        g = np.linalg.lstsq(A, ys[at], rcond=None)[0]
        # d model / d delay of the first pass; pass m moves about m times as far (a slow sweep)
        slope = sum((m + 1) * g[m + 1] * sm for m, sm in enumerate(slopes)) / g[1] if g[1] else slope
        return ys[at] - A @ g, g, H, t, slope

    def esr(p, xs, ys, at):
        e = model(p, xs, ys, at)[0]
        return float(e @ e / max(float(ys[at] @ ys[at]), 1e-20))

    before = esr(p, x, y, every)
    for cut in cutoffs:
        xs, ys = (x, y) if cut is None else (_lowpass(x, cut / sample_rate), _lowpass(y, cut / sample_rate))
        at = every[::max(1, int(sample_rate / (4 * cut)))] if cut else every[::2]  # 2x the band's Nyquist rate
        lam, cur = 1e-3, esr(p, xs, ys, at)
        for _ in range(iters):
            e, g, H, t, slope = model(p, xs, ys, at)
            dH = np.zeros_like(H)  # d/dtheta of the harmonics
            for k in range(1, K + 1):
                dH[:, 2 * k - 1] = k * H[:, 2 * k]
                dH[:, 2 * k] = -k * H[:, 2 * k - 1]
            dd = np.column_stack([(dH @ p[1:]) * 2 * np.pi * t * fit_rate, H])  # d delay / d params
            J = (-g[1] * slope)[:, None] * dd  # d model / d params (the residual's is its negative)
            JTJ, JTe = J.T @ J, J.T @ e
            while lam < 1e6:
                step = np.linalg.solve(JTJ + lam * np.diag(np.diag(JTJ)) + 1e-12 * np.eye(len(p)), JTe)
                new = esr(p + step, xs, ys, at)
                if new < cur:
                    p, cur, lam = p + step, new, max(lam / 3, 1e-6)
                    break
                lam *= 4
            else:
                break
    return float(p[0]), p[1:], before, esr(p, x, y, every)


def _fit_maps(out: "LfoFit", idx, knobs, tracks, fits) -> bool:
    """Step 3 and 4 from the reliable pairs' fits and every pair's track; False (with out.reason)
    when the data do not make a swept delay set by the knobs."""
    m = out.measures
    rel = [i for i in idx if fits[i].reliable]
    m["reliable"] = len(rel)
    if len(rel) < max(4, CRITERIA["reliable_pairs"] * len(idx)):
        out.reason = f"too few pairs show a swept delay ({len(rel)} of {len(idx)})"
        return False
    rates = np.array([fits[i].rate for i in rel])
    out.rate_map, out.rate_log, keep, m["rate_rms"] = fit_rate_map(knobs[rel], rates)
    m["rate_left_out"] = [rel[j] for j in np.flatnonzero(~keep)]
    weights = int(basis_used(knobs.shape[1], len(rel)).sum()) + 1
    if keep.sum() < weights + 2:  # a map through as many pairs as it has weights explains anything
        out.reason = (f"too few pairs agree on a rate map ({int(keep.sum())} of {len(rel)} reliable ones; "
                      f"its {weights} weights need {weights + 2})")
        return False
    # the phase at t = 0, with the rate from the map (a pair's own rate error would move its phase),
    # from the pairs whose rates the map explains
    z = []
    for i in [i for i, k in zip(rel, keep) if k]:
        tr = tracks[i]
        r = float(out.rate(knobs[i])[0])
        coef, _, _ = robust_lstsq(harmonic_columns(2 * np.pi * r * tr.t, 1), tr.lag, tr.weight)
        z.append(complex(coef[1], coef[2]))  # a sin + b cos = |z| sin(theta + arg z)
    z = np.array(z)
    m["phase_spread"] = float(1.0 - abs(np.sum(z)) / max(np.sum(np.abs(z)), 1e-12))
    out.phase0 = float((np.angle(np.sum(z)) / (2 * np.pi)) % 1.0)
    if m["rate_rms"] > CRITERIA["rate_rms"]:
        out.reason = f"the knobs do not explain the rates ({100 * m['rate_rms']:.1f}% rms)"
        return False
    if m["phase_spread"] > CRITERIA["phase_spread"]:
        out.reason = (f"the pairs' start phases disagree (spread {m['phase_spread']:.2f}): a free-running LFO "
                      f"captured mid-cycle is not covered")
        return False
    # the shape from the pairs whose own track the mapped rate and phase fit (a track that followed
    # a wrong path somewhere would bend the map for every setting)
    thetas, good = {}, []
    for i in idx:
        tr = tracks[i]
        thetas[i] = 2 * np.pi * (out.phase0 + float(out.rate(knobs[i])[0]) * tr.t)
        _, kf, rms = robust_lstsq(harmonic_columns(thetas[i], HARMONICS), tr.lag, tr.weight)
        if rms <= CRITERIA["max_rms"] and tr.weight[kf].sum() >= CRITERIA["min_kept"] * tr.weight.sum():
            good.append(i)
    m["shape_pairs"] = len(good)
    if len(good) < 4:
        out.reason = f"too few pairs' tracks follow the mapped LFO ({len(good)} of {len(idx)})"
        return False
    out.shape_map, kept = fit_shape(knobs[good], [thetas[i] for i in good], [tracks[i].lag for i in good],
                                    [tracks[i].weight for i in good])
    out.kept_frames = dict(zip(good, kept))
    return True


def pass_delays(at, sample_rate: int, phase0: float, rate: float, coef: np.ndarray, passes: int):
    """The swept delay's passes at the samples ``at``: D_1 = d(n), D_(m+1) = D_m + 1 + d(n - D_m - 1)
    (each fed-back pass read where it entered the line, as the model's mod_delays does).
    -> ([D_1, ...], the first pass's harmonic columns)."""
    K = (len(coef) - 1) // 2
    H = harmonic_columns(2 * np.pi * (phase0 + rate * (at / sample_rate)), K)
    Ds = [H @ coef]
    for _ in range(passes - 1):
        Ds.append(Ds[-1] + 1 + harmonic_columns(2 * np.pi * (phase0 + rate * ((at - Ds[-1] - 1) / sample_rate)), K) @ coef)
    return Ds, H


def second_echo_share(x, y, sample_rate: int, phase0: float, rate: float, coef: np.ndarray) -> float:
    """The share of the residual of ``g x + a x[n - D1(n)]`` that a second pass through the swept
    delay, ``+ b x[n - D2(n)]`` with D2 = D1 + 1 + d(n - D1 - 1) (the read fed back, as a flanger's
    regeneration does), removes (least squares for the gains)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    at = np.arange(n, dtype=np.float64)
    (d1, d2), _ = pass_delays(at, sample_rate, phase0, rate, coef, 2)
    w1, w2 = _read(x, at - d1)[0], _read(x, at - d2)[0]
    res = []
    for A in (np.stack([x, w1], 1), np.stack([x, w1, w2], 1)):
        g = np.linalg.lstsq(A, y, rcond=None)[0]
        res.append(float(np.sum((y - A @ g) ** 2)))
    return 1.0 - res[1] / max(res[0], 1e-20)


def _refine_maps(out: LfoFit, idx, knobs, audio, sample_rate: int):
    """Step 5, in two rounds. First the pairs holding at least ``CYCLES_FOR_RATE`` cycles at the
    maps' rate, rate and shape refined against their audio (``refine_audio``, from the maps'
    values at their knobs); the rate map again from those it explains whose sweep is wide enough
    to show a rate. Then every pair with the rate from that map, its shape alone refined; the shape
    map (the coefficients as a map of the knobs) from every pair it explains. A pair is explained
    when the swept delay leaves at most a tenth of what its input alone (at the best gain) leaves."""
    m = out.measures
    sig = {}
    for i in idx:
        x, y = audio[i]
        n = min(len(x), len(y))
        sig[i] = (np.asarray(x[:n], np.float64), np.asarray(y[:n], np.float64))

    def dry_esr(i):
        x, y = sig[i]
        g = float(x @ y) / max(float(x @ x), 1e-20)
        return float(np.sum((y - g * x) ** 2) / max(float(y @ y), 1e-20))

    def echo_share(ids):  # regeneration, measured with the maps as they are (see below)
        shares = [second_echo_share(*sig[i], sample_rate, out.phase0, float(out.rate(knobs[i])[0]),
                                    eval_map(out.shape_map, knobs[i:i + 1])[0]) for i in ids]
        return float(np.median(shares)) if shares else 0.0

    # a pair with much feedback is explained only with its fed-back passes (a flanger demo's
    # shape map missed the settings at feedback 0.68 by 15 samples when refined with one)
    passes = REFINE_PASSES if echo_share(idx[:16]) >= CRITERIA["echo_share"] else 1

    def run(i, fit_rate):
        x, y = sig[i]
        r, c, _, after = refine_audio(x, y, sample_rate, out.phase0, float(out.rate(knobs[i])[0]),
                                      eval_map(out.shape_map, knobs[i:i + 1])[0], fit_rate=fit_rate, passes=passes)
        dry = dry_esr(i)
        out.refined[i] = (r, float(math.hypot(c[1], c[2])), after, dry)
        return r, c, after <= 0.1 * dry

    long_ = [i for i in idx if float(out.rate(knobs[i])[0]) * len(sig[i][0]) / sample_rate >= CYCLES_FOR_RATE]
    rates = {}
    for i in long_:
        r, c, ok = run(i, True)
        if ok and math.hypot(c[1], c[2]) >= CRITERIA["min_sweep"] and r > 0:
            rates[i] = r
    m["rate_pairs"] = len(rates)
    if len(rates) >= 4:  # else the tracks' rate map stays
        wide = sorted(rates)
        out.rate_map, out.rate_log, _, m["rate_rms"] = fit_rate_map(knobs[wide], np.array([rates[i] for i in wide]))
    # each explained pair's refined delay curve, every STEP samples where its input is not silent
    # (a pair holding part of a cycle fixes its curve, not its harmonics' coefficients, which trade
    # off: so the shape map is fitted to the curves, as to the tracks in step 4)
    thetas, curves, weights = [], [], []
    for i in idx:
        r, c, ok = run(i, False)
        if not ok:
            continue
        x = sig[i][0]
        f = np.arange(0, len(x) - STEP + 1, STEP)
        e = np.add.reduceat(x * x, f) / STEP
        th = 2 * np.pi * (out.phase0 + r * (f + STEP / 2) / sample_rate)
        thetas.append(th)
        curves.append(harmonic_columns(th, HARMONICS) @ c)
        weights.append((e > 1e-6 * e.max()).astype(np.float64))
    ok = [i for i in idx if out.refined[i][2] <= 0.1 * out.refined[i][3]]
    m["audio_refined"], m["audio_explained"] = len(idx), len(ok)
    if len(ok) < 4:
        m["audio_refine"] = "too few pairs explained: the tracks' maps kept"
        return
    out.shape_map, kept = fit_shape(knobs[ok], thetas, curves, weights)
    m["shape_pairs"] = int(sum(k.any() for k in kept))
    # regeneration (a flanger's feedback): how much of what one swept read leaves a second one,
    # fed back through the same sweep, explains; the median over the pairs with a sweep
    m["echo_share"] = echo_share([i for i in idx if out.refined[i][1] >= CRITERIA["min_sweep"]])
    out.feedback = m["echo_share"] >= CRITERIA["echo_share"]
    m["audio_refine"] = "rate and shape maps from the refined pairs" if len(rates) >= 4 else "shape map from the refined pairs"


def measure(pairs_xy, knobs: np.ndarray, sample_rate: int, refinements: int = 2, audio_refine: bool = True,
            log=None) -> LfoFit:
    """pairs_xy: list of (pair index, input, target), each pair at fixed knobs; knobs: (N, K) knob
    positions of every pair (indexed like the pair indices). Steps 1-4 of the module docstring,
    then ``refinements`` rounds of: every pair's track again along the maps' delay
    (``refine_track``: a fast sweep no longer smears the frames), its fit, and the maps again."""
    knobs = np.asarray(knobs, np.float64)
    audio = {i: (x, y) for i, x, y in pairs_xy}
    idx = sorted(audio)
    tracks = {i: delay_track(*audio[i], sample_rate) for i in idx}
    fits = {i: fit_pair(tracks[i]) for i in idx}
    out = LfoFit(False, "", sample_rate, measures={"pairs_measured": len(idx)}, pairs=fits, tracks=tracks)
    if not _fit_maps(out, idx, knobs, tracks, fits):
        return _done(out, log)
    for _ in range(refinements):
        for i in idx:
            x, y = audio[i]
            n = min(len(x), len(y))
            tracks[i] = refine_track(x, y, out.delay(knobs[i], np.arange(n) / sample_rate), sample_rate)
            r = float(out.rate(knobs[i])[0])
            fits[i] = fit_pair(tracks[i], rates=r * np.linspace(0.8, 1.25, 91))
        if not _fit_maps(out, idx, knobs, tracks, fits):
            return _done(out, log)
    if audio_refine:
        _refine_maps(out, idx, knobs, audio, sample_rate)
    # the maps' delay against every pair's own track (the frames a robust fit keeps)
    m = out.measures
    per, lo, hi = [], math.inf, -math.inf
    for i in idx:
        tr = tracks[i]
        d = out.delay(knobs[i], tr.t)
        lo, hi = min(lo, float(d.min())), max(hi, float(d.max()))
        kf = out.kept_frames.get(i)
        if kf is not None and kf.any():
            per.append(float(np.sqrt(np.average((d - tr.lag)[kf] ** 2, weights=tr.weight[kf]))))
    m["delay_range"] = [lo, hi]
    m["track_rms"] = float(np.sqrt(np.mean(np.square(per)))) if per else math.inf
    m["track_rms_median"] = float(np.median(per)) if per else math.inf
    out.modulated = True
    out.reason = "a swept delay, its rate set by the knobs, the same start phase in every pair"
    return _done(out, log)


def _done(out: LfoFit, log):
    if log:
        log(out.summary())
    return out


def measure_set(train_set, max_pairs: int = 64, seed: int = 0, refinements: int = 2, audio_refine: bool = True,
                log=None) -> LfoFit:
    """measure() over up to ``max_pairs`` pairs of a PairSet (chosen at random, fixed by ``seed``)."""
    rng = np.random.default_rng(seed)
    n = len(train_set.pairs)
    chosen = sorted(rng.choice(n, min(max_pairs, n), replace=False).tolist())
    return measure([(i, train_set.x[i], train_set.y[i]) for i in chosen], train_set.knobs, train_set.sample_rate,
                   refinements, audio_refine, log=log)


def main(argv=None):
    from .data import PairSet
    ap = argparse.ArgumentParser(description="Measure whether a dataset's pairs show an LFO-swept delay, and fit it.")
    ap.add_argument("data", type=Path)
    ap.add_argument("--max-pairs", type=int, default=64)
    a = ap.parse_args(argv)
    ts = PairSet(a.data, "Train")
    fit = measure_set(ts, a.max_pairs, log=print)
    names = [k.name for k in ts.knob_specs]
    rows = []
    for i, p in sorted(fit.pairs.items()):
        rows.append({"pair": i, "knobs": dict(zip(names, [round(float(v), 4) for v in ts.pairs[i].knobs])),
                     "rate": round(p.rate, 4), "amplitude": round(p.amplitude, 1), "centre": round(p.centre, 1),
                     "rms": round(p.rms, 2), "kept": round(p.kept, 2), "reliable": p.reliable})
    print(json.dumps({"modulated": fit.modulated, "reason": fit.reason, "phase0_turns": round(fit.phase0, 4),
                      "measures": fit.measures, "pairs": rows}, indent=1))


if __name__ == "__main__":
    main()
