"""SignalTrain-Pi: a knob-conditioned SignalTrain-style model with sparse windowed self-attention.

Waveform in, waveform out, read top to bottom in the order data flows:

    x (B, N) --frames--> learned analysis (windowed-DFT init) --> log power (B, T, bins)
      --> in_proj + FiLM(knobs) --> n_blocks x [sparse attention + FFN, FiLM(knobs) in each]
      --> heads, one set of values per frame, each ramped (raised cosine) across its hop:
          gain    s_t  one log-gain: the "skip filter", like a compressor's gain      (always)
          fir     c_t  ``fir_taps`` taps of a time-varying filter of the input        (tone, EQ, a wet mix)
          shaper  g_t, beta_t, p_t: the per-sample nonlinear path (drive, fuzz, amp)
                  u = exp(g) * (pre * x);  z = sum_j w_j [tanh(a_j u + beta_j) - tanh(beta_j)];
                  the gain then scales p_t * z instead of x (a Wiener-Hammerstein chain with a level)
          delay   per line: delay d_t (samples), feedback f_t, wet level a_t (echo; chorus)
                  b[n] = x[n] + f(n) b[n - d(n)];  y += a(n) b[n - d(n)]   (fractional, interpolated)
    y[n] = exp(s(n)) x[n] + (c(n) * x)[n] + sum_lines a(n) b[n - d(n)]      x -> (p(n) * z) with a shaper

Which parts a model has is a config choice (``fir_taps``, ``shaper_units``, ``delay_lines``),
made from the data by training/parts.py (or given as an option), never from an effect's name.

Frames: frame t ends at the last sample of hop t and looks back ``window`` samples; its values
apply to hop t. So output sample n depends on input up to the end of its hop: the algorithmic
latency is ``hop`` samples.

Attention is sparse with cost linear in context: each frame attends to
  - the last ``local_frames`` frames (itself included), and
  - pooled memory on fixed grids, one level per (block, slots) pair: the mean key/value of each
    completed block of ``mem_block_frames`` frames, the most recent ``mem_slots`` blocks; a second,
    coarser level (``mem2_block_frames`` x ``mem2_slots``) reaches seconds back (an LA-2A's release),
plus a learned bias per head and slot (relative position). Frames before the start count as
zero keys/values, exactly what a zero-initialised streaming cache holds, so the offline form
(``SignalTrainPi.forward``) and the streaming form (``StepModel``) agree to float precision.
``attention="dense"`` (full causal, N^2) and ``"none"`` exist for comparison only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DELAY_KNOTS = 16  # the delay map's spline knots per knob (every 1/16 of the knob's travel)


@dataclass
class ModelConfig:
    n_knobs: int = 4
    sample_rate: int = 48000
    hop: int = 64  # samples per step; the algorithmic latency
    window: int = 512  # analysis window (samples), a multiple of hop
    fir_taps: int = 32  # residual path: a time-varying FIR over the last fir_taps input samples;
    #                     0 = none, y = gain x input (a compressor is exactly that, and learns faster)
    fir_scale: float = 0.1  # the taps move 10x slower than the gain: level belongs to the gain path
    shaper_units: int = 0  # nonlinear path: tanh units per sample; 0 = none
    shaper_pre_taps: int = 128  # its fixed (learned) pre-filter (2.7 ms: an input high-pass, a mid hump)
    shaper_post_taps: int = 32  # its frame-steered post-filter (fine tone, level)
    shaper_bank: int = 4  # long fixed (learned) post-filters mixed per frame: tone knobs, tone stacks,
    shaper_bank_taps: int = 256  # cabinets (a 400 Hz low-pass rings for ms, beyond 32 taps' reach)
    delay_lines: int = 0  # recursive delay lines (echo, time alignment); 0 = none
    delay_min: int = 129  # shortest delay, samples (> the block the offline form recurses over)
    delay_max: int = 24129  # longest delay, samples (the state holds this much of each line)
    mod_lines: int = 0  # an LFO-swept delay of the input (chorus, flanger, vibrato); 0 = none, 1 = one
    mod_harmonics: int = 5  # the sweep's shape: a sum of this many harmonics of the LFO's phase
    mod_max: int = 2048  # longest swept delay, samples (the state holds this much of the input)
    mod_echoes: int = 1  # passes through the swept delay: 1 = none fed back; more = a flanger's regeneration,
    #                      its repeats unrolled (each read where the fed-back one lands), weighted f^(m-1)
    n_bins: int = 64  # analysis filterbank channels (Hann-windowed DFT bins, log-spaced)
    learn_analysis: bool = True  # learn the filterbank from its DFT init (it learns far faster; a
    #                              fixed one keeps magnitudes phase-invariant: less hop-rate ripple)
    d_model: int = 64
    n_heads: int = 4
    n_blocks: int = 2
    ffn_mult: int = 2
    local_frames: int = 32  # local attention window, frames (current frame included)
    mem_block_frames: int = 32  # frames pooled into one memory slot
    mem_slots: int = 24  # memory reach = mem_slots * mem_block_frames frames
    mem2_block_frames: int = 256  # the coarse memory level: frames per slot
    mem2_slots: int = 16  # 0 = no coarse level; reach 16 x 256 frames = 5.5 s at hop 64
    attention: str = "sparse"  # "sparse" (the product) | "dense" | "none" (comparison only)
    max_log_gain: float = 6.0  # |s| bound: exp(6) = +-52 dB

    def __post_init__(self):
        past = max(self.fir_taps, self.shaper_pre_taps if self.shaper_units else 0) - 1
        if self.window % self.hop or self.window - self.hop < past:
            raise ValueError(f"window {self.window} must be a multiple of hop {self.hop} and leave "
                             f"{past} past samples for the FIR taps")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        if self.attention not in ("sparse", "dense", "none"):
            raise ValueError(f"attention {self.attention!r} must be sparse, dense or none")
        if self.delay_lines and not (self.hop < self.delay_min < self.delay_max):
            raise ValueError(f"delay lines need hop {self.hop} < delay_min {self.delay_min} < delay_max {self.delay_max}")
        if self.mod_lines not in (0, 1) or (self.mod_lines and (self.mod_max < 2 or self.mod_echoes < 1)):
            raise ValueError(f"mod_lines {self.mod_lines} must be 0 or 1 (mod_max {self.mod_max} >= 2, "
                             f"mod_echoes {self.mod_echoes} >= 1)")
        if self.delay_lines and not all(float16_exact(v) == v for v in (self.delay_min, self.delay_max - self.delay_min)):
            # a float16 bundle stores these two constants in float16: rounded, every delay would be off
            raise ValueError(f"delay_min {self.delay_min} and delay_max - delay_min {self.delay_max - self.delay_min} "
                             f"must be exact in float16 (training.model.float16_exact)")

    @property
    def latency_samples(self) -> int:
        return self.hop

    @property
    def memory_levels(self) -> list[tuple[int, int]]:
        """[(frames per slot, slots)] of the pooled memory, fine to coarse."""
        return [(d, m) for d, m in ((self.mem_block_frames, self.mem_slots), (self.mem2_block_frames, self.mem2_slots)) if m]

    @property
    def reach_frames(self) -> int:
        return max([d * m for d, m in self.memory_levels] + [self.local_frames])

    @property
    def delay_block(self) -> int:
        """Samples the offline form computes at once: every line reads at least this far back."""
        return self.delay_min - 1

    @property
    def parts(self) -> list[str]:
        return ["gain"] + [p for p, on in (("fir", self.fir_taps), ("shaper", self.shaper_units),
                                           ("delay", self.delay_lines), ("mod", self.mod_lines)) if on]

    def to_dict(self) -> dict:
        return asdict(self)


def float16_exact(v: int) -> int:
    """The largest integer <= v that float16 holds exactly (all up to 2048, then multiples of 2, 4, ...)."""
    step = 1 << max(0, int(v).bit_length() - 11)
    return int(v) // step * step


def float16_parts(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """v -> (hi, lo), both exact in float16, hi + lo = v to float16's precision squared: fitted
    weights a float16 bundle must keep (a delay of 10,000 samples, a level of -30 dB)."""
    hi = np.asarray(v, np.float64).astype(np.float16).astype(np.float64)
    return hi, (v - hi).astype(np.float16).astype(np.float64)


def knob_line(knobs, target, weight=None, ridge: float = 1e-3) -> np.ndarray:
    """Weighted ridge least squares ``target (N,) = knobs (N, K) . w + b`` (the constant b not
    penalised) -> (w_1..w_K, b): the knob -> value fits made before training (level, drive)."""
    k = np.asarray(knobs, np.float64)
    r = np.asarray(target, np.float64)
    w = np.ones(len(k)) if weight is None else np.asarray(weight, np.float64)
    a = np.hstack([k, np.ones((len(k), 1))]) * np.sqrt(w)[:, None]
    pen = ridge * w.sum() * np.eye(a.shape[1])
    pen[-1, -1] = 0.0
    return np.linalg.solve(a.T @ a + pen, a.T @ (r * np.sqrt(w)))


# Size tiers: parameter counts and multiply-adds per second are printed by `python -m training.model`.
TIERS = {
    "nano": dict(d_model=32, n_heads=2, n_blocks=1, n_bins=32, local_frames=16, mem_slots=16, mem2_slots=8),
    "small": dict(),  # the default
    "standard": dict(d_model=96, n_heads=4, n_blocks=3, n_bins=96, local_frames=32, mem_slots=32),
}


def tier_config(tier: str = "small", **overrides) -> ModelConfig:
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r} (choose from {sorted(TIERS)})")
    return ModelConfig(**{**TIERS[tier], **overrides})


def dft_init(window: int, n_bins: int) -> torch.Tensor:
    """(2*n_bins, window) rows of a Hann-windowed DFT (cos then sin) at log-spaced bins."""
    bins = torch.unique(torch.round(torch.logspace(0, math.log10(window // 2), n_bins)).long())
    extra = [b for b in range(1, window // 2) if b not in set(bins.tolist())]
    bins = torch.cat([bins, torch.tensor(extra[: n_bins - len(bins)], dtype=torch.long)]).sort().values
    n = torch.arange(window, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * math.pi * (n + 0.5) / window)
    ang = 2 * math.pi * bins[:, None].double() * n[None, :] / window
    # unnormalised (peak 1): small weights would fall into float16's subnormal range
    w = torch.cat([torch.cos(ang), torch.sin(ang)]) * hann
    return w.float()


class SparseAttention(nn.Module):
    """Causal local-window + pooled-memory attention over frames. Linear in T."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.h, self.hd = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        n_slots = cfg.local_frames + sum(m for _, m in cfg.memory_levels) if cfg.attention == "sparse" else 0
        # learned relative-position bias per head and slot: local distances, then memory ages (level by level)
        self.slot_bias = nn.Parameter(torch.zeros(cfg.n_heads, max(n_slots, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, d)
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.view(B, T, self.h, self.hd) * self.hd ** -0.5
        k = k.view(B, T, self.h, self.hd)
        v = v.view(B, T, self.h, self.hd)
        if self.cfg.attention == "dense":
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, scale=1.0)  # q pre-scaled
            return self.out(y.transpose(1, 2).reshape(B, T, d))
        L = self.cfg.local_frames
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, T, hd)
        # local window, blocked: queries in block b see keys of blocks b-1 and b, masked to t-L+1..t.
        # Keys before the start are zeros (not masked), as in a zero-initialised streaming cache.
        nbk = -(-T // L)
        Tp = nbk * L
        qb = F.pad(q, (0, 0, 0, Tp - T)).view(B, self.h, nbk, L, self.hd)
        def windows(t):  # (B, h, T, hd) -> (B, h, nbk, 2L, hd)
            t = F.pad(t, (0, 0, L, Tp - T))
            return torch.cat([t[:, :, :-L].view(B, self.h, nbk, L, self.hd), t[:, :, L:].view(B, self.h, nbk, L, self.hd)], 3)
        kw, vw = windows(k), windows(v)
        logits = [(qb @ kw.transpose(-1, -2) + self._local_bias()).reshape(B, self.h, Tp, 2 * L)[:, :, :T]]
        # pooled memory on absolute grids: frame t sees the M blocks before c = (t+1) // D.
        # Grouping queries by c: shift by one frame so that group g holds frames g*D-1 .. g*D+D-2.
        mems, off = [], L
        for D, M in self.cfg.memory_levels:
            G, nb = -(-(T + 1) // D), T // D
            qg = F.pad(q, (0, 0, 1, G * D - T - 1)).view(B, self.h, G, D, self.hd)
            def memory(t):  # (B, h, T, hd) -> (B, h, G, M, hd): mean of each completed block, last M per group
                blocks = t[:, :, : nb * D].reshape(B, self.h, nb, D, self.hd).sum(3) / D
                return F.pad(blocks, (0, 0, M, 0)).unfold(2, M, 1)[:, :, :G].transpose(-1, -2)
            km, vm = memory(k), memory(v)
            logits.append((qg @ km.transpose(-1, -2)).reshape(B, self.h, G * D, M)[:, :, 1: T + 1]
                          + self.slot_bias[:, None, off: off + M])
            mems.append((D, M, G, vm))
            off += M
        p = torch.cat(logits, dim=-1).softmax(-1)  # (B, h, T, 2L + sum M)
        p_loc = F.pad(p[..., : 2 * L], (0, 0, 0, Tp - T)).view(B, self.h, nbk, L, 2 * L)
        y = (p_loc @ vw).reshape(B, self.h, Tp, self.hd)[:, :, :T]
        off = 2 * L
        for D, M, G, vm in mems:
            p_mem = F.pad(p[..., off: off + M], (0, 0, 1, G * D - T - 1)).view(B, self.h, G, D, M)
            y = y + (p_mem @ vm).reshape(B, self.h, G * D, self.hd)[:, :, 1: T + 1]
            off += M
        return self.out(y.transpose(1, 2).reshape(B, T, d))

    def _local_bias(self):  # (h, L, 2L): slot bias by distance, -inf outside the window
        L = self.cfg.local_frames
        i = torch.arange(L, device=self.slot_bias.device)[:, None]
        j = torch.arange(2 * L, device=self.slot_bias.device)[None, :]
        slot = j - i - 1  # step form orders local slots oldest first: slot L-1 is the current frame
        valid = (slot >= 0) & (slot < L)
        bias = self.slot_bias[:, slot.clamp(0, L - 1)]
        return bias.masked_fill(~valid, float("-inf"))[:, None]  # (h, 1, L, 2L)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, elementwise_affine=False)
        self.attn = SparseAttention(cfg) if cfg.attention != "none" else None
        self.ln2 = nn.LayerNorm(cfg.d_model, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.d_model, cfg.ffn_mult * cfg.d_model), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_mult * cfg.d_model, cfg.d_model))

    def forward(self, x, film):  # x (B, T, d); film (B, T, 4, d): scale/shift for attention and FFN inputs
        if self.attn is not None:
            x = x + self.attn(self.ln1(x) * (1 + film[:, :, 0]) + film[:, :, 1])
        return x + self.ffn(self.ln2(x) * (1 + film[:, :, 2]) + film[:, :, 3])


