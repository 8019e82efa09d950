"""The comparison baselines: SignalTrain (2019), a knob LSTM and a FiLM TCN train through the same
loop as the product, keep the causality they claim, and say clearly where they cannot go."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.baselines import (BASELINES, FiLMTCN, KnobLSTM, SignalTrain, SignalTrainConfig, TCNConfig,
                                baseline_from_config, build_baseline)
from training.train import TrainConfig, load_checkpoint, train

REPO = Path(__file__).resolve().parents[2]
TESTKIT_DATA = REPO / "build" / "testkit" / "data"
SMALL_ST = dict(chunk_samples=4096, lookback_samples=2048)  # a short chunk keeps SignalTrain's tests quick


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def shaken(m, seed=0, scale=0.05):
    """Every weight nudged so that no path starts at zero (the output layers start near the dry signal)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn_like(p))
    return m.eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    if (TESTKIT_DATA / "dataset.json").exists():
        return TESTKIT_DATA
    from training.data import build_dataset  # no testkit yet: a tiny comp4 set of our own
    from training.effects import get_effect
    return build_dataset(get_effect("comp4"), tmp_path_factory.mktemp("comp4"), seconds_each=2.0, n_midi=4,
                         n_synth=3, segment_s=1.0, settings_per_segment=2, test_seconds=1.0, log=lambda m: None)


def test_each_baseline_has_a_sane_size_and_says_what_it_costs():
    sizes = {}
    for name in BASELINES:
        m = build_baseline(name, n_knobs=4)
        sizes[name] = n_params(m)
        print(f"{name}: {sizes[name] / 1e3:.1f} k params, {m.cfg.macs_per_second() / 1e6:.0f} M MAC/s, "
              f"hop {m.cfg.hop}, {m.cfg.sample_rate} Hz")
        assert m.cfg.hop == 64 and m.cfg.sample_rate == 48000
        assert set(m.cfg.to_dict()) >= {"n_knobs", "hop", "sample_rate"}
    assert 150e3 <= sizes["signaltrain"] <= 500e3  # a few hundred k: mostly the learned analysis and synthesis
    assert 3e3 <= sizes["lstm"] <= 10e3  # hidden 32, one layer
    assert 30e3 <= sizes["tcn"] <= 80e3  # micro-TCN 4-10-13, 32 channels
    assert TCNConfig().receptive_field == 13333  # 278 ms at 48 kHz


def test_an_unknown_name_lists_the_baselines():
    with pytest.raises(ValueError, match="lstm.*signaltrain.*tcn"):
        build_baseline("wavenet", n_knobs=4)


@pytest.mark.parametrize("name", ["lstm", "tcn"])
def test_outputs_have_the_input_shape_with_global_or_per_hop_knobs(name):
    m = shaken(build_baseline(name, n_knobs=3))
    x = 0.3 * torch.randn(2, 64 * 20)
    with torch.no_grad():
        y_global = m(x, torch.full((2, 3), 0.4))
        y_hops = m(x, torch.full((2, 20, 3), 0.4))
        y_other = m(x, torch.rand(2, 20, 3))
    assert y_global.shape == y_hops.shape == x.shape
    assert torch.allclose(y_global, y_hops, atol=1e-6)  # a constant per-hop knob is the global knob
    assert float((y_other - y_global).abs().max()) > 1e-4  # and the knobs reach the output


