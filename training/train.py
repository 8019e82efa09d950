"""Train a SignalTrain-Pi model on a dataset, within a wall-clock budget.

    python -m training.train --data data/comp4-demo --out runs/comp4 --minutes 5
    python -m training.train --config training/configs/tiny.toml --data data/comp4-demo --out runs/t
    python -m training.train --resume runs/comp4                  # after an interruption: on where it stopped
    torchrun --nproc_per_node=2 -m training.train --data ... --out ... --threads 1   # one process per core or GPU

A plain loop (nanoGPT style): random chunks of look-back + tail, loss on the tail only (the
look-back is context, so attack and release can be learned), Adam with warm-up and cosine decay
over the time budget (over the steps when ``--max-steps`` is given), validation on fixed chunks,
the best checkpoint kept.

Around the loop, and nothing else:
- configuration: the TrainConfig defaults, then a TOML file (``--config``: top-level keys named as
  the fields), then command-line flags; the run's final config is written to OUT/config.toml.
- checkpoints: OUT/best.pt (best validation) and OUT/last.pt (the newest, every validation and at
  the end), both loadable by ``load_checkpoint``; last.pt also holds what a resume needs: the raw
  weights, the optimiser, every process's random states (the chunk sampler is a numpy generator,
  so its state *is* the data position), the step, the training time spent and the history.
- resume: ``--resume RUN`` reads RUN/config.toml and RUN/last.pt and goes on; the time budget
  counts the training time of every run together. Ctrl-C or SIGTERM ends a step, writes last.pt
  and exits (code 128 + signal); a hard kill loses the steps since the last checkpoint, which the
  resumed run redoes with the same random draws. With ``--max-steps``, ``--val-every-steps`` and
  one thread on the CPU an interrupted and resumed run is bit-identical to one without a break.
- processes: under ``torchrun`` each process takes its own random chunks (batch per process) and
  PyTorch DDP averages the gradients (gloo on the CPU, NCCL on GPUs, one GPU per process); the
  processes agree on the clock every step, process 0 validates and writes. On a GPU the forward
  pass runs under bf16 autocast (``--amp``); the CPU always trains in float32.
- logs: OUT/metrics.csv (one row per step, validation where it ran), TensorBoard events in OUT/tb
  when tensorboard is installed, OUT/train.json (summary and history) and OUT/loss.png.
- weight averaging: validation and best.pt use an exponential moving average of the weights
  (``--ema 0.995``, its decay ramping up over the first steps; 0 turns it off); the optimiser
  steps the raw weights. On comp4 (1500 steps) it smoothed the validation curve and kept a
  slightly better model than the raw weights' best (test ESR 0.024 vs 0.026 mean, 0.095 vs 0.12 worst).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .data import PairSet
from .model import SignalTrainPi, tier_config
from .parts import Parts, fit_delays, parts_for


@dataclass
class TrainConfig:
    data: str = "data/comp4-demo"
    out: str = "runs/comp4"
    minutes: float = 5.0  # budget for the optimisation loop (counted over resumes), on ``clock``
    clock: str = "wall"  # "wall": wall-clock minutes; "cpu": this process's CPU time / threads, the budget
    #                      "N minutes at T threads" that other work on a shared machine does not eat, provided
    #                      the threads sleep while they wait for each other (OMP_WAIT_POLICY=PASSIVE: spinning
    #                      OpenMP threads burned 7x the budget per step on a loaded machine, 13 vs 86 steps)
    arch: str = "pi"  # "pi" (SignalTrain-Pi, the product) or a comparison baseline from training/baselines.py
    tier: str = "small"
    hop: int = 64
    attention: str = "sparse"
    learn_analysis: bool = True
    level_init: bool = True  # start the gain path at the pairs' level and a shaper at their drive (fit_level, fit_pre_gain), not at 0 dB
    parts: str = "auto"  # model parts: "auto" (measured from the data, training/parts.py) or a list
    #                      from gain,fir,shaper,delay (e.g. "gain,fir"; gain is always in)
    batch: int = 8  # chunks per step per process (torchrun: the global batch is batch x processes)
    lookback_s: float = -1.0  # context only, not scored; -1: 0.5 s, or what the delays found need
    esr_floor_db: float = -50.0  # a chunk's target counts as at least this RMS level (dBFS) in its ESR: a
    #                              near-silent chunk (a drive's high-pass on a bass note) cannot rule the batch
    tail_s: float = 0.5  # scored
    lr: float = 3e-3
    stft_weight: float = 0.1  # multi-resolution STFT loss (auraloss) beside ESR: penalises hop-rate buzz ESR barely sees
    warmup_steps: int = 50
    ema: float = 0.995  # decay of an exponential moving average of the weights for validation and best.pt; 0: off
    val_every_s: float = 20.0
    val_every_steps: int = 0  # > 0: validate (and write last.pt) every this many steps instead of by the clock
    val_chunks: int = 32  # spread over every validation pair (knob setting), evenly within each
    seed: int = 0
    threads: int = 2  # torch CPU threads per process
    max_steps: int = 0  # 0 = no limit but time; > 0: the learning-rate schedule follows the steps (deterministic)
    device: str = "auto"  # "auto": a GPU per process when CUDA is there, else the CPU; or "cpu", "cuda"
    amp: bool = True  # bf16 autocast of the forward pass on GPUs (never on the CPU)
    tensorboard: bool = True  # events in OUT/tb when the tensorboard package is installed
    resume: bool = False  # go on from OUT/last.pt when there is one (the command line's --resume RUN sets it)


def level_ratios(pairs: PairSet, floor: float = 1e-4, shaped=None):
    """-> (mask of the pairs used, their log(RMS target / RMS input)): pairs whose input or target is
    below ``floor`` RMS (-80 dBFS) say nothing about a level. ``shaped(i, x)``: what the gain path
    multiplies instead of the input (a model with a shaper: its output at the fitted drive)."""
    rx = np.array([np.sqrt(np.mean(np.square(x if shaped is None else shaped(i, x), dtype=np.float64)))
                   for i, x in enumerate(pairs.x)])
    ry = np.array([np.sqrt(np.mean(np.square(y, dtype=np.float64))) for y in pairs.y])
    keep = (rx > floor) & (ry > floor)
    return keep, np.log(ry[keep] / rx[keep])


def pre_gains(pairs: PairSet, shape, window_s: float = 0.5, taps: int = 32, stride: int = 8,
              max_pairs: int = 128, floor: float = 1e-4, seed: int = 0):
    """How hard each pair drives a clipper: per pair the log pre-gain g that best explains the
    target as a linear filter of ``shape(exp(g) x)`` (``shape``: the model's waveshaper as it starts),
    a least-squares ``taps``-tap FIR fitted at each g on the pair's loudest ``window_s`` (its outputs
    every ``stride`` samples): g from -1 to 7.5 nats (-9 to +65 dB) in steps of 0.5, then 0.25 either
    side of the best. At most ``max_pairs`` pairs (drawn with ``seed``) are scanned; the others get
    NaN. -> (g per pair, weight per pair): the weight is how much of the error at the smallest g
    the best g removes (0..1), so pairs too quiet to clip (any small g fits them) say nothing;
    NaN and weight 0: a pair not scanned or silent."""
    n = int(window_s * pairs.sample_rate)
    g_best = np.full(len(pairs.x), np.nan)
    weight = np.zeros(len(pairs.x))
    order = np.random.default_rng(seed).permutation(len(pairs.x))[:max_pairs]
    wins, idx = [], []
    for i in sorted(order):
        x, y = np.asarray(pairs.x[i], np.float32), np.asarray(pairs.y[i], np.float32)
        m = min(n, len(x))
        starts = np.arange(0, len(x) - m + 1, max(m // 4, 1))
        s = starts[np.argmax([np.sum(np.square(x[j:j + m], dtype=np.float64)) for j in starts])]
        xs, ys = x[s:s + m], y[s:s + m]
        if np.sqrt(np.mean(np.square(xs, dtype=np.float64))) > floor and np.sqrt(np.mean(np.square(ys, dtype=np.float64))) > floor:
            wins.append((np.pad(xs, (0, n - m)), np.pad(ys, (0, n - m))))
            idx.append(i)
    if not idx:
        return g_best, weight
    xb = torch.from_numpy(np.stack([w[0] for w in wins]))
    yb = torch.from_numpy(np.stack([w[1] for w in wins]))[:, taps - 1::stride]
    eye = torch.eye(taps)

    def miss(g):  # (B,) log pre-gains -> (B,) each pair's relative error of its best FIR of the shaper
        zz = shape(torch.exp(g)[:, None] * xb).unfold(1, taps, 1)[:, ::stride]  # (B, rows, taps)
        a = zz.transpose(1, 2) @ zz
        a = a + 1e-6 * a.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * eye
        h = torch.linalg.solve(a, zz.transpose(1, 2) @ yb[..., None])
        return ((zz @ h)[..., 0] - yb).square().sum(-1) / yb.square().sum(-1).clamp_min(1e-12)

    grid = torch.arange(-1.0, 7.51, 0.5)
    errs = torch.stack([miss(torch.full((len(idx),), float(g))) for g in grid], 1)  # (B, grid)
    first, best = errs[:, 0], errs.argmin(1)
    g, e = grid[best], errs.gather(1, best[:, None])[:, 0]
    for step in (-0.25, 0.25):
        e2 = miss(grid[best] + step)
        g, e = torch.where(e2 < e, grid[best] + step, g), torch.minimum(e, e2)
    g_best[idx] = g.double().numpy()
    weight[idx] = ((first - e) / (first + 1e-3)).clamp_min(0).double().numpy()
    return g_best, weight


def start_drive(model: SignalTrainPi, pairs: PairSet, log=print):
    """Start a shaper's pre-gain at the pairs' drive (pre_gains, SignalTrainPi.fit_pre_gain).
    -> ``shaped(i, x)``: the shaper's output for pair i's input at that drive (what the level fit
    measures the target against), or None when no start was taken."""
    J = model.cfg.shaper_units

    @torch.no_grad()
    def shape(u):
        return model.waveshape(u, torch.zeros(*u.shape, J))
    drive = model.fit_pre_gain(pairs.knobs, *pre_gains(pairs, shape))
    if drive is None:
        log("shaper's pre-gain starts at 0 dB: under 10% of the pairs are explained better by a clipper driven harder")
        return None
    log(f"shaper's pre-gain starts at the pairs' drive: {drive['at_zero_db']:+.1f} dB at knobs 0, linear in "
        f"the knobs (rms miss {drive['rms_miss_db']:.1f} dB over {drive['pairs']} pairs that clip)")
    return lambda i, x: shape(math.exp(drive["per_pair"][i]) * torch.from_numpy(np.asarray(x, np.float32))).numpy()


def esr(pred: torch.Tensor, target: torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    """Error-to-signal ratio per item (B,), the modelling error measure of NAM and the literature.
    ``floor`` (an RMS level, -80 dBFS) keeps near-silent chunks from dominating a batch."""
    return ((pred - target) ** 2).sum(-1) / ((target ** 2).sum(-1) + target.shape[-1] * floor ** 2)


def choose_parts(cfg: TrainConfig, train_set: PairSet, log=print) -> Parts:
    """The model's parts: measured from the training pairs, or the list given in ``cfg.parts``
    (measurements still supply a delay line's range and the per-pair delays, when there are any)."""
    parts = parts_for(train_set, seed=cfg.seed, hop=cfg.hop, log=log)
    if cfg.parts != "auto":
        wanted = {p.strip() for p in cfg.parts.split(",") if p.strip()}
        unknown = wanted - {"gain", "fir", "shaper", "delay", "mod"}
        if unknown:
            raise ValueError(f"--parts {cfg.parts!r}: unknown part(s) {sorted(unknown)} (choose from gain,fir,shaper,delay,mod)")
        if "mod" in wanted and parts.lfo is None:
            raise ValueError(f"--parts {cfg.parts!r}: mod needs a swept delay the pairs show, and none was measured "
                             f"({parts.measures.get('lfo', {}).get('reason', 'the measurement runs when the pairs call for an FIR and no delay line')})")
        parts.fir_taps = 32 if "fir" in wanted else 0
        parts.shaper_units = 8 if "shaper" in wanted else 0
        parts.delay_lines = 1 if "delay" in wanted else 0
        parts.mod_lines = 1 if "mod" in wanted else 0
        if not parts.delay_lines:
            parts.pair_delays, parts.lookback_s = {}, None
        log(f"parts as given: {cfg.parts}")
    return parts


def chunk_sizes(cfg: TrainConfig, hop: int, sample_rate: int, lookback_s: float | None = None) -> tuple[int, int]:
    look_s = cfg.lookback_s if cfg.lookback_s >= 0 else (lookback_s or 0.5)
    look = int(round(look_s * sample_rate / hop)) * hop
    tail = int(round(cfg.tail_s * sample_rate / hop)) * hop
    return look, tail


def validation_chunks(val_set: PairSet, chunk: int, n: int):
    """``n`` fixed chunks (xs, ys, knobs, starts in their pairs) spread over the validation pairs: every pair (a held-out
    knob setting) in turn, each pair's chunks at evenly spaced places; fewer chunks than pairs take
    pairs evenly spaced in the list. The same chunks on every call and in every process."""
    ok = np.flatnonzero(val_set.lengths >= chunk)
    if not len(ok):
        raise ValueError(f"no validation pair is as long as a chunk of {chunk} samples (longest {val_set.lengths.max()})")
    L = len(ok)
    xs, ys, ks = np.empty((n, chunk), np.float32), np.empty((n, chunk), np.float32), np.empty((n, val_set.knobs.shape[1]), np.float32)
    starts = np.empty(n, np.int64)
    for j in range(n):
        if n >= L:
            i, r, m = ok[j % L], j // L, (n - 1 - j % L) // L + 1  # the pair, this chunk's place among the pair's m
        else:
            i, r, m = ok[int(round(j * (L - 1) / max(n - 1, 1)))], 0, 1
        s = int((val_set.lengths[i] - chunk) * (r + 0.5) / m)
        xs[j], ys[j], ks[j], starts[j] = val_set.x[i][s:s + chunk], val_set.y[i][s:s + chunk], val_set.knobs[i], s
    return xs, ys, ks, starts


@torch.no_grad()
def evaluate_chunks(model, xs, ys, ks, look, batch=16, device="cpu", starts=None) -> float:
    """Validation ESR: the error energy over the target energy of all the chunks together, as the
    test measures it per setting (a mean of per-chunk ESRs is ruled by the few near-silent targets)."""
    was_training = model.training
    model.eval()
    err = sig = 0.0
    for i in range(0, len(xs), batch):
        x, y, k = (torch.from_numpy(a[i:i + batch]).to(device) for a in (xs, ys, ks))
        pred = model(x, k) if starts is None else model(x, k, torch.from_numpy(starts[i:i + batch]))
        err += float(((pred[:, look:].float() - y[:, look:]) ** 2).sum())
        sig += float((y[:, look:] ** 2).sum())
    model.train(was_training)
    return err / max(sig, 1e-12)


def learning_rate(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Linear warm-up, then a cosine to zero over the run: over the steps when a step limit is set
    (the same schedule on every machine), else over the time budget."""
    progress = step / cfg.max_steps if cfg.max_steps else elapsed_s / (cfg.minutes * 60.0)
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model, with d ramping up from 0.1 (the average of few steps is
    not yet dominated by the random initial weights). Buffers (BatchNorm statistics) are averaged too."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(p, 1 - d)
        else:
            e.copy_(p)


def train(cfg: TrainConfig, log=print) -> dict:
    if cfg.clock not in ("wall", "cpu"):  # before any data is read or model built
        raise ValueError(f"clock {cfg.clock!r} must be 'wall' or 'cpu'")
    rank, world, device = start_processes(cfg)
    if rank:
        log = lambda *a, **k: None  # noqa: E731  (process 0 speaks for all)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed if rank == 0 else [cfg.seed, rank])  # each process draws its own chunks
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_set = PairSet(Path(cfg.data), "Train")
    val_set = PairSet(Path(cfg.data), "Val")
    parts = choose_parts(cfg, train_set, log) if cfg.arch == "pi" else None
    mcfg = tier_config(cfg.tier, hop=cfg.hop, attention=cfg.attention, learn_analysis=cfg.learn_analysis,
                       n_knobs=len(train_set.knob_specs), sample_rate=train_set.sample_rate,
                       **(parts.model_overrides() if parts else {}))
    if cfg.arch == "pi":
        model = SignalTrainPi(mcfg)
    else:  # comparison baselines (no streaming form, never converted)
        from .baselines import build_baseline
        look, tail = chunk_sizes(cfg, cfg.hop, train_set.sample_rate)
        model = build_baseline(cfg.arch, n_knobs=len(train_set.knob_specs), sample_rate=train_set.sample_rate,
                               hop=cfg.hop, lookback_s=look / train_set.sample_rate, tail_s=tail / train_set.sample_rate)
        mcfg = model.cfg
    look, tail = chunk_sizes(cfg, mcfg.hop, mcfg.sample_rate, parts.lookback_s if parts else None)
    if parts is not None and mcfg.delay_lines and parts.pair_delays:
        # the delay map is fitted to each pair's measured delay, not learned (see training/parts.py)
        fit_delays(model, parts, train_set.knobs, log)
    if parts is not None and mcfg.mod_lines:
        fit = model.fit_mod(parts.lfo)  # the swept delay is measured (training/lfo.py), not learned
        log(f"swept delay set from the measurement: start phase {fit['phase0']:.3f} turns, rate map "
            f"within {100 * fit['rate_error_max']:.2g}% of the measured one")
    if cfg.arch == "pi" and cfg.level_init and not mcfg.delay_lines and not mcfg.mod_lines:
        # a delay model's gain path is the dry part alone: the pairs' level (dry + repeats) is not its level
        # the drive first: with a shaper, the level is the target's over the shaper's output
        shaped = start_drive(model, train_set, log) if mcfg.shaper_units else None
        keep, ratios = level_ratios(train_set, shaped=shaped)
        if keep.any():
            fit = model.fit_level(train_set.knobs[keep], ratios)
            log(f"gain path starts at the pairs' level: {fit['bias_db']:+.1f} dB at knobs 0, linear in the knobs "
                f"(rms miss {fit['rms_miss_db']:.1f} dB over {fit['pairs']} pairs)")
    model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema > 0 else None
    kept = ema if ema is not None else model  # the weights validated and saved
    vx, vy, vk, vs = validation_chunks(val_set, look + tail, cfg.val_chunks)
    lfo = cfg.arch == "pi" and bool(mcfg.mod_lines)  # the model needs each chunk's place in its pair
    dry_val = float(((vx[:, look:] - vy[:, look:]) ** 2).sum() / max(float((vy[:, look:] ** 2).sum()), 1e-12))  # as validated
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    stft_loss = None
    if cfg.stft_weight > 0:
        import auraloss
        stft_loss = auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=[256, 1024, 2048], hop_sizes=[64, 256, 512],
                                                          win_lengths=[256, 1024, 2048]).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.arch}, tier {cfg.tier}, {n_params / 1e3:.1f} k params, hop {mcfg.hop}, "
        f"attention {getattr(mcfg, 'attention', '-')}; "
        f"chunks {look / mcfg.sample_rate:.2f} s look-back + {tail / mcfg.sample_rate:.2f} s scored; "
        f"{len(train_set.pairs)} train pairs; dry-signal val ESR {dry_val:.3f}; "
        f"{world} process{'es' if world > 1 else ''} on {device}")

    # everything the loop changes besides the weights, the optimiser and the random states
    progress = {"step": 0, "elapsed_s": 0.0, "last_val_s": 0.0, "best": math.inf, "best_step": 0, "run_loss": [],
                "history": {"step": [], "time_s": [], "train_esr": [], "val_esr": []}}
    if cfg.resume and (out / "last.pt").exists():
        progress = restore(out / "last.pt", model, ema, opt, rng, rank, world, log)
    elif cfg.resume:
        log(f"{out / 'last.pt'} not found: starting afresh")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = cfg.amp and device.type == "cuda"
    metrics = RunLog(out, progress["step"], cfg.tensorboard, log) if rank == 0 else None
    if rank == 0:
        write_config(cfg, out / "config.toml")
    budget = cfg.minutes * 60.0
    bar = progress_bar(budget, progress["elapsed_s"]) if rank == 0 else None

    saved_step = progress["step"]

    def checkpoint():  # OUT/last.pt: every process's random states, the rest from process 0
        nonlocal saved_step
        saved_step = progress["step"]
        states = gather(world, {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(),
                                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
        if rank == 0:
            metrics.flush()
            resume = {"model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                      "optimizer": opt.state_dict(), "rng": states, "world_size": world, "progress": progress}
            save_checkpoint(out / "last.pt", kept, cfg, train_set,
                            {"val_esr": progress["history"]["val_esr"][-1] if progress["history"]["val_esr"] else None,
                             "step": progress["step"], "time_s": progress["elapsed_s"]}, parts, resume=resume)

    stop = StopOnSignal()
    clock = time.time if cfg.clock == "wall" else (lambda: time.process_time() / max(1, cfg.threads))
    t_start = clock() - progress["elapsed_s"]  # the budget counts earlier runs' training time
    with stop:
        while True:
            step = progress["step"]
            elapsed, stopping = agree(world, device, clock() - t_start, stop.signum)
            if stopping and saved_step != step:
                checkpoint()
            if elapsed >= budget or (cfg.max_steps and step >= cfg.max_steps) or stopping:
                break
            lr = learning_rate(cfg, step, elapsed)
            for g in opt.param_groups:
                g["lr"] = lr
            xs, ys, ks, starts = train_set.batch(rng, cfg.batch, look + tail, with_start=True)
            x, y, k = (torch.from_numpy(a).to(device) for a in (xs, ys, ks))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = (net(x, k, torch.from_numpy(starts)) if lfo else net(x, k))[:, look:]
            pred = pred.float()  # the losses in float32 (cuFFT has no bf16 STFT)
            loss = esr(pred, y[:, look:], 10 ** (cfg.esr_floor_db / 20)).mean()
            if stft_loss is not None:
                loss = loss + cfg.stft_weight * stft_loss(pred[:, None], y[:, None, look:])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP: the gradients averaged over the processes here
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if ema is not None:
                update_ema(ema, model, cfg.ema, step)
            step = progress["step"] = step + 1
            loss_value = loss.item()
            progress["run_loss"].append(loss_value)
            elapsed, _ = agree(world, device, clock() - t_start, 0)
            progress["elapsed_s"] = elapsed
            final = elapsed >= budget or bool(cfg.max_steps and step >= cfg.max_steps)
            due = (step % cfg.val_every_steps == 0) if cfg.val_every_steps else elapsed - progress["last_val_s"] >= cfg.val_every_s
            val = None
            if due or final:
                progress["last_val_s"] = elapsed
                if rank == 0:
                    val = evaluate_chunks(kept, vx, vy, vk, look, device=device, starts=vs if lfo else None)
                    h = progress["history"]
                    h["step"].append(step)
                    h["time_s"].append(round(elapsed, 1))
                    h["train_esr"].append(float(np.mean(progress["run_loss"])))
                    h["val_esr"].append(val)
                    if val < progress["best"]:
                        progress["best"], progress["best_step"] = val, step
                        save_checkpoint(out / "best.pt", kept, cfg, train_set,
                                        {"val_esr": val, "step": step, "time_s": elapsed}, parts)
                progress["run_loss"] = []
            if rank == 0:
                metrics.step(step, elapsed, lr, loss_value, val)
            if due or final:
                checkpoint()
            if bar is not None:
                if val is not None:
                    bar.set_postfix(step=step, train=f"{progress['history']['train_esr'][-1]:.3f}", val=f"{val:.4f}",
                                    best=f"{progress['best']:.4f}")
                bar.update(int(min(elapsed, budget)) - bar.n)
    if bar is not None:
        bar.close()
    step, elapsed, best = progress["step"], progress["elapsed_s"], progress["best"]
    summary = {"steps": step, "train_seconds": round(elapsed, 1), "best_val_esr": best,
               "best_step": progress["best_step"], "dry_val_esr": dry_val, "params": n_params,
               "chunks_per_second": round(step * cfg.batch * world / max(elapsed, 1e-9), 2),
               "processes": world, "device": str(device),
               "interrupted": signal.Signals(stop.signum).name if stop.signum else None,
               "config": asdict(cfg), "model": mcfg.to_dict(), "history": progress["history"]}
    if rank == 0:
        metrics.close()
        (out / "train.json").write_text(json.dumps(summary, indent=1))
        if progress["history"]["step"]:
            plot_history(progress["history"], dry_val, out / "loss.png")
        if stop.signum:
            log(f"interrupted ({signal.Signals(stop.signum).name}) at step {step} after {elapsed:.0f} s of training; "
                f"{out / 'last.pt'} written. Go on with: python -m training.train --resume {out}")
        else:
            log(f"trained {step} steps in {elapsed:.0f} s; best val ESR {best:.4f} at step {progress['best_step']} "
                f"(dry {dry_val:.3f}); checkpoint {out / 'best.pt'}")
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return summary


# =================================================================================================
# around the loop: processes, resume, signals, logs, config files
# =================================================================================================

def start_processes(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL when the processes have GPUs, gloo on the CPU."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    name = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(f"cuda:{local}" if name == "cuda" else name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def agree(world: int, device: torch.device, elapsed: float, signum: int) -> tuple[float, bool]:
    """(elapsed seconds, stop?) the same in every process: the latest clock and any process's signal,
    so that all take the same learning rate and end after the same step."""
    if world == 1:
        return elapsed, bool(signum)
    import torch.distributed as dist
    t = torch.tensor([elapsed, float(signum)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]), bool(t[1])


def gather(world: int, obj) -> list:
    if world == 1:
        return [obj]
    import torch.distributed as dist
    objs = [None] * world
    dist.all_gather_object(objs, obj)
    return objs


def restore(path: Path, model, ema, opt, rng: np.random.Generator, rank: int, world: int, log) -> dict:
    """Load last.pt's weights, optimiser and this process's random states; -> the loop's progress."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    r = ck["resume"]
    model.load_state_dict(r["model"])
    if ema is not None:
        ema.load_state_dict(r["ema"] if r["ema"] is not None else r["model"])
    opt.load_state_dict(r["optimizer"])
    p = r["progress"]
    if r["world_size"] == world:
        rng.bit_generator.state = r["rng"][rank]["numpy"]
        torch.set_rng_state(r["rng"][rank]["torch"])
        if r["rng"][rank]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(r["rng"][rank]["cuda"])
    else:  # another number of processes: fresh draws, still determined by the seed and the step
        rng.bit_generator.state = np.random.default_rng([ck["train_config"]["seed"], rank, p["step"]]).bit_generator.state
        log(f"resuming {r['world_size']} process(es)' run with {world}: the chunk draws start afresh")
    log(f"resumed {path}: step {p['step']}, {p['elapsed_s']:.0f} s of training done, best val ESR {p['best']:.4f}")
    return p


class StopOnSignal:
    """Within ``with``: SIGINT and SIGTERM only set ``signum``; the loop ends its step, writes last.pt
    and returns (handlers can only be set from the main thread; elsewhere signals act as usual)."""

    def __init__(self):
        self.signum, self._old = 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


class RunLog:
    """OUT/metrics.csv (step, time_s, lr, train_loss, val_esr: one row per step) and TensorBoard
    scalars in OUT/tb. A resumed run first drops what came after its checkpoint's step."""

    COLUMNS = ["step", "time_s", "lr", "train_loss", "val_esr"]

    def __init__(self, out: Path, step: int, tensorboard: bool, log=print):
        path = out / "metrics.csv"
        rows = []
        if step and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        self.file = path.open("w", newline="")
        self.csv = csv.DictWriter(self.file, self.COLUMNS, lineterminator="\n")
        self.csv.writeheader()
        self.csv.writerows(rows)
        self.tb = None
        if tensorboard:
            try:
                if "tensorflow" not in sys.modules:  # the writer needs no TensorFlow; importing it would cost seconds
                    import types
                    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out / "tb"), purge_step=step + 1 if step else None)
            except ImportError:
                log("tensorboard is not installed: metrics.csv only")

    def step(self, step: int, elapsed: float, lr: float, loss: float, val: float | None) -> None:
        self.csv.writerow({"step": step, "time_s": f"{elapsed:.3f}", "lr": f"{lr:.6g}", "train_loss": repr(loss),
                           "val_esr": "" if val is None else repr(val)})
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            if val is not None:
                self.tb.add_scalar("val/esr", val, step)

    def flush(self) -> None:
        self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def progress_bar(budget_s: float, done_s: float):
    try:
        from tqdm import tqdm
        return tqdm(total=int(budget_s), initial=int(min(done_s, budget_s)), unit="s", desc="train",
                    dynamic_ncols=True, mininterval=1.0)
    except ImportError:  # tqdm is in the host env; stay usable without it
        return None