def ramp_between(prev, cur, ramp):
    """Per-sample values across a hop: prev (..., C), cur (..., C), ramp (H,) -> (..., H, C)."""
    return prev[..., None, :] + (cur - prev)[..., None, :] * ramp[:, None]


def steered_fir(past, c, c_prev, ramp):
    """A filter whose taps ramp from c_prev to c across each hop. past (R, H, K): per output sample
    its last K inputs, oldest first; c, c_prev (R, K) -> (R, H). Ramping the taps = ramping between
    the outputs of the two filters (linear in c): one small matmul with both tap sets (``past`` is
    read once: the product is memory-bound), no (R, H, K) tap tensor."""
    both = torch.bmm(past, torch.stack([c_prev, c], dim=-1))  # (R, H, 2)
    before, now = both[..., 0], both[..., 1]
    return before + (now - before) * ramp


def lowpass_bank(n: int, taps: int, sample_rate: int) -> torch.Tensor:
    """(n, taps), oldest tap first: impulse responses of 2-pole Butterworth low-passes (causal, no
    added delay, as an analogue tone control rings) at cut-offs log-spaced from 300 Hz to 6 kHz,
    truncated to ``taps`` and scaled to unity gain at DC."""
    out = torch.zeros(n, taps, dtype=torch.float64)
    for i, fc in enumerate(np.geomspace(300.0, 6000.0, n)):
        w = 2 * math.pi * fc / sample_rate
        alpha = math.sin(w) / math.sqrt(2.0)  # Q = 1/sqrt(2)
        a0, a1, a2 = 1 + alpha, -2 * math.cos(w), 1 - alpha
        b = [(1 - math.cos(w)) / 2, 1 - math.cos(w), (1 - math.cos(w)) / 2]
        y1 = y2 = 0.0
        h = []
        for t in range(taps):
            x0, x1, x2 = (t == 0), (t == 1), (t == 2)
            y = (b[0] * x0 + b[1] * x1 + b[2] * x2 - a1 * y1 - a2 * y2) / a0
            h.append(y)
            y1, y2 = y, y1
        h = torch.tensor(h, dtype=torch.float64)
        out[i] = (h / h.sum()).flip(0)  # newest tap last
    return out.float()


