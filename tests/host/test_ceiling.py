"""training.ceiling: the parts' best at one setting, fitted with the trunk replaced by a constant."""
from __future__ import annotations

import numpy as np

from training.ceiling import fit_setting, spread
from training.data import PairSet, build_dataset
from training.effects import get_effect
from training.train import TrainConfig, load_checkpoint, train


def test_spread_picks_settings_far_apart():
    pos = np.array([[0, 0], [0.1, 0], [1, 1], [0.9, 1], [0, 1]], float)
    assert spread(pos, 3) == [0, 2, 4]


def test_the_ceiling_at_one_setting_beats_a_barely_trained_model_there(tmp_path):
    data = build_dataset(get_effect("drive"), tmp_path / "data", n_midi=4, n_synth=3, seconds_each=3.0,
                         settings_per_segment=2, log=lambda *a: None)
    train(TrainConfig(data=str(data), out=str(tmp_path / "run"), max_steps=4, tier="nano", batch=2, tail_s=0.1,
                      val_every_s=1e9, val_chunks=2), log=lambda *a: None)
    model, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    test = PairSet(data, "Test")
    key = test.knobs[0]
    idx = [i for i, k in enumerate(test.knobs) if np.array_equal(k, key)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ceiling, trained = fit_setting(model, [test.x[i] for i in idx], [test.y[i] for i in idx], key, steps=80, chunk_s=0.5)
    assert ceiling < 0.5 * trained, (ceiling, trained)
    assert ceiling < 0.5
    # the trained model itself is left as it was (the fit works on a copy)
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())