def read_config(path: str | Path, strict: bool = True) -> dict:
    """A TOML file's top-level keys as TrainConfig fields (checked by name, numbers as the field's
    type). Unknown keys are an error, or (``strict=False``: a run folder's own config.toml, written
    by an older trainer) left out with a warning."""
    import tomllib
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    kinds = {f.name: type(f.default) for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - set(kinds))
    if unknown and strict:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; TrainConfig has {sorted(kinds)}")
    if unknown:
        print(f"warning: {path}: setting(s) {unknown} no longer exist; left out", file=sys.stderr)
        raw = {k: v for k, v in raw.items() if k in kinds}
    return {k: kinds[k](v) if kinds[k] is float and isinstance(v, int) else v for k, v in raw.items()}


def write_config(cfg: TrainConfig, path: Path) -> None:
    """The run's config as TOML that read_config reads back (``resume`` left out: a later --config
    of this file starts a new run)."""
    lines = ["# written by training.train: the run's configuration (python -m training.train --config this_file)"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in asdict(cfg).items() if k != "resume"]
    path.write_text("\n".join(lines) + "\n")


def save_checkpoint(path: Path, model: SignalTrainPi, cfg: TrainConfig, data: PairSet, metrics: dict,
                    parts: Parts | None = None, resume: dict | None = None) -> None:
    """The weights to use (``state_dict``) with everything convert/ and evaluate need; ``resume``
    (last.pt only): what training.train needs to go on."""
    tmp = path.with_suffix(".tmp")
    torch.save({"arch": cfg.arch, "model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), "train_config": asdict(cfg),
                "effect": data.effect, "knobs": [k.to_dict() for k in data.knob_specs], "metrics": metrics,
                "parts": {"chosen": model.cfg.parts, "measures": parts.measures} if parts else None,
                **({"resume": resume} if resume is not None else {})}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path):
    """-> (model in eval mode on the CPU, checkpoint dict)."""
    from .model import ModelConfig
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck.get("arch", "pi") == "pi":
        model = SignalTrainPi(ModelConfig(**ck["model_config"]))
    else:
        from .baselines import baseline_from_config
        model = baseline_from_config(ck["arch"], ck["model_config"])
    missing, unexpected = model.load_state_dict(ck["state_dict"], strict=False)
    if unexpected or set(missing) - {"level_w", "level_b"}:  # checkpoints from before the level fit: level 0
        raise RuntimeError(f"{path}: weights do not fit the model: missing {missing}, unexpected {unexpected}")
    return model.eval(), ck