def toeplitz(h, H: int):
    """Filters h (F, K), oldest tap first -> (H + K - 1, F * H): a segment of K - 1 past samples
    and H new ones, times this, gives each filter's H outputs (filter f in columns f*H..f*H+H-1)."""
    Fn, K = h.shape
    k = torch.arange(H + K - 1)[:, None] - torch.arange(H)[None, :]  # (H + K - 1, H): tap index
    valid = (k >= 0) & (k < K)
    cols = h[:, k.clamp(0, K - 1)] * valid  # (F, H + K - 1, H)
    return cols.permute(1, 0, 2).reshape(H + K - 1, Fn * H)


def causal_filter(x, h):
    """x (B, N), filters h (F, K), oldest tap first -> (B, F, N): y_f[n] = sum_j h[f, j] x[n - K + 1 + j],
    the past before the chunk silent. By FFT: for the long fixed filters (128-256 taps) of the
    offline form, a direct convolution's backward pass (the filters' gradient) cost 6x its forward
    and a third of a drive's training step; the FFT's error (float32, ~1e-7 of the signal) is far
    below the streaming form's tolerance."""
    N, K = x.shape[-1], h.shape[-1]
    n = 1 << (N + K - 1 - 1).bit_length()
    X = torch.fft.rfft(x, n)
    Hf = torch.fft.rfft(h.flip(-1), n)
    return torch.fft.irfft(X[:, None] * Hf[None], n)[..., :N]


def mod_rate(v):
    """(1 + v / 16) ** 16 by four squarings: an exp-like curve (a log-taper rate knob is nearly a
    line in v) in exactly rounded operations only, so that every form and runtime computes the same
    rate to the last bit (exp is not rounded alike everywhere, and a rate off by an ulp moves the
    LFO's phase, summed hop by hop, further every hop). Four, not more: each squaring doubles the
    float32 rounding of the base (16 x 6e-8 = 1e-6 of the rate at most)."""
    r = 1.0 + v * 0.0625
    for _ in range(4):
        r = r * r
    return r


def mod_rate_inverse(rate):
    """The v at which mod_rate(v) = rate (numpy, float64)."""
    return 16.0 * (np.power(rate, 1.0 / 16) - 1.0)


def tree_sum(v):
    """(..., L) -> (..., 1): the last axis summed in pairwise halves, in the same order of additions
    whatever the leading shape (a batch of frames offline, one frame streaming)."""
    while v.shape[-1] > 1:
        h = v.shape[-1] // 2
        pair = v[..., :h] + v[..., h:2 * h]
        v = torch.cat([pair, v[..., 2 * h:]], dim=-1) if v.shape[-1] % 2 else pair
    return v


def read_delayed(buf, now, d):
    """buf (..., L) at fractional delays d (..., P) before the indices ``now`` (P,), linearly
    interpolated. The integer part of d is subtracted as an integer and the fraction comes from d
    alone, so the offline and the streaming form (whose buffers start at different offsets) round
    the same way."""
    whole = torch.floor(d)
    frac = d - whole
    i = now - whole.long()  # the sample at the whole delay; frac reaches one sample further back
    return torch.gather(buf, -1, i) * (1 - frac) + torch.gather(buf, -1, i - 1) * frac


