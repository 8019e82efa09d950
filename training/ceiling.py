"""The structure's ceiling: how close the model's sample path gets to one knob setting when
nothing has to be learned across settings.

    python -m training.ceiling runs/drive/best.pt --data data/drive-demo [--settings 4] [--steps 400]

For each chosen test setting (spread over the held-out knob grid), a copy of the checkpoint's
model whose trunk is replaced by one learned constant vector (no analysis, no attention: every
frame gets the same per-frame values, as a fixed setting of a static effect would) is fitted,
heads and sample path together, to that setting's test pairs, every sample scored (chunks may
start before a pair with silence, as a render from reset does). Its ESR on those pairs is the
best the parts can do there (in-sample: a bound, not a forecast); the trained model's ESR on the
same pairs is printed beside it. Ceiling near the model's ESR: the parts limit it. Ceiling far
below: learning across settings does (budget, data, optimisation).

Only for models without delay lines (their delays are fitted per setting, not learned).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from .data import PairSet
from .train import esr, load_checkpoint


def spread(positions: np.ndarray, n: int) -> list[int]:
    """Indices of ``n`` rows of ``positions`` far from each other (farthest-point, from the first)."""
    chosen = [0]
    d = np.linalg.norm(positions - positions[0], axis=1)
    while len(chosen) < min(n, len(positions)):
        i = int(d.argmax())
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(positions - positions[i], axis=1))
    return chosen


def constant_trunk(model):
    """A copy of ``model`` whose heads see one learned vector at every frame instead of the trunk."""
    m = copy.deepcopy(model).train()
    const = torch.nn.Parameter(torch.randn(m.cfg.d_model) * 0.1)
    m.register_parameter("setting_vector", const)
    m.blocks = torch.nn.ModuleList()

    def trunk_in(feats, knobs):
        B, T = feats.shape[:2]
        return const.expand(B, T, -1), None

    m.trunk_in = trunk_in
    return m


def fit_setting(model, xs: list[np.ndarray], ys: list[np.ndarray], knobs: np.ndarray, steps: int, chunk_s: float = 1.0,
                lr: float = 3e-3, seed: int = 0) -> tuple[float, float]:
    """-> (ceiling ESR, trained model ESR) over the pairs ``xs``/``ys`` of one setting."""
    H, sr = model.cfg.hop, model.cfg.sample_rate
    C = int(chunk_s * sr) // H * H
    lead = C // 4  # context before the scored part; chunks may begin up to this far before a pair
    m = constant_trunk(model)
    with torch.no_grad():  # start at the setting's level: the fit then shapes, not walks a gain for hundreds of steps
        out = [m(torch.from_numpy(x[:len(x) // H * H])[None], torch.from_numpy(knobs)[None])[0].numpy() for x in xs]
        got = np.sqrt(np.mean(np.concatenate(out) ** 2))
        want = np.sqrt(np.mean(np.concatenate(ys) ** 2))
        if got > 1e-6 and want > 1e-6:
            m.gain_head.bias += float(np.log(want / got))
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    pads = [(np.concatenate([np.zeros(lead, np.float32), x]), np.concatenate([np.zeros(lead, np.float32), y]))
            for x, y in zip(xs, ys)]
    k = torch.from_numpy(np.repeat(knobs[None], 4, 0))
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        bx, by = [], []
        for i in rng.integers(0, len(pads), 4):
            x, y = pads[i]
            s = int(rng.integers(0, max(1, len(x) - C)))
            bx.append(x[s:s + C])
            by.append(y[s:s + C])
        x, y = torch.from_numpy(np.stack(bx)), torch.from_numpy(np.stack(by))
        loss = esr(m(x, k)[:, lead:], y[:, lead:]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    @torch.no_grad()
    def pooled(net):
        err = sig = 0.0
        for x, y in zip(xs, ys):
            n = len(x) // H * H
            p = net(torch.from_numpy(x[:n])[None], torch.from_numpy(knobs)[None])[0].numpy()
            err += float(((p - y[:n]) ** 2).sum())
            sig += float((y[:n] ** 2).sum())
        return err / max(sig, 1e-12)

    return pooled(m.eval()), pooled(model)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the dataset: its Test pairs are fitted")
    ap.add_argument("--settings", type=int, default=4, help="test settings to fit, spread over the knob grid")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, ck = load_checkpoint(a.checkpoint)
    if ck.get("arch", "pi") != "pi":
        raise SystemExit(f"{a.checkpoint}: arch {ck.get('arch')!r}: the ceiling is for the product's model (pi)")
    if model.cfg.delay_lines:
        raise SystemExit(f"{a.checkpoint}: a model with delay lines (their delays are fitted per setting, not learned)")
    test = PairSet(a.data, "Test")
    keys = sorted({tuple(k) for k in test.knobs.tolist()})
    rows = []
    for i in spread(np.array(keys), a.settings):
        key = keys[i]
        idx = [j for j, k in enumerate(test.knobs.tolist()) if tuple(k) == key]
        ceiling, trained = fit_setting(model, [test.x[j] for j in idx], [test.y[j] for j in idx],
                                       np.array(key, np.float32), a.steps)
        values = dict(zip([s.name for s in test.knob_specs], (round(v, 3) for v in test.pairs[idx[0]].knobs)))
        rows.append({"knobs": values, "pairs": len(idx), "ceiling_esr": ceiling, "model_esr": trained})
        print(f"{values}: ceiling ESR {ceiling:.4f}, trained model {trained:.4f} ({len(idx)} pairs)", flush=True)
    c, t = np.array([r["ceiling_esr"] for r in rows]), np.array([r["model_esr"] for r in rows])
    print(f"median over {len(rows)} settings: ceiling {np.median(c):.4f} (range {c.min():.4f}-{c.max():.4f}), "
          f"trained model {np.median(t):.4f} (range {t.min():.4f}-{t.max():.4f})")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"checkpoint": str(a.checkpoint), "steps": a.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
