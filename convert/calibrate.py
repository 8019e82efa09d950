"""Calibration data for integer quantization: real (audio, knobs, state) tuples of the step model.

A quantizer picks each tensor's int8 range from what it sees here, so what it sees must be what
the box will see: training audio (never the Test split the golden vectors come from), knob
settings that cover the whole knob space (a Latin hypercube over knob positions, with a knob
change in the middle of every clip), and states that the PyTorch step model really produced by
streaming that audio from a zero state, early hops (a nearly empty cache) and late ones (full
attention memory) alike.
"""
from __future__ import annotations

import numpy as np
import torch

from training.data import PairSet
from training.model import StepModel


def latin_hypercube(n: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dims) points in 0..1, every dimension stratified into n equal bins (each bin used once)."""
    u = (np.arange(n)[:, None] + rng.uniform(0, 1, (n, dims))) / n
    for j in range(dims):
        u[:, j] = u[rng.permutation(n), j]
    return u


def calibration_set(step: StepModel, data, n_clips: int = 16, seconds: float = 1.5, per_clip: int = 32,
                    seed: int = 0, log=print) -> dict[str, np.ndarray]:
    """Stream ``n_clips`` clips of Train-split audio through the PyTorch step model and keep
    ``per_clip`` (audio, knobs, state) input tuples from each, at random hops.
    -> {"audio": (N, hop), "knobs": (N, K), "state": (N, S)} float32, N = n_clips * per_clip."""
    cfg = step.m.cfg
    H, K = cfg.hop, cfg.n_knobs
    train = PairSet(data, "Train", log=lambda *_: None)
    rng = np.random.default_rng(seed)
    n_hops = int(seconds * cfg.sample_rate) // H
    settings = latin_hypercube(2 * n_clips, K, rng).astype(np.float32)  # two knob settings per clip
    ok = np.flatnonzero(train.lengths >= n_hops * H)
    if not len(ok):
        raise ValueError(f"{data}: no Train item is {seconds} s long")
    # different items, loud and quiet alike (no level weighting: quiet passages are real input too)
    items = rng.choice(ok, n_clips, replace=n_clips > len(ok))
    audio, knobs, state = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hop-sized matmuls: threads only add overhead
    try:
        with torch.inference_mode():
            for c, i in enumerate(items):
                s0 = rng.integers(0, train.lengths[i] - n_hops * H + 1)
                x = torch.from_numpy(np.ascontiguousarray(train.x[i][s0:s0 + n_hops * H], np.float32)).view(n_hops, 1, H)
                keep = set(rng.choice(n_hops, per_clip, replace=False).tolist())
                st = step.initial_state()
                for t in range(n_hops):
                    k = torch.from_numpy(settings[2 * c + (t >= n_hops // 2)])[None]
                    if t in keep:
                        audio.append(x[t].numpy().copy())
                        knobs.append(k.numpy().copy())
                        state.append(st.numpy().copy())
                    _, st = step(x[t], k, st)
    finally:
        torch.set_num_threads(threads)
    out = {"audio": np.concatenate(audio), "knobs": np.concatenate(knobs), "state": np.concatenate(state)}
    log(f"calibration: {len(out['audio'])} (audio, knobs, state) tuples from {n_clips} Train clips of {seconds:g} s, "
        f"knobs on a {2 * n_clips}-point Latin hypercube")
    return out
