"""Active learning for a capture: which knob settings to capture next.

    python -m training.propose --data CAPTURE_DIR --runs RUN_A RUN_B [RUN_C ...] [--add 8]

After a first capture (``python -m device capture``) and a few models trained on it that differ
only in their seed (an ensemble: ``python -m training.train --data DIR --out runs/a --seed 0``, then
``--seed 1``, ...), the settings where those models disagree most are where the capture says least
(as PANAMA, ISMIR 2025, proposes for parametric amp captures). This command plays the capture's
Val input through every model at ``--candidates`` random settings (rounded as a person sets them),
scores each by the ensemble's disagreement (the members' mean squared deviation from their mean,
over the mean's energy), and keeps the ``--add`` most disputed that lie at least ``--min-gap`` of
knob travel from each other and from the settings already captured. They go to a JSON file
(default: CAPTURE_DIR/proposed.json) that the box takes:

    python -m device capture --out CAPTURE_DIR --add CAPTURE_DIR/proposed.json

which appends them to the plan and carries on with them. Then train again on the larger capture.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from device.capture.plan import dial_value
from device.knobspec import KnobSpec

from .train import load_checkpoint

FORMAT = "signaltrain-pi capture settings"


def disagreement(models, x: np.ndarray, positions: np.ndarray, batch: int = 16) -> np.ndarray:
    """(n,) the ensemble's disagreement at each row of knob ``positions`` (0..1), on input ``x``."""
    hop = max(m.cfg.hop for m in models)
    x = torch.from_numpy(np.ascontiguousarray(x[: len(x) // hop * hop], np.float32))
    out = np.empty(len(positions))
    with torch.no_grad():
        for i in range(0, len(positions), batch):
            k = torch.from_numpy(positions[i:i + batch].astype(np.float32))
            ys = torch.stack([m(x.expand(len(k), -1).contiguous(), k).float() for m in models])  # (members, B, T)
            mean = ys.mean(0)
            out[i:i + batch] = (((ys - mean) ** 2).mean(0).sum(-1) / ((mean ** 2).sum(-1) + 1e-9)).numpy()
    return out


def propose(specs: list[KnobSpec], models, x: np.ndarray, have: list[list[float]], n: int, candidates: int = 256,
            min_gap: float = 0.15, seed: int = 0) -> tuple[list[list[float]], list[float]]:
    """-> (settings, their disagreement), the most disputed first."""
    rng = np.random.default_rng(seed)
    rows, seen = [], {tuple(r) for r in have}
    for p in rng.uniform(0, 1, (candidates, len(specs))):
        row = tuple(float(dial_value(k, k.from_normalized(float(q)))) for k, q in zip(specs, p))
        if row not in seen:
            seen.add(row)
            rows.append(list(row))
    pos = np.array([[k.to_normalized(v) for k, v in zip(specs, r)] for r in rows])
    score = disagreement(models, x, pos)
    taken = [np.array([k.to_normalized(v) for k, v in zip(specs, r)]) for r in have]
    picked, scores = [], []
    for i in np.argsort(-score):
        if len(picked) == n:
            break
        if all(np.linalg.norm(pos[i] - t) >= min_gap for t in taken):
            picked.append(rows[i])
            scores.append(float(score[i]))
            taken.append(pos[i])
    return picked, scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the capture folder (python -m device capture --out)")
    ap.add_argument("--runs", type=Path, nargs="+", required=True,
                    help="two or more runs (or their .pt checkpoints) trained on it with different seeds")
    ap.add_argument("--add", type=int, default=8, help="settings to propose")
    ap.add_argument("--candidates", type=int, default=256, help="random settings to score")
    ap.add_argument("--min-gap", type=float, default=0.15, help="knob travel (0..1 per knob) between proposals")
    ap.add_argument("--seconds", type=float, default=4.0, help="of the Val input played through the models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="the settings file (default: DATA/proposed.json)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if len(a.runs) < 2:
        raise SystemExit("--runs: an ensemble needs two or more models")
    state = json.loads((a.data / "capture.json").read_text())
    specs = [KnobSpec.from_dict(k, f"{a.data / 'capture.json'}: knobs[{i}]") for i, k in enumerate(state["knobs"])]
    names = [k.name for k in specs]
    models = []
    for run in a.runs:
        model, ck = load_checkpoint(run / "best.pt" if run.is_dir() else run)
        if [k["name"] for k in ck["knobs"]] != names:
            raise SystemExit(f"{run}: trained on the knobs {[k['name'] for k in ck['knobs']]}, the capture has {names}")
        models.append(model)
    x, sr = sf.read(a.data / "input" / "Val.wav", dtype="float32")
    x = x[: int(a.seconds * sr)]
    settings, scores = propose(specs, models, x, state["plan"], a.add, a.candidates, a.min_gap, a.seed)
    out = a.out or a.data / "proposed.json"
    out.write_text(json.dumps({"format": FORMAT, "knobs": names, "settings": settings, "disagreement": scores,
                               "how": f"ensemble disagreement of {len(models)} models over {a.candidates} candidates",
                               "runs": [str(r) for r in a.runs]}, indent=1) + "\n")
    for row, s in zip(settings, scores):
        print("  " + "   ".join(f"{k.name} {v:g}" for k, v in zip(specs, row)) + f"   (disagreement {s:.3g})")
    print(f"{len(settings)} settings in {out}; on the box:  python -m device capture --out {a.data} --add {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