@pytest.mark.parametrize("name", ["lstm", "tcn"])
def test_a_change_at_sample_m_changes_nothing_before_m(name):
    m = shaken(build_baseline(name, n_knobs=4))
    n, at = 64 * 40, 1500
    x = 0.3 * torch.randn(1, n)
    x2 = x.clone()
    x2[0, at] += 0.5
    k = torch.rand(1, n // 64, 4)
    with torch.no_grad():
        y, y2 = m(x, k), m(x2, k)
    assert float((y2 - y)[:, :at].abs().max()) == 0.0
    assert float((y2 - y)[:, at:].abs().max()) > 1e-3


def test_signaltrain_front_end_starts_as_a_perfect_reconstruction_pair():
    m = SignalTrain(SignalTrainConfig(**SMALL_ST))
    x = 0.5 * torch.randn(2, 4096)
    with torch.no_grad():
        mag, phase = m.analyse(x)  # (B, bins, T_in)
        y = m.synthesise(mag[..., -m.cfg.frames_out:], phase[..., -m.cfg.frames_out:])
    assert mag.shape == (2, m.cfg.n_bins, m.cfg.frames_in)
    assert float((y - x[:, 2048:]).abs().max()) < 1e-4


def test_signaltrain_is_tied_to_its_chunk_and_says_so():
    m = SignalTrain(SignalTrainConfig(**SMALL_ST)).train()
    x = 0.3 * torch.randn(2, 4096)
    assert m(x, torch.rand(2, 4)).shape == x.shape
    assert m(x, torch.rand(2, 64, 4)).shape == x.shape
    with pytest.raises(ValueError, match=r"exactly 4096 samples \(2048 look-back \+ 2048 scored\), got N = 8192"):
        m(0.3 * torch.randn(2, 8192), torch.rand(2, 4))
    default = build_baseline("signaltrain", n_knobs=4).train()
    with pytest.raises(ValueError, match="exactly 48000 samples"):
        default(torch.zeros(1, 24000), torch.zeros(1, 4))


def test_signaltrain_runs_long_audio_in_eval_mode_as_sliding_chunks():
    m = shaken(SignalTrain(SignalTrainConfig(**SMALL_ST)), scale=0.01)
    x, k = 0.3 * torch.randn(1, 2048 * 5 - 640), torch.rand(1, 4)
    with torch.no_grad():
        y = m(x, k)
        one = m(x[:, :4096], k)
        y_hops = m(x, k[:, None].expand(1, x.shape[1] // 64, 4))
    assert y.shape == x.shape
    assert torch.allclose(y_hops, y, atol=1e-6)  # per-hop knobs: one vector per window (the tail's mean)
    # look-back = tail here, so the second window is exactly the first chunk
    assert torch.allclose(y[:, 2048:4096], one[:, 2048:], atol=1e-6)
    assert torch.equal(one[:, :2048], x[:, :2048])  # the unscored look-back is passed through dry


def test_configs_round_trip_through_a_checkpoint_dict():
    for name, (config_cls, _) in BASELINES.items():
        m = build_baseline(name, n_knobs=2, sample_rate=44100)
        m2 = baseline_from_config(name, m.cfg.to_dict())
        assert type(m2) is type(m) and m2.cfg == m.cfg
    st = build_baseline("signaltrain", n_knobs=2, sample_rate=44100).cfg
    assert (st.lookback_samples, st.chunk_samples) == (22080, 44160)  # training.train.chunk_sizes at 44.1 kHz


@pytest.mark.parametrize("name", ["signaltrain", "lstm", "tcn"])
def test_three_training_steps_write_a_checkpoint_that_loads(name, dataset, tmp_path):
    cfg = TrainConfig(data=str(dataset), out=str(tmp_path), max_steps=3, minutes=10, val_every_s=1e9, val_chunks=4,
                      batch=2, arch=name, threads=1)
    summary = train(cfg, log=lambda m: None)
    assert summary["steps"] == 3 and summary["model"]["hop"] == 64
    assert torch.isfinite(torch.tensor(summary["best_val_esr"]))
    model, ck = load_checkpoint(tmp_path / "best.pt")
    assert ck["arch"] == name and type(model) is {"signaltrain": SignalTrain, "lstm": KnobLSTM, "tcn": FiLMTCN}[name]
    x = 0.1 * torch.randn(1, 48000)
    with torch.no_grad():
        y = model(x, torch.full((1, 4), 0.5))
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
