"""SignalTrain-Pi: a knob-conditioned SignalTrain-style model with sparse windowed self-attention.

Waveform in, waveform out, read top to bottom in the order data flows:

    x (B, N) --frames--> learned analysis (windowed-DFT init) --> log power (B, T, bins)
      --> in_proj + FiLM(knobs) --> n_blocks x [sparse attention + FFN, FiLM(knobs) in each]
      --> gain head  s_t   (one log-gain per frame: the "skip filter", like a compressor's gain)
      --> FIR head   c_t   (``fir_taps`` coefficients per frame: the residual path, a time-varying
                            filter of the input, so it stays phase-locked to it: tone, EQ, a wet mix)
    y[n] = exp(s(n)) * x[n] + sum_j c_j(n) x[n - j]     s(n), c(n): raised-cosine ramps across each hop

Frames: frame t ends at the last sample of hop t and looks back ``window`` samples; its gain and
filter apply to hop t. So output sample n depends on input up to the end of its hop: the
algorithmic latency is ``hop`` samples.

Attention is sparse with cost linear in context: each frame attends to
  - the last ``local_frames`` frames (itself included), and
  - ``mem_slots`` pooled memory slots: the mean key/value of each completed block of
    ``mem_block_frames`` frames on a fixed grid, the most recent ``mem_slots`` blocks,
plus a learned bias per head and slot (relative position). Frames before the start count as
zero keys/values, exactly what a zero-initialised streaming cache holds, so the offline form
(``SignalTrainPi.forward``) and the streaming form (``StepModel``) agree to float precision.
``attention="dense"`` (full causal, N^2) and ``"none"`` exist for comparison only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    n_knobs: int = 4
    sample_rate: int = 48000
    hop: int = 64  # samples per step; the algorithmic latency
    window: int = 512  # analysis window (samples), a multiple of hop
    fir_taps: int = 32  # residual path: a time-varying FIR over the last fir_taps input samples;
    #                     0 = none, y = gain x input (a compressor is exactly that, and learns faster)
    fir_scale: float = 0.1  # the taps move 10x slower than the gain: level belongs to the gain path
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
    attention: str = "sparse"  # "sparse" (the product) | "dense" | "none" (comparison only)
    max_log_gain: float = 6.0  # |s| bound: exp(6) = +-52 dB

    def __post_init__(self):
        if self.window % self.hop or self.window - self.hop < self.fir_taps - 1:
            raise ValueError(f"window {self.window} must be a multiple of hop {self.hop} and leave "
                             f"fir_taps - 1 = {self.fir_taps - 1} past samples")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be a multiple of n_heads {self.n_heads}")
        if self.attention not in ("sparse", "dense", "none"):
            raise ValueError(f"attention {self.attention!r} must be sparse, dense or none")

    @property
    def latency_samples(self) -> int:
        return self.hop

    @property
    def reach_frames(self) -> int:
        return self.mem_slots * self.mem_block_frames

    def to_dict(self) -> dict:
        return asdict(self)


# Size tiers: parameter counts and multiply-adds per second are printed by `python -m training.model`.
TIERS = {
    "nano": dict(d_model=32, n_heads=2, n_blocks=1, n_bins=32, local_frames=16, mem_slots=16),
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
        n_slots = cfg.local_frames + cfg.mem_slots if cfg.attention == "sparse" else 0
        # learned relative-position bias per head and slot: local distances, then memory ages
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
        L, D, M = self.cfg.local_frames, self.cfg.mem_block_frames, self.cfg.mem_slots
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
        lg_loc = (qb @ kw.transpose(-1, -2) + self._local_bias()).reshape(B, self.h, Tp, 2 * L)[:, :, :T]
        # pooled memory on the absolute grid: frame t sees the M blocks before c = (t+1) // D.
        # Grouping queries by c: shift by one frame so that group g holds frames g*D-1 .. g*D+D-2.
        G, nb = -(-(T + 1) // D), T // D
        qg = F.pad(q, (0, 0, 1, G * D - T - 1)).view(B, self.h, G, D, self.hd)
        def memory(t):  # (B, h, T, hd) -> (B, h, G, M, hd): mean of each completed block, last M per group
            blocks = t[:, :, : nb * D].reshape(B, self.h, nb, D, self.hd).sum(3) / D
            return F.pad(blocks, (0, 0, M, 0)).unfold(2, M, 1)[:, :, :G].transpose(-1, -2)
        km, vm = memory(k), memory(v)
        lg_mem = (qg @ km.transpose(-1, -2)).reshape(B, self.h, G * D, M)[:, :, 1: T + 1] + self.slot_bias[:, None, L:]
        p = torch.cat([lg_loc, lg_mem], dim=-1).softmax(-1)  # (B, h, T, 2L + M)
        p_loc = F.pad(p[..., : 2 * L], (0, 0, 0, Tp - T)).view(B, self.h, nbk, L, 2 * L)
        p_mem = F.pad(p[..., 2 * L:], (0, 0, 1, G * D - T - 1)).view(B, self.h, G, D, M)
        y = (p_loc @ vw).reshape(B, self.h, Tp, self.hd)[:, :, :T] + (p_mem @ vm).reshape(B, self.h, G * D, self.hd)[:, :, 1: T + 1]
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
        self.gain_head = nn.Linear(d, 1)
        self.fir_head = nn.Linear(d, cfg.fir_taps) if cfg.fir_taps else None
        for lin in (self.gain_head, self.fir_head, self.film[-1]):
            if lin is None:
                continue
            nn.init.normal_(lin.weight, std=1e-3)
            nn.init.zeros_(lin.bias)
        # raised-cosine ramp from one hop's gain to the next: no slope corners at the hop rate
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

    def heads(self, h):  # (B, T, d) -> log-gain (B, T), FIR coefficients (B, T, taps), oldest tap first
        h = self.ln_out(h)
        m = self.cfg.max_log_gain
        c = self.cfg.fir_scale * self.fir_head(h) if self.fir_head is not None else None
        return m * torch.tanh(self.gain_head(h)[..., 0] / m), c

    # --- offline (training) form ------------------------------------------------------------------
    def forward(self, x: torch.Tensor, knobs: torch.Tensor) -> torch.Tensor:
        """x (B, N) with N a multiple of hop; knobs (B, K) or per frame (B, N // hop, K), in 0..1."""
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
        s, c = self.heads(h)  # (B, T), (B, T, K)
        s_prev = F.pad(s[:, :-1], (1, 0))  # zero log-gain before the start
        s_n = s_prev[..., None] + (s - s_prev)[..., None] * self.ramp  # (B, T, H) per-sample log-gain
        y = torch.exp(s_n) * x.view(B, T, H)
        if c is None:
            return y.reshape(B, N)
        c_prev = F.pad(c[:, :-1], (0, 0, 1, 0))
        K = cfg.fir_taps
        past = F.pad(x, (K - 1, 0)).unfold(1, K, 1).reshape(B * T, H, K)  # x[n-K+1..n], oldest first
        # ramping the taps = ramping between the outputs of the two filters (linear in c): two
        # small matmuls instead of a (B, T, H, K) tensor of per-sample taps
        now = torch.bmm(past, c.reshape(B * T, K, 1)).view(B, T, H)
        before = torch.bmm(past, c_prev.reshape(B * T, K, 1)).view(B, T, H)
        r = before + (now - before) * self.ramp  # (B, T, H)
        return (y + r).reshape(B, N)


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
        d, L, M = cfg.d_model, cfg.local_frames, cfg.mem_slots
        parts = [("analysis", (cfg.window - cfg.hop,)), ("log_gain_prev", (1,)), ("block_phase", (1,))]
        if cfg.fir_taps:
            parts.append(("fir_prev", (cfg.fir_taps,)))
        if cfg.attention == "sparse":
            for i in range(cfg.n_blocks):
                parts += [(f"b{i}.k_local", (L - 1, d)), (f"b{i}.v_local", (L - 1, d)),
                          (f"b{i}.k_mem", (M, d)), (f"b{i}.v_mem", (M, d)),
                          (f"b{i}.k_acc", (d,)), (f"b{i}.v_acc", (d,))]
        self.layout, off = [], 0
        for name, shape in parts:
            size = math.prod(shape)
            self.layout.append({"name": name, "offset": off, "size": size, "shape": list(shape)})
            off += size
        self.state_size = off

    def initial_state(self) -> torch.Tensor:
        return torch.zeros(1, self.state_size)

    def forward(self, audio, knobs, state):
        m, cfg = self.m, self.m.cfg
        H, D = cfg.hop, cfg.mem_block_frames
        parts = {p["name"]: state[:, p["offset"]: p["offset"] + p["size"]] for p in self.layout}
        new = {}
        frame = torch.cat([parts["analysis"], audio], dim=1)  # (1, window)
        new["analysis"] = frame[:, H:]
        h, film = m.trunk_in(m.features(frame)[:, None, :], knobs[:, None, :])  # (1, 1, d)
        phase = parts["block_phase"]  # frame index mod D, an exact small integer in float
        flag = F.relu(1.0 - torch.abs(phase - (D - 1)))  # 1.0 exactly on a block's last frame, else 0.0
        new["block_phase"] = (phase + 1.0) * (1.0 - flag)
        for i, blk in enumerate(m.blocks):
            f = film[:, :, 2 + 4 * i: 6 + 4 * i]
            if blk.attn is not None:
                a = blk.ln1(h) * (1 + f[:, :, 0]) + f[:, :, 1]
                h = h + self._attend(blk.attn, a[:, 0], parts, new, f"b{i}.", flag)[:, None, :]
            h = h + blk.ffn(blk.ln2(h) * (1 + f[:, :, 2]) + f[:, :, 3])
        s, c = m.heads(h)  # (1, 1), (1, 1, K)
        s_prev = parts["log_gain_prev"]
        new["log_gain_prev"] = s[:, 0:1]
        s_n = s_prev + (s[:, 0:1] - s_prev) * m.ramp  # (1, H)
        out = torch.exp(s_n) * audio
        if c is not None:
            c_prev, K = parts["fir_prev"], cfg.fir_taps
            new["fir_prev"] = c[:, 0]
            seg = frame[:, cfg.window - H - K + 1:]  # (1, H + K - 1): the hop and the K - 1 samples before it
            past = torch.stack([seg[0, j: j + H] for j in range(K)], dim=-1)  # (H, K), slices only
            now = (past @ c[0, 0][:, None])[:, 0]  # (H,)
            before = (past @ c_prev[0][:, None])[:, 0]
            out = out + before + (now - before) * m.ramp
        return out, torch.cat([new[p["name"]] for p in self.layout], dim=1)

    def _attend(self, attn: SparseAttention, a, parts, new, pre, flag):  # a (1, d) -> (1, d)
        cfg = self.m.cfg
        L, D, M, d, h, hd = cfg.local_frames, cfg.mem_block_frames, cfg.mem_slots, cfg.d_model, attn.h, attn.hd
        z = attn.qkv(a)
        q, k, v = z[:, :d], z[:, d: 2 * d], z[:, 2 * d:]  # (1, d) each
        q = q * hd ** -0.5
        out = []
        for name, cur in (("k", k), ("v", v)):
            loc = torch.cat([parts[f"{pre}{name}_local"], cur], dim=1)  # (1, L*d), oldest first
            new[f"{pre}{name}_local"] = loc[:, d:]
            acc = parts[f"{pre}{name}_acc"] + cur
            ring = parts[f"{pre}{name}_mem"]  # (1, M*d), oldest first
            ring = flag * torch.cat([ring[:, d:], acc / D], dim=1) + (1.0 - flag) * ring
            new[f"{pre}{name}_mem"] = ring
            new[f"{pre}{name}_acc"] = (1.0 - flag) * acc
            out.append(torch.cat([loc.view(L, h, hd), ring.view(M, h, hd)], dim=0))  # (L+M, h, hd)
        keys, vals = out
        logits = (keys * q.view(1, h, hd)).sum(-1).transpose(0, 1) + attn.slot_bias  # (h, L+M)
        p = logits.softmax(-1)
        y = (p.transpose(0, 1)[:, :, None] * vals).sum(0)  # (h, hd)
        return attn.out(y.reshape(1, d))


def macs_per_second(cfg: ModelConfig) -> float:
    """Multiply-adds per second of audio for the streaming form (machine independent)."""
    d, f = cfg.d_model, cfg.ffn_mult * cfg.d_model
    per_frame = cfg.window * 2 * cfg.n_bins + cfg.n_bins * d  # analysis + in_proj
    per_frame += cfg.n_knobs * 64 + 64 * (2 + 4 * cfg.n_blocks) * d  # FiLM
    attn = 3 * d * d + d * d + 2 * (cfg.local_frames + cfg.mem_slots) * d if cfg.attention == "sparse" else 0
    per_frame += cfg.n_blocks * (attn + 2 * d * f)
    per_frame += d * (1 + cfg.fir_taps) + cfg.hop * (2 + 2 * cfg.fir_taps)  # heads, gain, FIR and its ramp
    return per_frame * cfg.sample_rate / cfg.hop


if __name__ == "__main__":
    for name in TIERS:
        for hop in (64, 128):
            c = tier_config(name, hop=hop)
            n = sum(p.numel() for p in SignalTrainPi(c).parameters())
            print(f"{name:<9} hop {hop:>3}: {n / 1e3:7.1f} k params, {macs_per_second(c) / 1e6:7.1f} M MAC/s, "
                  f"reach {c.reach_frames * hop / c.sample_rate:.2f} s, latency {c.latency_samples} samples")