def plot_history(history: dict, dry: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(history["time_s"], history["train_esr"], label="train (tail)")
    ax.semilogy(history["time_s"], history["val_esr"], label="validation")
    ax.axhline(dry, color="gray", ls="--", label="dry signal")
    ax.set_xlabel("wall time [s]")
    ax.set_ylabel("ESR")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> TrainConfig:
    """The settings in order: TrainConfig's defaults, RUN/config.toml (--resume RUN), --config FILE, flags."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    first.add_argument("--resume")
    known, _ = first.parse_known_args(argv)
    base = asdict(TrainConfig())
    if known.resume:
        if not (Path(known.resume) / "config.toml").exists():
            raise SystemExit(f"--resume {known.resume}: no config.toml there (not a run folder of training.train)")
        base.update(read_config(Path(known.resume) / "config.toml", strict=False))
    if known.config:
        base.update(read_config(known.config))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a TOML file of TrainConfig settings (flags given here override it)")
    ap.add_argument("--resume", metavar="RUN", help="go on with the interrupted run in RUN (its config.toml and last.pt)")
    for f in fields(TrainConfig):
        if f.name == "resume":
            continue
        kind = (lambda text: text.lower() in ("1", "true", "yes", "on")) if isinstance(f.default, bool) else type(f.default)
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=base[f.name])
    a = vars(ap.parse_args(argv))
    a.pop("config")
    run = a.pop("resume")
    cfg = TrainConfig(**a)
    if run:
        cfg.out, cfg.resume = run, True
    return cfg


def main(argv=None):
    summary = train(parse_args(argv))
    if summary["interrupted"]:  # as a shell reports a process ended by that signal
        sys.exit(128 + signal.Signals[summary["interrupted"]].value)


if __name__ == "__main__":
    main()
