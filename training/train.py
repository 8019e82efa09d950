"""Train a SignalTrain-Pi model on a dataset, within a wall-clock budget.

    python -m training.train --data data/comp4-demo --out runs/comp4 --minutes 5

A plain loop (nanoGPT style): random chunks of look-back + tail, loss on the tail only (the
look-back is context, so attack and release can be learned), Adam with warm-up and cosine decay
over the time budget, validation on fixed chunks, the best checkpoint kept.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .data import PairSet
from .model import SignalTrainPi, tier_config
from .parts import Parts, parts_for


@dataclass
class TrainConfig:
    data: str = "data/comp4-demo"
    out: str = "runs/comp4"
    minutes: float = 5.0  # wall-clock budget for the optimisation loop
    arch: str = "pi"  # "pi" (SignalTrain-Pi, the product) or a comparison baseline from training/baselines.py
    tier: str = "small"
    hop: int = 64
    attention: str = "sparse"
    learn_analysis: bool = True
    parts: str = "auto"  # model parts: "auto" (measured from the data, training/parts.py) or a list
    #                      from gain,fir,shaper,delay (e.g. "gain,fir"; gain is always in)
    batch: int = 8
    lookback_s: float = -1.0  # context only, not scored; -1: 0.5 s, or what the delays found need
    esr_floor_db: float = -50.0  # a chunk's target counts as at least this RMS level (dBFS) in its ESR: a
    #                              near-silent chunk (a drive's high-pass on a bass note) cannot rule the batch
    delay_weight: float = 1.0  # teaching the delay line each pair's measured delay (see training/parts.py)
    tail_s: float = 0.5  # scored
    lr: float = 3e-3
    stft_weight: float = 0.1  # multi-resolution STFT loss (auraloss) beside ESR: penalises hop-rate buzz ESR barely sees
    warmup_steps: int = 50
    val_every_s: float = 20.0
    val_chunks: int = 32
    seed: int = 0
    threads: int = 2
    max_steps: int = 0  # 0 = no limit but time


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
        unknown = wanted - {"gain", "fir", "shaper", "delay"}
        if unknown:
            raise ValueError(f"--parts {cfg.parts!r}: unknown part(s) {sorted(unknown)} (choose from gain,fir,shaper,delay)")
        parts.fir_taps = 32 if "fir" in wanted else 0
        parts.shaper_units = 8 if "shaper" in wanted else 0
        parts.delay_lines = 1 if "delay" in wanted else 0
        if not parts.delay_lines:
            parts.pair_delays, parts.lookback_s = {}, None
        log(f"parts as given: {cfg.parts}")
    return parts


def chunk_sizes(cfg: TrainConfig, hop: int, sample_rate: int, lookback_s: float | None = None) -> tuple[int, int]:
    look_s = cfg.lookback_s if cfg.lookback_s >= 0 else (lookback_s or 0.5)
    look = int(round(look_s * sample_rate / hop)) * hop
    tail = int(round(cfg.tail_s * sample_rate / hop)) * hop
    return look, tail


@torch.no_grad()
def evaluate_chunks(model, xs, ys, ks, look, batch=16) -> float:
    """Validation ESR: the error energy over the target energy of all the chunks together, as the
    test measures it per setting (a mean of per-chunk ESRs is ruled by the few near-silent targets)."""
    model.eval()
    err = sig = 0.0
    for i in range(0, len(xs), batch):
        x, y, k = (torch.from_numpy(a[i:i + batch]) for a in (xs, ys, ks))
        err += float(((model(x, k)[:, look:] - y[:, look:]) ** 2).sum())
        sig += float((y[:, look:] ** 2).sum())
    model.train()
    return err / max(sig, 1e-12)


def train(cfg: TrainConfig, log=print) -> dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
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
        model = build_baseline(cfg.arch, n_knobs=len(train_set.knob_specs), sample_rate=train_set.sample_rate)
        mcfg = model.cfg
    look, tail = chunk_sizes(cfg, mcfg.hop, mcfg.sample_rate, parts.lookback_s if parts else None)
    # each training pair's measured delay as a position in the line's range (NaN: none measured)
    delay_pos = np.full(len(train_set.pairs), np.nan, np.float32)
    if parts is not None and mcfg.delay_lines:
        for i, lag in parts.pair_delays.items():
            delay_pos[i] = model.delay_to_position(lag)
        model.teach_delay = bool(np.isfinite(delay_pos).any())
    vx, vy, vk = val_set.fixed_chunks(look + tail, cfg.val_chunks)
    dry_val = float(((vx[:, look:] - vy[:, look:]) ** 2).sum() / max(float((vy[:, look:] ** 2).sum()), 1e-12))  # as validated
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    stft_loss = None
    if cfg.stft_weight > 0:
        import auraloss
        stft_loss = auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=[256, 1024, 2048], hop_sizes=[64, 256, 512],
                                                          win_lengths=[256, 1024, 2048])
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.arch}, tier {cfg.tier}, {n_params / 1e3:.1f} k params, hop {mcfg.hop}, "
        f"attention {getattr(mcfg, 'attention', '-')}; "
        f"chunks {look / mcfg.sample_rate:.2f} s look-back + {tail / mcfg.sample_rate:.2f} s scored; "
        f"{len(train_set.pairs)} train pairs; dry-signal val ESR {dry_val:.3f}")

    try:
        from tqdm import tqdm
        bar = tqdm(total=int(cfg.minutes * 60), unit="s", desc="train", dynamic_ncols=True, mininterval=1.0)
    except ImportError:  # tqdm is in the host env; stay usable without it
        bar = None
    budget = cfg.minutes * 60.0
    history = {"step": [], "time_s": [], "train_esr": [], "val_esr": []}
    best, best_step, step, t_start, last_val, shown, run_loss = math.inf, 0, 0, time.time(), 0.0, 0, []
    while True:
        elapsed = time.time() - t_start
        if elapsed >= budget or (cfg.max_steps and step >= cfg.max_steps):
            break
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0)))
        for g in opt.param_groups:
            g["lr"] = lr
        xs, ys, ks, idx = train_set.batch(rng, cfg.batch, look + tail, with_index=True)
        x, y, k = torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(ks)
        pred = model(x, k)[:, look:]
        loss = esr(pred, y[:, look:], 10 ** (cfg.esr_floor_db / 20)).mean()
        taught = torch.from_numpy(delay_pos[idx])
        seen = ~torch.isnan(taught)
        if cfg.arch == "pi" and mcfg.delay_lines and seen.any():
            # the first line learns each pair's measured delay (before the clamp to 0..1: no dead zone)
            pos = model.delay_from_knobs(k[seen])[:, 0]
            loss = loss + cfg.delay_weight * ((pos - taught[seen]) ** 2).mean()
        if stft_loss is not None:
            loss = loss + cfg.stft_weight * stft_loss(pred[:, None], y[:, None, look:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss.append(loss.item())
        elapsed = time.time() - t_start
        final = elapsed >= budget or (cfg.max_steps and step >= cfg.max_steps)
        if elapsed - last_val >= cfg.val_every_s or final:
            last_val = elapsed
            val = evaluate_chunks(model, vx, vy, vk, look)
            history["step"].append(step)
            history["time_s"].append(round(elapsed, 1))
            history["train_esr"].append(float(np.mean(run_loss)))
            history["val_esr"].append(val)
            run_loss = []
            if val < best:
                best, best_step = val, step
                save_checkpoint(out / "best.pt", model, cfg, train_set, {"val_esr": val, "step": step, "time_s": elapsed},
                                parts)
            if bar is not None:
                bar.set_postfix(step=step, train=f"{history['train_esr'][-1]:.3f}", val=f"{val:.4f}", best=f"{best:.4f}")
        if bar is not None:
            bar.update(int(min(elapsed, budget)) - shown)
            shown = int(min(elapsed, budget))
    if bar is not None:
        bar.close()
    summary = {"steps": step, "train_seconds": round(time.time() - t_start, 1), "best_val_esr": best,
               "best_step": best_step, "dry_val_esr": dry_val, "params": n_params,
               "chunks_per_second": round(step * cfg.batch / (time.time() - t_start), 2),
               "config": asdict(cfg), "model": mcfg.to_dict(), "history": history}
    (out / "train.json").write_text(json.dumps(summary, indent=1))
    plot_history(history, dry_val, out / "loss.png")
    log(f"trained {step} steps in {summary['train_seconds']:.0f} s; best val ESR {best:.4f} at step {best_step} "
        f"(dry {dry_val:.3f}); checkpoint {out / 'best.pt'}")
    return summary


def save_checkpoint(path: Path, model: SignalTrainPi, cfg: TrainConfig, data: PairSet, metrics: dict,
                    parts: Parts | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"arch": cfg.arch, "model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), "train_config": asdict(cfg),
                "effect": data.effect, "knobs": [k.to_dict() for k in data.knob_specs], "metrics": metrics,
                "parts": {"chosen": model.cfg.parts, "measures": parts.measures} if parts else None}, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path):
    """-> (model in eval mode, checkpoint dict)."""
    from .model import ModelConfig
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck.get("arch", "pi") == "pi":
        model = SignalTrainPi(ModelConfig(**ck["model_config"]))
    else:
        from .baselines import baseline_from_config
        model = baseline_from_config(ck["arch"], ck["model_config"])
    model.load_state_dict(ck["state_dict"])
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f, v in asdict(TrainConfig()).items():
        kind = (lambda text: text.lower() in ("1", "true", "yes", "on")) if isinstance(v, bool) else type(v)
        ap.add_argument("--" + f.replace("_", "-"), type=kind, default=v)
    train(TrainConfig(**vars(ap.parse_args(argv))))


if __name__ == "__main__":
    main()
