"""Comparison baselines: what SignalTrain-Pi must beat at an equal training budget (DESIGN.md).

    python -m training.train --arch signaltrain --data data/comp4-demo --out runs/comp4-signaltrain
    python -m training.baselines          # parameter counts and multiply-adds per second of audio

Three models, each ``forward(x (B, N), knobs (B, K) or per hop (B, N // hop, K)) -> (B, N)`` with
knob positions in 0..1, a ``cfg`` dataclass with ``to_dict()``, ``hop`` and ``sample_rate``. None
has a streaming form; none is converted or shipped. On a shared 2-core machine train them with
``--threads 1``: their thousands of tiny per-sample ops ran 1.3-10x faster on one thread than on
two (docs/model.md, "Baselines", has the measurements and a 3-minute comparison).

- ``"signaltrain"``: the original SignalTrain (Hawley, Colburn, Mimilakis, AES 147, 2019), the
  no-attention ancestor. A learned STFT (Conv1d analysis initialised from a windowed DFT), magnitude
  and phase, a fully connected autoencoder *over time frames* for each (shared by every frequency
  bin), the knobs concatenated at the bottleneck, a multiplicative skip filter on the magnitude, a
  residual on the phase, a learned synthesis (initialised as the inverse DFT with the least-squares
  synthesis window), and the dry input added at the end. Its FC layers span the frames of one
  fixed-length chunk, so it is tied to the training chunk; it outputs the scored tail only (the
  look-back part of the output is the dry input, never scored).
- ``"lstm"``: a knob-concatenated LSTM run per sample (GuitarML NeuralPi/Proteus, NAM parametric
  LSTMs): input [x, knobs], hidden 32, one layer, ``y = x + Linear(h)``. Causal.
- ``"tcn"``: micro-TCN (Steinmetz & Reiss, AES 150, 2021; the uTCN-300-C configuration 4-10-13):
  4 causal dilated Conv1d blocks (kernel 13, dilations 1, 10, 100, 1000, 32 channels; receptive
  field 13,333 samples = 278 ms at 48 kHz), each with FiLM from the knobs (BatchNorm without
  affine, then a knob-dependent scale and shift), PReLU and a 1x1 residual; output ``y = x +
  Conv1x1(h)`` (the output skip; micro-TCN itself ends in tanh without a skip). Causal in eval mode
  (BatchNorm uses batch statistics while training, as in the original).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def _per_sample(knobs: torch.Tensor, n: int, hop: int) -> torch.Tensor:
    """knobs (B, K) or per hop (B, n // hop, K) -> per sample (B, n, K)."""
    if knobs.dim() == 2:
        return knobs[:, None, :].expand(knobs.shape[0], n, knobs.shape[1])
    if knobs.shape[1] * hop != n:
        raise ValueError(f"per-hop knobs have {knobs.shape[1]} frames; {n} samples need {n // hop} of {hop}")
    return knobs.repeat_interleave(hop, dim=1)


# =================================================================================================
# 1. SignalTrain (2019): learned STFT + fully connected autoencoders over time frames
# =================================================================================================

@dataclass
class SignalTrainConfig:
    n_knobs: int = 4
    sample_rate: int = 48000
    hop: int = 64  # the training loop's grid: look-back and tail are multiples of it
    chunk_samples: int = 48000  # look-back + scored tail: the FC layers span exactly this chunk's frames
    lookback_samples: int = 24000  # context only; the output there is the dry input
    window: int = 256  # analysis/synthesis frame (the original: 1024 at 44.1 kHz, for 8192-sample chunks)
    stft_hop: int = 64  # frame hop; window must be a multiple of it (overlap-add by reshaping)
    rank: int = 64  # the autoencoders' first width R: T_in -> R -> R/2 -> R/4 (bottleneck, + knobs)

    def __post_init__(self):
        if self.window % self.stft_hop:
            raise ValueError(f"window {self.window} must be a multiple of stft_hop {self.stft_hop}")
        if not 0 < self.lookback_samples < self.chunk_samples:
            raise ValueError(f"lookback_samples {self.lookback_samples} must lie inside chunk_samples {self.chunk_samples}")
        if self.chunk_samples % self.hop or self.lookback_samples % self.hop:
            raise ValueError(f"chunk_samples and lookback_samples must be multiples of hop {self.hop}")
        if self.rank % 4:
            raise ValueError(f"rank {self.rank} must be a multiple of 4")

    @property
    def tail_samples(self) -> int:
        return self.chunk_samples - self.lookback_samples

    @property
    def n_bins(self) -> int:  # DC .. Nyquist
        return self.window // 2 + 1

    @property
    def frames_in(self) -> int:  # frames that see any of the chunk, the last one ending window - stft_hop past it
        return -(-(self.chunk_samples + self.window - self.stft_hop) // self.stft_hop)

    @property
    def frames_out(self) -> int:  # frames that overlap-add onto the scored tail
        return -(-(self.tail_samples + self.window - self.stft_hop) // self.stft_hop)

    def to_dict(self) -> dict:
        return asdict(self)

    def macs_per_second(self) -> float:
        """Multiply-adds per second of output audio (one chunk per tail of output)."""
        W, nb, R, K = self.window, self.n_bins, self.rank, self.n_knobs
        ae = (self.frames_in * R + R * R // 2 + R // 2 * R // 4 + 2 * (R // 4) ** 2 + (R // 4 + K) * R // 4
              + R // 4 * R // 2 + R // 2 * R + R * self.frames_out)
        per_chunk = self.frames_in * W * 2 * nb + 2 * nb * ae + self.frames_out * 2 * nb * W
        return per_chunk * self.sample_rate / self.tail_samples


def lsee_window(window: int, hop: int, analysis: torch.Tensor) -> torch.Tensor:
    """Griffin & Lim's least-squares synthesis window: analysis / sum of its shifted squares."""
    env = torch.zeros(window, dtype=torch.float64)
    for s in range(-(window // hop), window // hop + 1):
        idx = torch.arange(window) + s * hop
        ok = (idx >= 0) & (idx < window)
        env[idx[ok]] += analysis[ok] ** 2
    return analysis / env


class FrameAutoencoder(nn.Module):
    """SignalTrain's asymmetric autoencoder: fully connected layers across the *time-frame* axis,
    the same weights for every frequency bin, the knobs concatenated at the bottleneck.
        T_in -> R -> R/2 -> R/4 -> R/4, [+ knobs] -> R/4 -> R/4 -> R/2 -> R -> T_out   (ELU between)"""

    def __init__(self, t_in: int, t_out: int, rank: int, n_knobs: int):
        super().__init__()
        R = rank
        self.enc = nn.ModuleList([nn.Linear(t_in, R), nn.Linear(R, R // 2), nn.Linear(R // 2, R // 4),
                                  nn.Linear(R // 4, R // 4)])
        self.add_knobs = nn.Linear(R // 4 + n_knobs, R // 4)
        self.dec = nn.ModuleList([nn.Linear(R // 4, R // 4), nn.Linear(R // 4, R // 2), nn.Linear(R // 2, R),
                                  nn.Linear(R, t_out)])
        for lin in [*self.enc, self.add_knobs, *self.dec]:  # as the original: Xavier normal, zero bias
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, knobs: torch.Tensor) -> torch.Tensor:  # x (B, bins, T_in), knobs (B, K)
        z = x
        for lin in self.enc:
            z = F.elu(lin(z))  # (B, bins, R) ... (B, bins, R/4)
        k = knobs[:, None, :].expand(z.shape[0], z.shape[1], knobs.shape[-1])  # the same knobs for every bin
        z = F.elu(self.add_knobs(torch.cat([z, k], dim=-1)))  # (B, bins, R/4)
        for lin in self.dec[:-1]:
            z = F.elu(lin(z))
        return self.dec[-1](z)  # (B, bins, T_out), no activation: the caller applies ELU as the original does


class SignalTrain(nn.Module):
    def __init__(self, cfg: SignalTrainConfig):
        super().__init__()
        self.cfg = cfg
        W, h, nb = cfg.window, cfg.stft_hop, cfg.n_bins
        # analysis: Hamming-windowed DFT rows (cos, then sin), orthonormal scale, as the original
        n = torch.arange(W, dtype=torch.float64)
        k = torch.arange(nb, dtype=torch.float64)
        hamming = 0.54 - 0.46 * torch.cos(2 * math.pi * n / W)
        ang = 2 * math.pi * k[:, None] * n[None, :] / W  # (nb, W)
        self.analysis = nn.Conv1d(1, 2 * nb, W, stride=h, bias=False)
        with torch.no_grad():
            self.analysis.weight.copy_((torch.cat([torch.cos(ang), torch.sin(ang)]) * hamming / math.sqrt(W))[:, None].float())
        self.mag_ae = FrameAutoencoder(cfg.frames_in, cfg.frames_out, cfg.rank, cfg.n_knobs)
        self.phase_ae = FrameAutoencoder(cfg.frames_in, cfg.frames_out, cfg.rank, cfg.n_knobs)
        # synthesis: a matmul to frames, then overlap-add (not ConvTranspose1d: far slower, RECIPES.md),
        # initialised as the inverse real DFT times the least-squares window: analysis -> synthesis = identity
        weight = torch.where((k == 0) | (k == W // 2), 1.0, 2.0)[None, :] / math.sqrt(W)  # one-sided spectrum
        synth_win = lsee_window(W, h, hamming)[:, None]
        self.synthesis = nn.Linear(2 * nb, W, bias=False)
        with torch.no_grad():
            self.synthesis.weight.copy_((torch.cat([torch.cos(ang).T, torch.sin(ang).T], 1) * weight.repeat(1, 2)
                                         * synth_win).float())

    def analyse(self, x: torch.Tensor):  # x (B, chunk) -> magnitude, phase (B, bins, T_in)
        cfg = self.cfg
        pad_left = cfg.frames_in * cfg.stft_hop - x.shape[1]  # the last frame ends window - stft_hop past the end
        z = self.analysis(F.pad(x, (pad_left, cfg.window - cfg.stft_hop))[:, None])  # (B, 2 bins, T_in)
        re, im = z[:, : cfg.n_bins], z[:, cfg.n_bins:]
        mag = torch.sqrt(re * re + im * im + 1e-12)  # + eps: sqrt'(0) is inf, and zero-padded frames are exactly 0
        phase = torch.atan2(im, re + 1e-6)
        return mag, phase

    def synthesise(self, mag: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:  # (B, bins, T_out) -> (B, tail)
        cfg = self.cfg
        B, T = mag.shape[0], cfg.frames_out
        r, h = cfg.window // cfg.stft_hop, cfg.stft_hop
        spec = torch.cat([mag * torch.cos(phase), mag * torch.sin(phase)], 1).transpose(1, 2)  # (B, T_out, 2 bins)
        frames = self.synthesis(spec).view(B, T, r, h)  # (B, T_out, window) as r pieces of a hop
        ola = sum(F.pad(frames[:, :, i], (0, 0, i, r - 1 - i)) for i in range(r)).reshape(B, -1)  # overlap-add
        start = T * h - cfg.tail_samples  # ola starts T_out hops before the end of the chunk
        return ola[:, start: start + cfg.tail_samples]  # (B, tail)

    def forward_chunk(self, x: torch.Tensor, knobs: torch.Tensor) -> torch.Tensor:  # x (B, chunk), knobs (B, K)
        cfg = self.cfg
        mag, phase = self.analyse(x)  # (B, bins, T_in)
        mag_hat = F.elu(self.mag_ae(mag, knobs)) * mag[..., -cfg.frames_out:]  # skip filter: a gain per bin and frame
        phase_hat = F.elu(self.phase_ae(phase, knobs)) + phase[..., -cfg.frames_out:]  # residual on phase
        y_tail = self.synthesise(mag_hat, phase_hat) + x[:, cfg.lookback_samples:]  # + dry, the original's last skip
        return torch.cat([x[:, : cfg.lookback_samples], y_tail], 1)  # (B, chunk); the look-back is never scored

    def forward(self, x: torch.Tensor, knobs: torch.Tensor) -> torch.Tensor:
        """x (B, N), knobs (B, K) or per hop (B, N // hop, K) in 0..1 -> (B, N).
        Training: N must be the configured chunk. In eval mode any N works: as the original's
        long-audio inference, windows of one chunk advance by the tail, each contributing its tail,
        with zeros as the first window's look-back (so the output is not causal within a tail)."""
        cfg = self.cfg
        B, N = x.shape
        if N == cfg.chunk_samples:
            if knobs.dim() == 3:  # one knob vector per chunk: the mean over the scored frames
                knobs = knobs[:, cfg.lookback_samples // cfg.hop:].mean(1)
            return self.forward_chunk(x, knobs)
        if self.training:
            raise ValueError(
                f"SignalTrain's fully connected layers span the frames of exactly {cfg.chunk_samples} samples "
                f"({cfg.lookback_samples} look-back + {cfg.tail_samples} scored), got N = {N}: train with chunks of "
                f"that length (lookback_s/tail_s) or build SignalTrainConfig(chunk_samples={N}, ...); in eval mode "
                f"other lengths run as sliding windows")
        L, tail = cfg.lookback_samples, cfg.tail_samples
        nw = -(-N // tail)
        xp = F.pad(x, (L, nw * tail - N))  # (B, L + nw * tail)
        windows = xp.unfold(1, cfg.chunk_samples, tail).reshape(B * nw, cfg.chunk_samples)  # (B nw, chunk)
        if knobs.dim() == 3:
            if knobs.shape[1] * cfg.hop != N:
                raise ValueError(f"per-hop knobs have {knobs.shape[1]} frames; {N} samples need {N // cfg.hop}")
            per_tail = tail // cfg.hop
            kf = F.pad(knobs.transpose(1, 2), (0, nw * per_tail - knobs.shape[1]), mode="replicate")  # (B, K, nw*per_tail)
            knobs = kf.view(B, -1, nw, per_tail).mean(-1).transpose(1, 2)  # (B, nw, K)
        else:
            knobs = knobs[:, None, :].expand(B, nw, knobs.shape[-1])
        y = self.forward_chunk(windows, knobs.reshape(B * nw, -1))[:, L:]  # (B nw, tail)
        return y.reshape(B, nw * tail)[:, :N]


# =================================================================================================
# 2. Knob-concatenated LSTM (GuitarML / NAM parametric style)
# =================================================================================================

@dataclass
class LSTMConfig:
    n_knobs: int = 4
    sample_rate: int = 48000
    hop: int = 64  # only the grid of per-hop knobs; the LSTM runs per sample
    hidden: int = 32
    layers: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def macs_per_second(self) -> float:
        i, h = 1 + self.n_knobs, self.hidden
        per_sample = 4 * h * (i + h) + 4 * h * 2 * h * (self.layers - 1) + h
        return per_sample * self.sample_rate


class KnobLSTM(nn.Module):
    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.lstm = nn.LSTM(1 + cfg.n_knobs, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.out = nn.Linear(cfg.hidden, 1)
        nn.init.normal_(self.out.weight, std=1e-3)  # start as the dry signal
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, knobs: torch.Tensor) -> torch.Tensor:
        """x (B, N), knobs (B, K) or per hop (B, N // hop, K) -> (B, N). Causal, zero initial state."""
        B, N = x.shape
        inp = torch.cat([x[..., None], _per_sample(knobs, N, self.cfg.hop)], dim=-1)  # (B, N, 1 + K)
        h, _ = self.lstm(inp)  # (B, N, hidden)
        return x + self.out(h)[..., 0]  # skip: the LSTM learns the difference from the dry signal


# =================================================================================================
# 3. FiLM-conditioned TCN (micro-TCN)
# =================================================================================================

@dataclass
class TCNConfig:
    n_knobs: int = 4
    sample_rate: int = 48000
    hop: int = 64  # only the grid of per-hop knobs; the TCN runs per sample
    channels: int = 32
    n_blocks: int = 4
    kernel: int = 13
    dilation_growth: int = 10  # block i has dilation growth ** i
    cond_dim: int = 32  # knobs -> 16 -> 32 -> 32 (the conditioning MLP), then a FiLM adaptor per block

    @property
    def receptive_field(self) -> int:
        return 1 + (self.kernel - 1) * sum(self.dilation_growth ** i for i in range(self.n_blocks))

    def to_dict(self) -> dict:
        return asdict(self)

    def macs_per_second(self) -> float:
        C, k = self.channels, self.kernel
        per_sample = k * C + (self.n_blocks - 1) * (k * C * C + C) + C + C  # convs, depthwise residuals, output
        return per_sample * self.sample_rate


class FiLMBlock(nn.Module):
    """Causal dilated conv -> BatchNorm (no affine) -> knob scale and shift -> PReLU, + 1x1 residual."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int, cond_dim: int):
        super().__init__()
        self.trim = (kernel - 1) * dilation  # samples the valid conv eats from the left
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(out_ch, affine=False)
        self.film = nn.Linear(cond_dim, 2 * out_ch)
        self.act = nn.PReLU(out_ch)
        self.res = nn.Conv1d(in_ch, out_ch, 1, groups=in_ch, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # x (B, C_in, L), cond (B, cond) or (B, L, cond)
        y = self.bn(self.conv(x))  # (B, C, L - trim)
        g, b = self.film(cond).chunk(2, dim=-1)  # (B, C) or (B, L, C)
        if cond.dim() == 2:
            y = y * g[..., None] + b[..., None]
        else:
            y = y * g[:, self.trim:].transpose(1, 2) + b[:, self.trim:].transpose(1, 2)
        return self.act(y) + self.res(x)[..., self.trim:]  # causal crop of the residual


class FiLMTCN(nn.Module):
    def __init__(self, cfg: TCNConfig):
        super().__init__()
        self.cfg = cfg
        self.cond = nn.Sequential(nn.Linear(cfg.n_knobs, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(),
                                  nn.Linear(32, cfg.cond_dim), nn.ReLU())
        self.blocks = nn.ModuleList(
            FiLMBlock(1 if i == 0 else cfg.channels, cfg.channels, cfg.kernel, cfg.dilation_growth ** i, cfg.cond_dim)
            for i in range(cfg.n_blocks))
        self.out = nn.Conv1d(cfg.channels, 1, 1)
        nn.init.normal_(self.out.weight, std=1e-3)  # start as the dry signal
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, knobs: torch.Tensor) -> torch.Tensor:
        """x (B, N), knobs (B, K) or per hop (B, N // hop, K) -> (B, N). Causal: zeros before the start."""
        B, N = x.shape
        pad = self.cfg.receptive_field - 1
        h = F.pad(x, (pad, 0))[:, None]  # (B, 1, N + pad)
        if knobs.dim() == 2:
            cond = self.cond(knobs)  # (B, cond)
        else:  # per sample, the first setting held before the start
            k = _per_sample(knobs, N, self.cfg.hop)
            cond = self.cond(torch.cat([k[:, :1].expand(B, pad, k.shape[-1]), k], 1))  # (B, N + pad, cond)
        for blk in self.blocks:
            h = blk(h, cond)  # (B, C, L - trim)
            if cond.dim() == 3:
                cond = cond[:, blk.trim:]
        return x + self.out(h)[:, 0]  # (B, N): the output skip


# =================================================================================================

BASELINES = {"signaltrain": (SignalTrainConfig, SignalTrain), "lstm": (LSTMConfig, KnobLSTM), "tcn": (TCNConfig, FiLMTCN)}


def build_baseline(arch: str, n_knobs: int, sample_rate: int = 48000, hop: int = 64,
                   lookback_s: float = 0.5, tail_s: float = 0.5, **overrides) -> nn.Module:
    """A fresh baseline for ``n_knobs`` knobs. SignalTrain's chunk follows training.train's
    chunk_sizes (look-back and tail rounded to multiples of hop)."""
    if arch not in BASELINES:
        raise ValueError(f"unknown baseline {arch!r} (choose from {sorted(BASELINES)}, or 'pi' for the product)")
    config_cls, model_cls = BASELINES[arch]
    kw = dict(n_knobs=n_knobs, sample_rate=sample_rate, hop=hop)
    if arch == "signaltrain":
        look = int(round(lookback_s * sample_rate / hop)) * hop
        tail = int(round(tail_s * sample_rate / hop)) * hop
        kw.update(chunk_samples=look + tail, lookback_samples=look)
    return model_cls(config_cls(**{**kw, **overrides}))


def baseline_from_config(arch: str, config: dict) -> nn.Module:
    """Rebuild a baseline from its saved ``cfg.to_dict()`` (training.train.load_checkpoint)."""
    if arch not in BASELINES:
        raise ValueError(f"unknown baseline {arch!r} (choose from {sorted(BASELINES)})")
    config_cls, model_cls = BASELINES[arch]
    return model_cls(config_cls(**config))


if __name__ == "__main__":
    for name in BASELINES:
        m = build_baseline(name, n_knobs=4)
        n = sum(p.numel() for p in m.parameters())
        extra = f", receptive field {m.cfg.receptive_field / 48:.0f} ms" if name == "tcn" else ""
        print(f"{name:<12} {n / 1e3:7.1f} k params, {m.cfg.macs_per_second() / 1e6:8.1f} M MAC/s{extra}")