class SignalTrainPi(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.analysis = nn.Linear(cfg.window, 2 * cfg.n_bins, bias=False)
        with torch.no_grad():
            self.analysis.weight.copy_(dft_init(cfg.window, cfg.n_bins))
        self.analysis.weight.requires_grad_(cfg.learn_analysis)
        self.in_proj = nn.Linear(cfg.n_bins, d)  # no LayerNorm here: it would erase the absolute level
        # knobs -> FiLM scale/shift for the input and for each block's attention and FFN inputs
        self.n_film = 2 + 4 * cfg.n_blocks
        self.film = nn.Sequential(nn.Linear(cfg.n_knobs, 64), nn.GELU(approximate="tanh"), nn.Linear(64, self.n_film * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_blocks))
        self.ln_out = nn.LayerNorm(d, elementwise_affine=False)
        # the heads see the knobs directly too: a level or drive knob in dB is a log-gain linear in
        # its position, learned in a few steps instead of through the trunk's normalised features
        self.gain_head = nn.Linear(d + cfg.n_knobs, 1)
        # the recorded level, fitted before training (fit_level), added to the gain head's output: per
        # knob weight and a constant, each as a float16 part and a float16 remainder (row 0, row 1), so
        # that a float16 bundle keeps a -30 dB level to 1e-6 instead of 1e-3 (55 dB SNR)
        self.register_buffer("level_w", torch.zeros(2, cfg.n_knobs))
        self.register_buffer("level_b", torch.zeros(2))
        self.fir_head = nn.Linear(d, cfg.fir_taps) if cfg.fir_taps else None
        J = cfg.shaper_units
        if J:
            # per frame: pre-gain g (1), unit biases beta (J), post-filter taps (post_taps), bank mix (bank)
            self.shaper_head = nn.Linear(d + cfg.n_knobs, 1 + J + cfg.shaper_post_taps + cfg.shaper_bank)
            pre = torch.zeros(cfg.shaper_pre_taps)
            pre[-1] = 1.0  # oldest tap first: the newest tap is the identity
            self.shaper_pre = nn.Parameter(pre)
            # unit slopes log-spaced 0.25..4: with weights 1/(J a_j) the sum has slope 1 at 0 and
            # already clips at several levels; the optimiser moves log-slopes (scale-free steps)
            self.shaper_log_slope = nn.Parameter(torch.linspace(math.log(0.25), math.log(4.0), J))
            self.shaper_weight = nn.Parameter(1.0 / (J * torch.exp(self.shaper_log_slope.detach().clone())))
            # the post-filter starts as the identity (its newest tap 1): the chain starts as y = gain * z,
            # z ~ x for small signals, already clipping for loud ones; the gain path sets the level
            ident = torch.zeros(cfg.shaper_post_taps)
            ident[-1] = 1.0
            self.register_buffer("shaper_identity", ident, persistent=False)
            if cfg.shaper_bank:
                # the bank starts as low-passes at log-spaced cut-offs (300 Hz .. 6 kHz), mixed in at
                # zero: the chain starts where it did without, and a tone knob has a direction to go
                self.shaper_bank = nn.Parameter(lowpass_bank(cfg.shaper_bank, cfg.shaper_bank_taps, cfg.sample_rate))
        self.delay_head = None
        if cfg.delay_lines:
            # A delay time is a setting: it comes from the knobs alone (steered by the attention
            # stream, float32 noise of the trunk, 1e-6, would move a 10,000-sample delay by 1e-2
            # samples). It is fitted, not learned (fit_delay_map): the audio loss's gradient with
            # respect to a delay is the signal's slope, random in sign a sample away from the right
            # one. The map: per knob a cubic spline (u, u^2 and truncated cubes at knots every
            # 1/DELAY_KNOTS), summed over the knobs; each weight is stored as a float16 part plus a
            # float16 remainder, so that a float16 bundle keeps the delays to a fraction of a sample.
            n_basis = cfg.n_knobs * (2 + DELAY_KNOTS)
            self.register_buffer("delay_w_hi", torch.zeros(cfg.delay_lines, n_basis))
            self.register_buffer("delay_w_lo", torch.zeros(cfg.delay_lines, n_basis))
            self.register_buffer("delay_b", torch.tensor([[0.5, 0.0]]).repeat(cfg.delay_lines, 1))  # hi, lo
            self.delay_head = nn.Linear(d + cfg.n_knobs, 2 * cfg.delay_lines)  # per line: feedback, wet level
        if cfg.delay_lines or cfg.mod_lines:  # the knob maps' spline knots
            self.register_buffer("delay_knots", torch.arange(DELAY_KNOTS).float().view(1, -1) / DELAY_KNOTS,
                                 persistent=False)
        self.mod_head = None
        if cfg.mod_lines:
            # An LFO-swept delay (fit_mod, from training/lfo.py's measurement): its rate and the shape
            # of its sweep are settings, maps of the knobs (the delay map's spline), fitted, not
            # learned (as a delay, a swept one has no useful gradient from afar). The shape map gives
            # one coefficient per harmonic (a constant, then sin, cos of k x phase). Rows:
            # the map's weights, then its constant; each as a float16 part and a remainder. The rate
            # map gives v, the rate is mod_rate(v) (about exp(v): a log-taper rate knob is a line).
            n_basis = cfg.n_knobs * (2 + DELAY_KNOTS)
            C = 1 + 2 * cfg.mod_harmonics
            self.register_buffer("mod_rate_hi", torch.zeros(1, n_basis + 1))
            self.register_buffer("mod_rate_lo", torch.zeros(1, n_basis + 1))
            self.register_buffer("mod_shape_hi", torch.zeros(C, n_basis + 1))
            self.register_buffer("mod_shape_lo", torch.zeros(C, n_basis + 1))
            self.register_buffer("mod_phase0", torch.zeros(2))  # turns at the effect's reset: hi, lo
            self.register_buffer("mod_frac", torch.arange(cfg.hop).float() / cfg.hop, persistent=False)
            # 2 pi as a float16 part and a remainder (2 pi in float16 is 3e-4 off: a 300-sample sweep
            # would be off by 0.1 sample, 33 dB)
            self.register_buffer("mod_two_pi", torch.from_numpy(np.concatenate(float16_parts(np.array([2 * math.pi])))).float(),
                                 persistent=False)
            self.mod_head = nn.Linear(d + cfg.n_knobs, 1 + (cfg.mod_echoes > 1))  # wet level (, feedback)
        for lin in (self.gain_head, self.fir_head, getattr(self, "shaper_head", None), self.delay_head, self.mod_head,
                    self.film[-1]):
            if lin is None:
                continue
            nn.init.normal_(lin.weight, std=1e-3)
            nn.init.zeros_(lin.bias)
        # raised-cosine ramp from one hop's values to the next: no slope corners at the hop rate
        # (a linear ramp puts sidebands at multiples of sample_rate / hop around every tone)
        i = torch.arange(1, cfg.hop + 1, dtype=torch.float64)
        self.register_buffer("ramp", (0.5 - 0.5 * torch.cos(math.pi * i / cfg.hop)).float(), persistent=False)

    # --- pieces shared by the offline and the streaming form -------------------------------------
    def features(self, frames):  # (..., window) -> (..., n_bins): log power of the filterbank
        z = self.analysis(frames)
        re, im = z[..., : self.cfg.n_bins], z[..., self.cfg.n_bins:]  # slices, not split: SPLIT_V became a Flex op
        return torch.log(re * re + im * im + 1e-6)

    def trunk_in(self, feats, knobs):  # feats (B, T, bins), knobs (B, T, K) in 0..1
        B, T, _ = feats.shape
        film = self.film(knobs).view(B, T, self.n_film, self.cfg.d_model)
        h = self.in_proj(0.1 * feats) * (1 + film[:, :, 0]) + film[:, :, 1]  # log power / 10: order 1
        return h, film

    def heads(self, h, knobs) -> dict:
        """(B, T, d), knobs (B, T, K) -> per-frame values of every part, each (B, T, C), ramped later across the hop:
        gain (log-gain), fir (taps, oldest first), shaper (pre-gain, unit biases, post taps),
        delay (per line: position in the delay range 0..1, feedback, wet level)."""
        cfg = self.cfg
        h = self.ln_out(h)
        hk = torch.cat([h, knobs], dim=-1)
        m = cfg.max_log_gain
        out = {"gain": m * torch.tanh((self.gain_head(hk) + self.level(knobs)) / m)}
        if self.fir_head is not None:
            out["fir"] = cfg.fir_scale * self.fir_head(h)
        if cfg.shaper_units:
            z = self.shaper_head(hk)
            J = cfg.shaper_units
            Kq = cfg.shaper_post_taps
            out["shaper"] = torch.cat([m * torch.tanh(z[..., :1] / m), 2.0 * torch.tanh(z[..., 1:1 + J]),
                                       cfg.fir_scale * z[..., 1 + J:1 + J + Kq] + self.shaper_identity,
                                       z[..., 1 + J + Kq:]], dim=-1)
        if self.delay_head is not None:
            z = self.delay_head(hk)
            n = cfg.delay_lines
            pos = torch.clamp(self.delay_from_knobs(knobs), 0.0, 1.0)
            out["delay"] = torch.cat([pos, 0.98 * torch.tanh(z[..., :n]), z[..., n:]], dim=-1)
        if self.mod_head is not None:  # the sweep's harmonics' coefficients (samples), wet level (, feedback)
            z = self.mod_head(hk)
            fb = [0.98 * torch.tanh(z[..., 1:])] if cfg.mod_echoes > 1 else []
            out["mod"] = torch.cat([self.knob_map(knobs, self.mod_shape_hi, self.mod_shape_lo), z[..., :1]] + fb, dim=-1)
        return out

    def knob_map(self, knobs, hi, lo):
        """knobs (..., K) -> (..., C): a spline map of the knobs, weights ``hi`` + ``lo`` (C, n_basis + 1),
        constant last, the two parts summed apart. One row (C = 1): exactly rounded operations in a
        fixed order, the same in every form (see delay_from_knobs); more rows: a matmul, whose
        rounding depends on the shapes (an ulp of a delay of hundreds of samples is 1e-4 of a sample)."""
        b = self.delay_basis(knobs)
        n = b.shape[-1]
        if hi.shape[0] == 1:
            return (tree_sum(b * hi[:, :n]) + hi[:, n:]) + (tree_sum(b * lo[:, :n]) + lo[:, n:])
        return (b @ hi[:, :n].t() + hi[:, n]) + (b @ lo[:, :n].t() + lo[:, n])

    def mod_increment(self, knobs):
        """knobs (..., K) -> (..., 1): the LFO's phase advance per hop, in turns (rate x hop / sample
        rate: the map is fitted to it, so that no constant a float16 bundle would round multiplies it)."""
        return mod_rate(self.knob_map(knobs, self.mod_rate_hi, self.mod_rate_lo))

    def mod_delays(self, phase, inc, coef):
        """The swept delay's reads over one hop: phase, inc (..., 1) (turns at the hop's first sample,
        per hop), coef (..., H, C) per-sample coefficients -> [(..., H)] per pass, samples within
        0..mod_max - 1: the first read d(u), then each fed-back pass D + 1 + d(u at D + 1 samples
        earlier), where that pass entered the line. A list, not one stacked tensor: onnx2tf got
        the columns of an (H, passes) tensor wrong (a gather out of bounds)."""
        cfg = self.cfg
        u = phase + inc * self.mod_frac + self.mod_phase0[0] + self.mod_phase0[1]  # (..., H) turns
        D = self._sweep(u, coef)
        reads = [D]
        for _ in range(cfg.mod_echoes - 1):
            D = D + 1.0 + self._sweep(u - (D + 1.0) * (inc * (1.0 / cfg.hop)), coef)
            reads.append(D)
        return [torch.clamp(r, 0.0, float(cfg.mod_max - 1)) for r in reads]

    def _sweep(self, u, coef):  # u (..., H) turns, coef (..., H, C) -> (..., H) the delay there
        # one sin per column, not one over a (..., H, 2 x harmonics) tensor: onnx2tf converted that
        # broadcast wrongly (float32 SNR 1.7 dB against PyTorch, convert.bench_stream, 2026-12-01)
        cols = [torch.ones_like(u)]
        for k in range(1, self.cfg.mod_harmonics + 1):
            v = u * float(k)
            v = v - torch.floor(v)  # the harmonic's own phase, wrapped: full precision
            for w in (v, v + 0.25):  # sin, then cos as a sine a quarter turn on (one builtin op)
                cols.append(torch.sin(w * self.mod_two_pi[0] + w * self.mod_two_pi[1]))
        return tree_sum(torch.stack(cols, dim=-1) * coef)[..., 0]

    def _mod_mix(self, reads, r):
        """reads [(...,)] the input read at each pass's delay, r (..., C + 1 [+ 1]) per-sample values
        -> (...,): the wet level times the reads, each fed-back pass weighted by the feedback once more."""
        y, w = 0.0, r[..., self.cfg.mod_harmonics * 2 + 1]
        for m in range(self.cfg.mod_echoes):
            y = y + w * reads[m]
            if m + 1 < self.cfg.mod_echoes:
                w = w * r[..., -1]
        return y

    def mod_start_phase(self, knobs, start):
        """knobs (B, K), start (B,) samples from the effect's reset -> (B, 1) the LFO's phase there
        (turns, before the fitted phase0): a training chunk cut from the middle of a pair."""
        inc = self.mod_increment(knobs).double()
        ph = inc * (torch.as_tensor(start, dtype=torch.float64, device=inc.device).view(-1, 1) / self.cfg.hop)
        return (ph - torch.floor(ph)).float()

    @torch.no_grad()
    def fit_mod(self, lfo) -> dict:
        """Set the swept delay from training/lfo.py's measurement (an ``LfoFit`` that found one)."""
        cfg = self.cfg
        if not lfo.modulated:
            raise ValueError(f"no swept delay to fit: {lfo.reason}")
        if lfo.shape_map.shape[1] != 1 + 2 * cfg.mod_harmonics:
            raise ValueError(f"the measurement has {(lfo.shape_map.shape[1] - 1) // 2} harmonics, the model "
                             f"{cfg.mod_harmonics}")
        # the rate map in the model's terms: v = mod_rate's inverse of the measured map's rate, fitted
        # over knob settings spread through the whole knob space (the model's map has every knot)
        from .lfo import spline_basis
        u = np.random.default_rng(0).random((max(4096, 256 * cfg.n_knobs), cfg.n_knobs))
        want = lfo.rate(u) * (cfg.hop / cfg.sample_rate)  # turns per hop
        if (want <= 0).any():
            raise ValueError(f"the measured rate map goes to {want.min() * cfg.sample_rate / cfg.hop:.3g} Hz somewhere "
                             f"in the knobs' range")
        a = np.hstack([spline_basis(u), np.ones((len(u), 1))])
        v = np.linalg.lstsq(a, mod_rate_inverse(want), rcond=None)[0]
        got = mod_rate(torch.from_numpy(a @ v)).numpy()
        maps = (((self.mod_rate_hi, self.mod_rate_lo), v[:, None]), ((self.mod_shape_hi, self.mod_shape_lo), lfo.shape_map))
        for (hi, lo), m in maps:
            h, l = float16_parts(np.asarray(m, np.float64).T)
            hi.copy_(torch.from_numpy(h).float())
            lo.copy_(torch.from_numpy(l).float())
        h, l = float16_parts(np.array([lfo.phase0 % 1.0]))
        self.mod_phase0.copy_(torch.tensor([h[0], l[0]]).float())
        return {"phase0": lfo.phase0, "rate_error_max": float(np.abs(got / want - 1.0).max())}

    def delay_basis(self, knobs):
        """knobs (..., K) -> (..., K * (2 + DELAY_KNOTS)): per knob u, u^2, relu(u - t)^3 at each knot t."""
        cols = []
        for i in range(knobs.shape[-1]):
            u = knobs[..., i:i + 1]
            r = F.relu(u - self.delay_knots)
            cols += [u, u * u, r * r * r]
        return torch.cat(cols, dim=-1)

    def delay_from_knobs(self, knobs):
        """knobs (..., K) -> (..., lines): each line's position in its delay range (0..1 once
        clamped). Elementwise products and a pairwise sum (tree_sum) only, so that a batch of
        frames and a single frame round alike (a matmul's order of additions depends on the
        tensor's shape, and one ulp of a 10,000-sample delay moves the output by 1e-3 samples'
        worth of slope), and only exactly rounded operations (no exp or tanh, whose vector and
        scalar code paths differ in the last bit). The high and low parts are summed apart: a
        converter that folded ``b * hi + b * lo`` into ``b * (hi + lo)`` would round the sum to
        float16 in a float16 bundle."""
        b = self.delay_basis(knobs)
        out = []
        for i in range(self.cfg.delay_lines):
            hi = tree_sum(b * self.delay_w_hi[i:i + 1]) + self.delay_b[i:i + 1, :1]
            lo = tree_sum(b * self.delay_w_lo[i:i + 1]) + self.delay_b[i:i + 1, 1:]
            out.append(hi + lo)
        return torch.cat(out, dim=-1)

    @torch.no_grad()
    def fit_delay_map(self, knobs, delays, line: int = 0, ridge: float = 1e-9, outlier_samples: float = 8.0) -> dict:
        """Least squares: the line's delay at each pair's knobs (N, K), in 0..1) equals the pair's
        measured delay (N,) in samples. A small ridge keeps the spline's weights from cancelling
        each other (float32 evaluates them). A pair the fit misses by more than ``outlier_samples``
        (and 5x the median miss) is left out and the fit repeated: a measurement that caught the
        wrong peak must not bend the map for every other setting. -> the fit's errors in samples
        on the pairs it kept, as the model computes it, and the pairs it left out."""
        cfg = self.cfg
        knobs = np.asarray(knobs, np.float64)
        delays = np.asarray(delays, np.float64)
        span = float(cfg.delay_max - cfg.delay_min)
        a = self.delay_basis(torch.from_numpy(knobs)).numpy()  # (N, L)
        a1 = np.hstack([a, np.ones((len(a), 1))])
        target = (delays - cfg.delay_min) / span
        keep = np.ones(len(a), bool)
        for _ in range(4):
            pen = ridge * np.trace(a[keep].T @ a[keep]) / a.shape[1] * np.eye(a1.shape[1])
            pen[-1, -1] = 0.0  # the constant is free
            sol = np.linalg.solve(a1[keep].T @ a1[keep] + pen, a1[keep].T @ target[keep])
            miss = np.abs(a1 @ sol - target) * span
            now = miss <= max(outlier_samples, 5.0 * float(np.median(miss[keep])))
            if (now == keep).all():
                break
            keep = now
        hi, lo = float16_parts(sol)
        self.delay_w_hi[line] = torch.from_numpy(hi[:-1]).float()
        self.delay_w_lo[line] = torch.from_numpy(lo[:-1]).float()
        self.delay_b[line] = torch.tensor([hi[-1], lo[-1]]).float()
        got = self.delay_positions(torch.clamp(self.delay_from_knobs(torch.from_numpy(knobs).float())[:, line], 0, 1))
        err = (got.double().numpy() - delays)[keep]
        return {"pairs": int(keep.sum()), "left_out": np.flatnonzero(~keep).tolist(),
                "rms_samples": float(np.sqrt(np.mean(err ** 2))), "max_samples": float(np.abs(err).max())}

    def level(self, knobs):
        """knobs (..., K) -> (..., 1): the fitted level in log-gain; the high and low parts summed apart
        (a converter that folded them would round the sum to float16 in a float16 bundle)."""
        hi = tree_sum(knobs * self.level_w[0]) + self.level_b[0:1]
        lo = tree_sum(knobs * self.level_w[1]) + self.level_b[1:2]
        return hi + lo

    @torch.no_grad()
    def fit_level(self, knobs, log_ratio, ridge: float = 1e-3) -> dict:
        """Start the gain path at the recorded level: least squares ``log_ratio`` (N,), each pair's
        log(RMS target / RMS input), = b + w . knobs (N, K) in 0..1, stored in ``level_w``/``level_b``
        and added to the gain head's output (which starts near zero and learns what the level fit
        misses). Adam moves a weight by about the learning rate per step, so a level knob spanning
        24 dB (2.8 in log-gain) took more steps than a 3-minute budget has. -> the fit's rms miss in dB."""
        k = np.asarray(knobs, np.float64)
        r = np.asarray(log_ratio, np.float64)
        m = self.cfg.max_log_gain
        sol = np.clip(knob_line(k, r, ridge=ridge), -0.9 * m, 0.9 * m)
        hi, lo = float16_parts(sol)
        self.level_w.copy_(torch.from_numpy(np.stack([hi[:-1], lo[:-1]])).float())
        self.level_b.copy_(torch.tensor([hi[-1], lo[-1]]).float())
        miss = (k @ sol[:-1] + sol[-1] - r) * 20 / math.log(10)
        return {"pairs": len(r), "rms_miss_db": float(np.sqrt(np.mean(miss ** 2))), "bias_db": float(sol[-1] * 20 / math.log(10))}

    @torch.no_grad()
    def fit_pre_gain(self, knobs, log_gain, weight, ridge: float = 1e-3, min_weight: float = 0.2,
                     min_share: float = 0.1):
        """Start the shaper's pre-gain at the drive the pairs show (``log_gain`` per pair, nats, and
        its ``weight``, from training.train.pre_gains): weighted least squares of the head's
        pre-activation on the knobs, written into the shaper head's bias and knob weights (the
        trunk's weights stay as they start). A 40 dB drive knob would otherwise start at 0 dB and
        move about the learning rate per step (as the level did). Only pairs whose best pre-gain
        removes at least ``min_weight`` of the error count (a chorus or a de-noiser, which no
        clipping explains, gets weights up to ~0.15 from chance); None when fewer than
        ``min_share`` of the scanned pairs do (nothing clips: the start stays at 0 dB); else a dict
        with the fit's pre-gain per pair (nats), its value at knobs 0 and its rms miss, in dB."""
        w = np.asarray(weight, np.float64)
        scanned = np.isfinite(np.asarray(log_gain, np.float64))
        keep = scanned & (w >= min_weight)
        if keep.sum() < max(min_share * scanned.sum(), 1):
            return None
        m = self.cfg.max_log_gain
        k = np.asarray(knobs, np.float64)
        z = m * np.arctanh(np.clip(np.asarray(log_gain, np.float64)[keep] / m, -0.95, 0.95))
        sol = knob_line(k[keep], z, w[keep], ridge)
        self.shaper_head.bias[0] = float(sol[-1])
        self.shaper_head.weight[0, -k.shape[1]:] = torch.from_numpy(sol[:-1]).float()
        per_pair = m * np.tanh((k @ sol[:-1] + sol[-1]) / m)
        db = 20 / math.log(10)
        miss = (per_pair[keep] - np.asarray(log_gain, np.float64)[keep]) * db
        return {"per_pair": per_pair, "at_zero_db": float(m * np.tanh(sol[-1] / m) * db),
                "rms_miss_db": float(np.sqrt(np.sum(w[keep] * miss ** 2) / w[keep].sum())), "pairs": int(keep.sum())}

    def waveshape(self, u, beta):
        """u (..., H), beta (..., H, J) -> (..., H): sum_j w_j [tanh(a_j u + beta_j) - tanh(beta_j)].
        The subtraction keeps silence silent (no DC from the biases)."""
        # the slopes as a (1, J) row, not (J,): onnx2tf reads a 1-D constant of more than two values
        # that feeds a unary op (Exp here) as an NCHW shape and permutes it to [0, 2, ..., J-1, 1],
        # pairing each unit's slope with another unit's weight (z came out 1.25x too large)
        a = torch.exp(self.shaper_log_slope.view(1, -1))
        return ((torch.tanh(u[..., None] * a + beta) - torch.tanh(beta)) * self.shaper_weight.view(1, -1)).sum(-1)

    def delay_positions(self, pos01):
        """Position in the delay range 0..1 -> delay in samples, delay_min..delay_max."""
        cfg = self.cfg
        return cfg.delay_min + (cfg.delay_max - cfg.delay_min) * pos01

    # --- offline (training) form ------------------------------------------------------------------
    def forward(self, x: torch.Tensor, knobs: torch.Tensor, start=None) -> torch.Tensor:
        """x (B, N) with N a multiple of hop; knobs (B, K) or per frame (B, N // hop, K), in 0..1;
        start (B,): where each chunk starts, in samples from the effect's reset (a swept delay's
        LFO phase; None: 0, as the streaming form starts)."""
        cfg = self.cfg
        B, N = x.shape
        H, T = cfg.hop, N // cfg.hop
        if N % H:
            raise ValueError(f"input length {N} is not a multiple of hop {H}")
        if knobs.dim() == 2:
            knobs = knobs[:, None, :].expand(B, T, cfg.n_knobs)
        frames = F.pad(x, (cfg.window - H, 0)).unfold(1, cfg.window, H)  # (B, T, window)
        h, film = self.trunk_in(self.features(frames), knobs)
        for i, blk in enumerate(self.blocks):
            h = blk(h, film[:, :, 2 + 4 * i: 6 + 4 * i])
        hd = self.heads(h, knobs)
        # per-sample values where the path needs them sample by sample (the filters ramp their outputs instead)
        per_sample = {"gain": hd["gain"]}
        if "shaper" in hd:  # pre-gain, unit biases, bank mix
            J, Kq = cfg.shaper_units, cfg.shaper_post_taps
            per_sample["shaper"] = torch.cat([hd["shaper"][..., :1 + J], hd["shaper"][..., 1 + J + Kq:]], dim=-1)
        if "delay" in hd:
            per_sample["delay"] = hd["delay"]
        if "mod" in hd:
            per_sample["mod"] = hd["mod"]
        ramped = {k: ramp_between(F.pad(v[:, :-1], (0, 0, 1, 0)), v, self.ramp) for k, v in per_sample.items()}  # (B, T, H, C)
        gain = torch.exp(ramped["gain"][..., 0])  # (B, T, H)
        y = 0.0
        if "shaper" not in hd:
            y = gain * x.view(B, T, H)
        if "fir" in hd:
            K = cfg.fir_taps
            past = F.pad(x, (K - 1, 0)).unfold(1, K, 1).reshape(B * T, H, K)  # x[n-K+1..n], oldest first
            c = hd["fir"]
            y = y + steered_fir(past, c.reshape(B * T, K), F.pad(c[:, :-1], (0, 0, 1, 0)).reshape(B * T, K),
                                self.ramp).view(B, T, H)
        if "shaper" in hd:
            J, Kp, Kq = cfg.shaper_units, cfg.shaper_pre_taps, cfg.shaper_post_taps
            pre = causal_filter(x, self.shaper_pre.view(1, Kp))[:, 0]  # (B, N)
            r = ramped["shaper"]
            u = torch.exp(r[..., 0]) * pre.view(B, T, H)
            z = self.waveshape(u, r[..., 1:1 + J]).reshape(B, N)
            p = hd["shaper"][..., 1 + J:1 + J + Kq]
            past = F.pad(z, (Kq - 1, 0)).unfold(1, Kq, 1).reshape(B * T, H, Kq)
            post = steered_fir(past, p.reshape(B * T, Kq), F.pad(p[:, :-1], (0, 0, 1, 0)).reshape(B * T, Kq),
                               self.ramp).view(B, T, H)
            if cfg.shaper_bank:
                Kb = cfg.shaper_bank_taps
                zb = causal_filter(z, self.shaper_bank)  # (B, bank, N)
                for i in range(cfg.shaper_bank):  # one at a time: the streaming form's order of additions
                    post = post + zb[:, i].view(B, T, H) * r[..., 1 + J + i]
            y = y + gain * post
        if "delay" in hd:
            y = y + self._delay_offline(x, ramped["delay"].reshape(B, N, -1))
        if "mod" in hd:
            y = y + self._mod_offline(x, knobs, ramped["mod"], start)
        return y.reshape(B, N)

    def _mod_offline(self, x, knobs, r, start):
        """x (B, N), knobs (B, T, K), r (B, T, H, C + 1) per-sample coefficients and wet level -> (B, T, H)."""
        cfg = self.cfg
        B, N = x.shape
        T, H = N // cfg.hop, cfg.hop
        inc = self.mod_increment(knobs)  # (B, T, 1)
        with torch.no_grad():  # the phase hop by hop, with the streaming form's operations (bit for bit)
            ph = self.mod_start_phase(knobs[:, 0], start) if start is not None else x.new_zeros(B, 1)
            phases = []
            for t in range(T):
                phases.append(ph)
                ph = ph + inc[:, t]
                ph = ph - torch.floor(ph)
            phases = torch.stack(phases, dim=1)  # (B, T, 1)
        C = 1 + 2 * cfg.mod_harmonics
        Lm = cfg.mod_max + 1
        xp, now = F.pad(x, (Lm, 0)), Lm + torch.arange(N, device=x.device)
        reads = [read_delayed(xp, now, d.reshape(B, N).detach()).view(B, T, H)
                 for d in self.mod_delays(phases, inc, r[..., :C])]
        return self._mod_mix(reads, r)

    def _delay_offline(self, x, r):
        """x (B, N); r (B, N, 3 * lines) per-sample (position, feedback, wet) -> wet sum (B, T, H)."""
        cfg = self.cfg
        B, N = x.shape
        n = cfg.delay_lines
        d = self.delay_positions(r[..., :n]).transpose(1, 2)  # (B, n, N) samples
        fb, wet = r[..., n:2 * n].transpose(1, 2), r[..., 2 * n:].transpose(1, 2)
        rd = DelayRecursion.apply(x[:, None].expand(B, n, N), d.detach(), fb, cfg.delay_block, cfg.delay_max + 2)
        return (wet * rd).sum(1).view(B, N // cfg.hop, cfg.hop)


class DelayRecursion(torch.autograd.Function):
    """The delay lines offline: rd[t] = b[t - d[t]] (linearly interpolated, read_delayed), with
    b[t] = x[t] + fb[t] rd[t] and b = 0 before the chunk. Every read reaches at least delay_min >
    ``block`` samples back, so a block of samples depends only on the blocks before it: the
    recursion runs block by block in a preallocated history (forward), and its adjoint block by
    block in reverse (backward), instead of autograd recording a window of the history per block
    (4x slower, most of a step's time for an echo). Gradients: x and fb; the delays come from the
    fitted map, not from the loss (d gets none)."""

    @staticmethod
    def forward(ctx, x, d, fb, block: int, lead: int):  # x, d, fb (B, n, N); lead > the longest delay
        B, n, N = x.shape
        hist = x.new_zeros(B, n, lead + N)  # b, after ``lead`` samples of silence
        whole = torch.floor(d)
        frac = d - whole
        idx = lead + torch.arange(N, device=x.device) - whole.long()  # b[t - floor(d)] in hist
        rd = torch.empty_like(x)
        for s in range(0, N, block):
            e = min(s + block, N)
            i, f = idx[..., s:e], frac[..., s:e]
            rd[..., s:e] = torch.gather(hist, -1, i) * (1 - f) + torch.gather(hist, -1, i - 1) * f
            hist[..., lead + s:lead + e] = x[..., s:e] + fb[..., s:e] * rd[..., s:e]
        ctx.save_for_backward(fb, rd, idx, frac)
        ctx.block, ctx.lead = block, lead
        return rd

    @staticmethod
    def backward(ctx, g_rd):
        fb, rd, idx, frac = ctx.saved_tensors
        block, lead = ctx.block, ctx.lead
        B, n, N = rd.shape
        g_hist = rd.new_zeros(B, n, lead + N)  # dL/db, filled by the reads of later blocks
        g_x, g_fb = torch.empty_like(rd), torch.empty_like(rd)
        for s in reversed(range(0, N, block)):
            e = min(s + block, N)
            g_b = g_hist[..., lead + s:lead + e]  # complete: only later blocks read this one
            g_x[..., s:e] = g_b
            g_fb[..., s:e] = g_b * rd[..., s:e]
            g_r = g_rd[..., s:e] + g_b * fb[..., s:e]
            i, f = idx[..., s:e], frac[..., s:e]
            g_hist.scatter_add_(-1, i, g_r * (1 - f))
            g_hist.scatter_add_(-1, i - 1, g_r * f)
        return g_x, None, g_fb, None, None


class StepModel(nn.Module):
    """The streaming form: (audio (1, hop), knobs (1, K), state (1, S)) -> (audio (1, hop), state (1, S)).
    Same weights as the offline model; the flat state holds everything past frames produced, so the
    per-hop cost does not depend on how far back attention reaches."""

    def __init__(self, model: SignalTrainPi):
        super().__init__()
        if model.cfg.attention == "dense":
            raise ValueError("dense attention has no streaming form (it is a comparison, not the product)")
        self.m = model
        cfg = model.cfg
        d, L = cfg.d_model, cfg.local_frames
        parts = [("analysis", (cfg.window - cfg.hop,)), ("log_gain_prev", (1,))]
        if cfg.attention == "sparse":
            parts += [(f"block_phase{lv}", (1,)) for lv in range(len(cfg.memory_levels))]
        if cfg.fir_taps:
            parts.append(("fir_prev", (cfg.fir_taps,)))
        if cfg.shaper_units:
            parts += [("shaper_prev", (1 + cfg.shaper_units + cfg.shaper_post_taps + cfg.shaper_bank,)),
                      ("shaper_z", (self.z_taps - 1,))]
        if cfg.delay_lines:
            parts += [("delay_prev", (3 * cfg.delay_lines,)), ("delay_lines", (cfg.delay_lines, self.line_length))]
        if cfg.mod_lines:
            parts += [("mod_phase", (1,)), ("mod_prev", (2 + 2 * cfg.mod_harmonics + (cfg.mod_echoes > 1),)),
                      ("mod_x", (cfg.mod_max + 1,))]
        if cfg.attention == "sparse":
            for i in range(cfg.n_blocks):
                parts += [(f"b{i}.k_local", (L - 1, d)), (f"b{i}.v_local", (L - 1, d))]
                for lv, (_, M) in enumerate(cfg.memory_levels):
                    parts += [(f"b{i}.k_mem{lv}", (M, d)), (f"b{i}.v_mem{lv}", (M, d)),
                              (f"b{i}.k_acc{lv}", (d,)), (f"b{i}.v_acc{lv}", (d,))]
        if cfg.shaper_units:
            # the long filters' banded matrices, made once from the weights as they are now (the
            # step form is built for export after training): constants, as the converter needs
            with torch.no_grad():
                self.register_buffer("pre_matrix", toeplitz(model.shaper_pre[None], cfg.hop), persistent=False)
                if cfg.shaper_bank:
                    self.register_buffer("bank_matrix", toeplitz(model.shaper_bank, cfg.hop), persistent=False)
        self.layout, off = [], 0
        for name, shape in parts:
            size = math.prod(shape)
            self.layout.append({"name": name, "offset": off, "size": size, "shape": list(shape)})
            off += size
        self.state_size = off

    @property
    def z_taps(self) -> int:
        """Samples of the shaper's output the post-filters read (the newest included)."""
        cfg = self.m.cfg
        return max(cfg.shaper_post_taps, cfg.shaper_bank_taps if cfg.shaper_bank else 0)

    @property
    def line_length(self) -> int:
        """Samples of each delay line's past kept in the state: the farthest read plus one."""
        return self.m.cfg.delay_max + 2

    def initial_state(self) -> torch.Tensor:
        return torch.zeros(1, self.state_size)

    def forward(self, audio, knobs, state):
        m, cfg = self.m, self.m.cfg
        H = cfg.hop
        parts = {p["name"]: state[:, p["offset"]: p["offset"] + p["size"]] for p in self.layout}
        new = {}
        frame = torch.cat([parts["analysis"], audio], dim=1)  # (1, window)
        new["analysis"] = frame[:, H:]
        h, film = m.trunk_in(m.features(frame)[:, None, :], knobs[:, None, :])  # (1, 1, d)
        flags = []
        for lv, (D, _) in enumerate(cfg.memory_levels if cfg.attention == "sparse" else []):
            phase = parts[f"block_phase{lv}"]  # frame index mod D, an exact small integer in float
            flag = F.relu(1.0 - torch.abs(phase - (D - 1)))  # 1.0 exactly on a block's last frame, else 0.0
            new[f"block_phase{lv}"] = (phase + 1.0) * (1.0 - flag)
            flags.append(flag)
        for i, blk in enumerate(m.blocks):
            f = film[:, :, 2 + 4 * i: 6 + 4 * i]
            if blk.attn is not None:
                a = blk.ln1(h) * (1 + f[:, :, 0]) + f[:, :, 1]
                h = h + self._attend(blk.attn, a[:, 0], parts, new, f"b{i}.", flags)[:, None, :]
            h = h + blk.ffn(blk.ln2(h) * (1 + f[:, :, 2]) + f[:, :, 3])
        hd = m.heads(h[:, 0], knobs)  # (1, C) each: 2-D, as onnx2tf slices 3-D tensors on the wrong axis
        s_prev = parts["log_gain_prev"]
        new["log_gain_prev"] = hd["gain"]
        # 2-D tensors only from here on: onnx2tf transposes 3-D ones (channels last) and can get them wrong
        gain = torch.exp(s_prev + (hd["gain"] - s_prev) * m.ramp)  # (1, H)
        out = gain * audio if "shaper" not in hd else 0.0
        if "fir" in hd:
            K = cfg.fir_taps
            new["fir_prev"] = hd["fir"]
            out = out + self._fir(self._past(frame, K), hd["fir"], parts["fir_prev"])
        if "shaper" in hd:
            J, Kp, Kq = cfg.shaper_units, cfg.shaper_pre_taps, cfg.shaper_post_taps
            cur, prev = hd["shaper"], parts["shaper_prev"]
            new["shaper_prev"] = cur
            r = prev + (cur - prev) * m.ramp[:, None]  # (H, C) per-sample values
            # long filters as one matmul by their banded (Toeplitz) matrix: one op, not K slices
            pre = (frame[:, frame.shape[1] - H - Kp + 1:] @ self.pre_matrix)[0]  # (H,)
            z = m.waveshape(torch.exp(r[:, 0]) * pre, r[:, 1:1 + J])[None]  # (1, H)
            Kz = self.z_taps
            zs = torch.cat([parts["shaper_z"], z], dim=1)  # (1, H + Kz - 1)
            new["shaper_z"] = zs[:, H:]
            post = self._fir(self._slices(zs[:, Kz - Kq:], Kq), cur[:, 1 + J:1 + J + Kq], prev[:, 1 + J:1 + J + Kq])
            if cfg.shaper_bank:
                Kb = cfg.shaper_bank_taps
                zb = zs[:, Kz - Kb:] @ self.bank_matrix  # (1, bank * H)
                for i in range(cfg.shaper_bank):
                    post = post + zb[:, i * H:(i + 1) * H] * r[:, 1 + J + Kq + i][None]
            out = out + gain * post
        if "delay" in hd:
            out = out + self._delay_step(audio, hd["delay"], parts, new)
        if "mod" in hd:
            out = out + self._mod_step(audio, knobs, hd["mod"], parts, new)
        return out, torch.cat([new[p["name"]] for p in self.layout], dim=1)

    def _past(self, frame, K):  # (1, window) -> (H, K): per sample of the hop its last K inputs, oldest first
        H = self.m.cfg.hop
        return self._slices(frame[:, frame.shape[1] - H - K + 1:], K)

    def _slices(self, seg, K):  # (1, H + K - 1) -> (H, K), slices only (no gather: XNNPACK takes slices)
        H = self.m.cfg.hop
        return torch.stack([seg[0, j: j + H] for j in range(K)], dim=-1)

    def _fir(self, past, c, c_prev):  # steered_fir for one hop, in 2-D: past (H, K), c, c_prev (1, K) -> (1, H)
        now = (past @ c[0][:, None])[:, 0]
        before = (past @ c_prev[0][:, None])[:, 0]
        return (before + (now - before) * self.m.ramp)[None]

    def _delay_step(self, audio, cur, parts, new):
        m, cfg = self.m, self.m.cfg
        n, H, Lb = cfg.delay_lines, cfg.hop, self.line_length
        prev = parts["delay_prev"]
        new["delay_prev"] = cur
        r = (prev + (cur - prev) * m.ramp[:, None]).transpose(0, 1)  # (3n, H) per-sample values
        d = m.delay_positions(r[:n])  # (n, H)
        lines = parts["delay_lines"].view(n, Lb)  # b before this hop, oldest first
        rd = read_delayed(lines, Lb + torch.arange(H), d)  # (n, H): the past only (d > hop)
        b = audio + r[n:2 * n] * rd  # (n, H): the lines' new samples
        new["delay_lines"] = torch.cat([lines[:, H:], b], dim=1).reshape(1, n * Lb)
        return (r[2 * n:] * rd).sum(0, keepdim=True)  # (1, H)

    def _mod_step(self, audio, knobs, cur, parts, new):
        m, cfg = self.m, self.m.cfg
        H, Lm = cfg.hop, cfg.mod_max + 1
        prev, ph = parts["mod_prev"], parts["mod_phase"]
        new["mod_prev"] = cur
        inc = m.mod_increment(knobs)  # (1, 1)
        nxt = ph + inc
        new["mod_phase"] = nxt - torch.floor(nxt)
        r = prev + (cur - prev) * m.ramp[:, None]  # (H, C + 1) per-sample values
        C = 1 + 2 * cfg.mod_harmonics
        ds = m.mod_delays(ph[0], inc[0], r[:, :C])  # [(H,)] per pass; 2-D inside (onnx2tf and 3-D tensors)
        buf = torch.cat([parts["mod_x"], audio], dim=1)  # (1, Lm + H): the input's past, then this hop
        new["mod_x"] = buf[:, H:]
        reads = [read_delayed(buf, Lm + torch.arange(H), d[None])[0] for d in ds]
        return m._mod_mix(reads, r)[None]

    def _attend(self, attn: SparseAttention, a, parts, new, pre, flags):  # a (1, d) -> (1, d)
        cfg = self.m.cfg
        L, d, h, hd = cfg.local_frames, cfg.d_model, attn.h, attn.hd
        z = attn.qkv(a)
        q, k, v = z[:, :d], z[:, d: 2 * d], z[:, 2 * d:]  # (1, d) each
        q = q * hd ** -0.5
        out = []
        for name, cur in (("k", k), ("v", v)):
            loc = torch.cat([parts[f"{pre}{name}_local"], cur], dim=1)  # (1, L*d), oldest first
            new[f"{pre}{name}_local"] = loc[:, d:]
            slots = [loc.view(L, h, hd)]
            for lv, ((D, M), flag) in enumerate(zip(cfg.memory_levels, flags)):
                acc = parts[f"{pre}{name}_acc{lv}"] + cur
                ring = parts[f"{pre}{name}_mem{lv}"]  # (1, M*d), oldest first
                ring = flag * torch.cat([ring[:, d:], acc / D], dim=1) + (1.0 - flag) * ring
                new[f"{pre}{name}_mem{lv}"] = ring
                new[f"{pre}{name}_acc{lv}"] = (1.0 - flag) * acc
                slots.append(ring.view(M, h, hd))
            out.append(torch.cat(slots, dim=0))  # (L + sum M, h, hd)
        keys, vals = out
        logits = (keys * q.view(1, h, hd)).sum(-1).transpose(0, 1) + attn.slot_bias  # (h, L + sum M)
        p = logits.softmax(-1)
        y = (p.transpose(0, 1)[:, :, None] * vals).sum(0)  # (h, hd)
        return attn.out(y.reshape(1, d))


def macs_per_second(cfg: ModelConfig) -> float:
    """Multiply-adds per second of audio for the streaming form (machine independent)."""
    d, f = cfg.d_model, cfg.ffn_mult * cfg.d_model
    per_frame = cfg.window * 2 * cfg.n_bins + cfg.n_bins * d  # analysis + in_proj
    per_frame += cfg.n_knobs * 64 + 64 * (2 + 4 * cfg.n_blocks) * d  # FiLM
    slots = cfg.local_frames + sum(m for _, m in cfg.memory_levels)
    attn = 3 * d * d + d * d + 2 * slots * d if cfg.attention == "sparse" else 0
    per_frame += cfg.n_blocks * (attn + 2 * d * f)
    per_frame += d * (1 + cfg.fir_taps) + cfg.hop * (2 + 2 * cfg.fir_taps)  # heads, gain, FIR and its ramp
    if cfg.shaper_units:
        C = 1 + cfg.shaper_units + cfg.shaper_post_taps + cfg.shaper_bank
        per_frame += d * C + cfg.hop * (C + cfg.shaper_pre_taps + 4 * cfg.shaper_units + 2 * cfg.shaper_post_taps
                                        + cfg.shaper_bank * (cfg.shaper_bank_taps + 1))
    if cfg.delay_lines:
        per_frame += d * 3 * cfg.delay_lines + cfg.hop * cfg.delay_lines * 12  # heads, ramps, two reads, lerp, feedback
    if cfg.mod_lines:
        C, nb = 1 + 2 * cfg.mod_harmonics, cfg.n_knobs * (2 + DELAY_KNOTS)
        E = cfg.mod_echoes
        per_frame += 2 * (C + 1) * nb + 2 * d + cfg.hop * (2 * C + E * (C + 3 * cfg.mod_harmonics + 10))  # maps, head, ramps, sines, sums, reads
    return per_frame * cfg.sample_rate / cfg.hop


def train_step_seconds(configs: dict, reps: int = 6, batch: int = 8, seconds: float = 1.0) -> dict:
    """Median time of one training step (forward, backward, Adam) per named config, measured
    interleaved (config after config, ``reps`` rounds) so that the ratios hold on a busy machine."""
    import time
    models = {}
    for name, c in configs.items():
        m = SignalTrainPi(c)
        models[name] = (m, torch.optim.Adam(m.parameters(), 1e-3), torch.rand(batch, c.n_knobs))
    x = 0.1 * torch.randn(batch, int(seconds * configs[next(iter(configs))].sample_rate) // 64 * 64)
    times = {name: [] for name in configs}
    for _ in range(reps + 1):  # the first round warms up
        for name, (m, opt, k) in models.items():
            t0 = time.perf_counter()
            m(x, k).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t[1:])) for name, t in times.items()}


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Sizes and costs of the model's tiers and parts.")
    ap.add_argument("--train-step", action="store_true",
                    help="also time a training step (batch 8 x 1 s) per part configuration, interleaved")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    for name in TIERS:
        for hop in (64, 128):
            c = tier_config(name, hop=hop)
            n = sum(p.numel() for p in SignalTrainPi(c).parameters())
            print(f"{name:<9} hop {hop:>3}: {n / 1e3:7.1f} k params, {macs_per_second(c) / 1e6:7.1f} M MAC/s, "
                  f"reach {c.reach_frames * hop / c.sample_rate:.2f} s, latency {c.latency_samples} samples")
    c = tier_config("small", shaper_units=8, delay_lines=1)
    print(f"small with shaper + delay line: {macs_per_second(c) / 1e6:.1f} M MAC/s, "
          f"{sum(p.numel() for p in SignalTrainPi(c).parameters()) / 1e3:.1f} k params")
    if args.train_step:
        torch.set_num_threads(args.threads)
        configs = {"gain": tier_config("small", n_knobs=3, fir_taps=0),
                   "gain+fir": tier_config("small", n_knobs=3),
                   "gain+fir+shaper (16-tap pre-filter, no bank)": tier_config("small", n_knobs=3, shaper_units=8,
                                                                               shaper_pre_taps=16, shaper_bank=0),
                   "gain+fir+shaper": tier_config("small", n_knobs=3, shaper_units=8)}
        t = train_step_seconds(configs)
        base = t["gain+fir"]
        for name, v in t.items():
            print(f"training step, {name}: {v:.3f} s at {args.threads} thread(s) = {v / base:.2f}x gain+fir")
