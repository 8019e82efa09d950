"""The model: its streaming form is the offline form, hop by hop, at low latency."""
from pathlib import Path

import numpy as np
import pytest
import torch

from training.lfo import example_fit
from training.model import ModelConfig, SignalTrainPi, StepModel, macs_per_second, tier_config

REPO = Path(__file__).resolve().parents[2]


def randomised(cfg, seed=0):
    torch.manual_seed(seed)
    m = SignalTrainPi(cfg).eval()
    with torch.no_grad():  # the heads start near zero; shake every weight so all paths matter
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for line in range(cfg.delay_lines):  # delays that move with every knob, across the lines' range
        k = torch.rand(64, cfg.n_knobs, dtype=torch.float64).numpy()
        m.fit_delay_map(k, cfg.delay_min + (cfg.delay_max - cfg.delay_min) * (0.1 + 0.8 * k.mean(1) ** (line + 1)), line)
    if cfg.mod_lines:  # a chorus's sweep, reaching from 0 to most of the line
        reach = 0.45 * cfg.mod_max / cfg.mod_echoes  # every fed-back pass within the line
        m.fit_mod(example_fit(cfg.n_knobs, cfg.sample_rate, centre=reach, sweep=reach))
        with torch.no_grad():
            m.mod_head.bias.fill_(0.7)
    return m


def stream(m, x, knobs):
    st = StepModel(m).eval()
    s, H, outs = st.initial_state(), m.cfg.hop, []
    with torch.no_grad():
        for t in range(x.shape[1] // H):
            y, s = st(x[:, t * H:(t + 1) * H], knobs[:, t], s)
            outs.append(y)
    return torch.cat(outs, 1)


def knob_changes(n_hops, n_knobs, every=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    steps = torch.rand(n_hops // every + 1, n_knobs, generator=g)
    return steps.repeat_interleave(every, 0)[:n_hops][None]


def test_streaming_equals_offline_on_10_s_with_knob_changes():
    cfg = tier_config("small")
    m = randomised(cfg)
    n = 10 * cfg.sample_rate // cfg.hop * cfg.hop
    x = 0.3 * torch.randn(1, n, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.05, 1, n)
    k = knob_changes(n // cfg.hop, cfg.n_knobs)
    with torch.no_grad():
        off = m(x, k)
    on = stream(m, x, k)
    assert float((off - on).abs().max()) <= 1e-5
    assert float(off.abs().max()) > 0.1  # a real signal, not zeros


PART_CONFIGS = {  # every part the data can switch on, alone and together
    "shaper": dict(shaper_units=8),
    "delay": dict(delay_lines=2, delay_min=200, delay_max=3000),
    "all": dict(fir_taps=0, shaper_units=4, delay_lines=1, delay_min=129, delay_max=1000),
    "mod": dict(mod_lines=1, mod_max=1024),
    "mod_feedback": dict(mod_lines=1, mod_max=2048, mod_echoes=4),
}


@pytest.mark.parametrize("name", sorted(PART_CONFIGS))
def test_streaming_equals_offline_for_every_part(name):
    cfg = ModelConfig(local_frames=8, mem_block_frames=5, mem_slots=3, mem2_block_frames=20, mem2_slots=3,
                      **PART_CONFIGS[name])
    m = randomised(cfg, seed=3)
    if cfg.delay_lines:  # feedback and wet level well away from zero: the lines must matter
        with torch.no_grad():
            m.delay_head.bias.fill_(0.7)
    T = 203
    x = 0.5 * torch.randn(1, T * cfg.hop, generator=torch.Generator().manual_seed(4))
    k = knob_changes(T, cfg.n_knobs, every=17)
    with torch.no_grad():
        off = m(x, k)
        dry = SignalTrainPi(ModelConfig(local_frames=8, mem_block_frames=5, mem_slots=3, mem2_block_frames=20,
                                        mem2_slots=3))(x, k)
    assert float((off - stream(m, x, k)).abs().max()) <= 1e-5
    assert float((off - dry).abs().max()) > 0.1  # the part is active


@pytest.mark.parametrize("T_frames,fir_taps", [(50, 32), (203, 32), (203, 0)])  # partial blocks; gain-only
def test_streaming_equals_offline_with_small_windows(T_frames, fir_taps):
    cfg = ModelConfig(local_frames=8, mem_block_frames=5, mem_slots=3, fir_taps=fir_taps)
    m = randomised(cfg, seed=3)
    x = 0.5 * torch.randn(2, T_frames * cfg.hop)
    k = knob_changes(T_frames, cfg.n_knobs, every=17).expand(2, -1, -1)
    with torch.no_grad():
        off = m(x, k)
    for b in range(2):
        assert float((off[b:b + 1] - stream(m, x[b:b + 1], k[b:b + 1])).abs().max()) <= 1e-5


@pytest.mark.parametrize("hop", [64, 128])
def test_a_click_measures_the_declared_latency(hop):
    """Perturb the input at sample m and find the earliest output that moves: the model looks at
    most hop-1 samples ahead (it waits for a whole hop), so the latency is exactly `hop`."""
    cfg = tier_config("small", hop=hop)
    m = randomised(cfg, seed=4)
    n = 40 * hop
    x = 0.2 * torch.randn(1, n, generator=torch.Generator().manual_seed(5))
    k = torch.full((1, cfg.n_knobs), 0.5)
    with torch.no_grad():
        base = m(x, k)
        worst = 0
        for pos in [20 * hop + o for o in (0, 1, hop // 2, hop - 1)] + [21 * hop + hop - 1]:
            xc = x.clone()
            xc[0, pos] += 1.0  # a click
            moved = torch.nonzero((m(xc, k) - base).abs()[0] > 0)  # any dependence at all
            first = int(moved[0])
            assert first <= pos  # it is heard no later than it arrives
            worst = max(worst, pos - first + 1)
    assert worst == cfg.latency_samples == hop <= 128


def test_the_delay_map_fits_measured_delays_to_a_fraction_of_a_sample():
    """An echo's delay knob with a log taper (20..500 ms): the fitted map holds the delay at
    settings between the measured ones to well under a sample; a wrong measurement (a peak caught at
    the wrong lag) is left out, not averaged in."""
    cfg = ModelConfig(n_knobs=3, delay_lines=1, delay_min=720, delay_max=720 + 28672)
    m = SignalTrainPi(cfg)
    rng = np.random.default_rng(0)
    k = rng.random((200, 3))
    true = lambda k: np.floor(960.0 * 25.0 ** k[:, 0])  # noqa: E731 (the effect's own map, whole samples)
    measured = true(k)
    measured[7] = 64.5  # a wrong peak
    fit = m.fit_delay_map(k, measured)
    assert fit["left_out"] == [7] and fit["rms_samples"] < 0.5
    held_out = rng.random((50, 3))
    with torch.no_grad():
        got = m.delay_positions(torch.clamp(m.delay_from_knobs(torch.from_numpy(held_out).float())[:, 0], 0, 1))
    err = np.abs(got.double().numpy() - true(held_out))
    assert err.max() < 1.0 and np.median(err) < 0.3, (err.max(), np.median(err))


def test_the_gain_path_starts_at_the_recorded_level():
    """fit_level: pairs whose level (log RMS ratio) is linear in the knobs start the gain head there."""
    m = SignalTrainPi(tier_config("nano", n_knobs=3))
    rng = np.random.default_rng(0)
    knobs = rng.uniform(0, 1, (60, 3))
    ratio = -2.0 + 2.5 * knobs[:, 0] - 0.5 * knobs[:, 2]  # e.g. a level knob over 22 dB, a drive knob
    fit = m.fit_level(knobs, ratio)
    assert fit["rms_miss_db"] < 0.2 and abs(fit["bias_db"] - (-2.0 * 20 / np.log(10))) < 0.5
    k = torch.tensor([[0.2, 0.5, 0.9], [1.0, 0.0, 0.0]], dtype=torch.float32)
    h = torch.zeros(2, 1, m.cfg.d_model)
    got = m.heads(h, k[:, None])["gain"][:, 0, 0].detach().numpy()
    want = -2.0 + 2.5 * k[:, 0].numpy() - 0.5 * k[:, 2].numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # the head's tanh bound bends it a little


def test_the_delay_recursion_has_the_gradient_of_its_own_arithmetic():
    """DelayRecursion's hand-written backward equals the numerical gradient (float64), for the
    input and the feedback, with delays that vary per sample and fall between samples."""
    from training.model import DelayRecursion
    g = torch.Generator().manual_seed(0)
    B, n, N, block, lead = 2, 2, 90, 6, 30
    x = torch.randn(B, n, N, dtype=torch.float64, generator=g, requires_grad=True)
    d = 7 + 20 * torch.rand(B, n, N, dtype=torch.float64, generator=g)
    fb = (0.9 * torch.rand(B, n, N, dtype=torch.float64, generator=g) - 0.45).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, fb: DelayRecursion.apply(x, d, fb, block, lead), (x, fb))


def test_tiers_have_growing_size_and_cost():
    sizes = [sum(p.numel() for p in SignalTrainPi(tier_config(t)).parameters()) for t in ("nano", "small", "standard")]
    macs = [macs_per_second(tier_config(t)) for t in ("nano", "small", "standard")]
    assert sizes == sorted(sizes) and macs == sorted(macs)
    assert macs_per_second(tier_config("small", hop=128)) < 0.55 * macs_per_second(tier_config("small", hop=64))


def test_sparse_attention_memory_is_linear_in_context():
    """Activations saved for backward grow like T for sparse attention (`make bench-context` times
    it against dense attention, whose compute grows like T^2)."""
    def peak(att, seconds):
        cfg = tier_config("nano", attention=att)
        m = SignalTrainPi(cfg)
        x = torch.randn(1, int(seconds * cfg.sample_rate) // cfg.hop * cfg.hop)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
            m(x, torch.rand(1, cfg.n_knobs)).sum()
        return sum(saved)
    assert 3.5 < peak("sparse", 8.0) / peak("sparse", 2.0) < 4.6  # 4x the audio: about 4x the memory


def test_configuration_errors_name_the_field():
    with pytest.raises(ValueError, match="window 500"):
        ModelConfig(window=500)
    with pytest.raises(ValueError, match="attention 'full'"):
        ModelConfig(attention="full")
    with pytest.raises(ValueError, match="dense attention has no streaming form"):
        StepModel(SignalTrainPi(ModelConfig(attention="dense")))


def test_the_shaper_starts_at_the_drive_the_pairs_show():
    """pre_gains + fit_pre_gain: pairs from tanh(g(knob) x) through a one-pole low-pass, g from 0 to
    36 dB over the drive knob, the level knob irrelevant to it: the shaper's pre-gain starts high at
    full drive and low at little (not equal to g: the model's shaper has a softer knee than tanh, so
    it needs more pre-gain for the same clipping), following the pairs' own best pre-gains; pairs
    too quiet to clip carry no weight."""
    from types import SimpleNamespace

    from training.train import pre_gains
    m = SignalTrainPi(tier_config("nano", n_knobs=2, shaper_units=8))
    rng = np.random.default_rng(0)
    sr, n = 48000, 24000
    knobs = rng.uniform(0, 1, (40, 2))
    g_true = 36.0 * knobs[:, 0] / (20 / np.log(10))  # nats
    xs, ys = [], []
    for i, k in enumerate(knobs):
        t = np.arange(n) / sr
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(80, 400) * t) * np.exp(-3 * t) + 0.02 * rng.standard_normal(n)
        if i % 5 == 0:
            x *= 1e-3  # -60 dBFS: linear at any drive here
        z = np.tanh(np.exp(g_true[i]) * x)
        y = np.zeros(n)
        for j in range(1, n):  # a tone control after the clipper
            y[j] = 0.7 * y[j - 1] + 0.3 * z[j]
        xs.append(x.astype(np.float32))
        ys.append((0.5 * (0.2 + k[1]) * y).astype(np.float32))
    pairs = SimpleNamespace(x=xs, y=ys, sample_rate=sr)
    with torch.no_grad():
        g, w = pre_gains(pairs, lambda u: m.waveshape(u, torch.zeros(*u.shape, 8)))
    assert np.all(w[::5] < 0.05) and np.median(w[knobs[:, 0] > 0.5]) > 0.3
    fit = m.fit_pre_gain(knobs, g, w)
    h = torch.zeros(2, 1, m.cfg.d_model)
    pre = m.heads(h, torch.tensor([[1.0, 0.5], [0.1, 0.5]])[:, None])["shaper"][:, 0, 0].detach().numpy() * 20 / np.log(10)
    assert pre[0] > 30.0 and pre[1] < 10.0 and fit["rms_miss_db"] < 3.0, (pre, fit)
    assert m.fit_pre_gain(knobs, g, np.zeros_like(w)) is None  # nothing clips: no start taken


def test_a_gain_alone_only_when_it_explains_what_sets_the_target_apart():
    """training.parts: a level change is a gain (gain path only); a de-noiser's target differs from
    its input by a little noise, which a gain explains as poorly as the input itself: FIR too."""
    from training.parts import choose_parts
    rng = np.random.default_rng(0)
    sr, n = 48000, 48000
    t = np.arange(n) / sr
    clean = [0.3 * np.sin(2 * np.pi * f * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) for f in (110, 220, 330, 440)]
    level = choose_parts([(i, x, 0.5 * x) for i, x in enumerate(clean)], sr)
    assert (level.fir_taps, level.shaper_units, level.delay_lines) == (0, 0, 0)
    noisy = [(i, x + 0.01 * rng.standard_normal(n), x) for i, x in enumerate(clean)]  # ~-27 dB of noise
    denoise = choose_parts(noisy, sr)
    assert denoise.measures["gain_residual"] < 0.01 and denoise.fir_taps == 32, denoise.measures


def test_a_chunk_from_the_middle_of_a_pair_hears_the_lfo_where_the_whole_pair_does():
    """Training cuts chunks anywhere in a pair; the swept delay's LFO must be at the phase the
    effect's LFO has there (``start``), or every chunk after the first teaches the wrong delay."""
    cfg = ModelConfig(local_frames=8, mem_block_frames=5, mem_slots=3, mem2_block_frames=20, mem2_slots=3,
                      n_knobs=2, mod_lines=1, mod_max=1024)
    m = SignalTrainPi(cfg).eval()
    m.fit_mod(example_fit(2, cfg.sample_rate, centre=400.0, sweep=300.0))
    with torch.no_grad():  # y = x + the swept delay's output alone (no trunk-steered part)
        m.fir_head.weight.zero_()
        m.gain_head.weight.zero_()
        m.mod_head.weight.zero_()
        m.mod_head.bias.fill_(1.0)
    n, s = 300 * cfg.hop, 117 * cfg.hop + 13
    x = 0.3 * torch.randn(1, n, generator=torch.Generator().manual_seed(5))
    k = torch.tensor([[0.9, 0.8]])  # 0.1 * 50^0.9 = 3.4 Hz: a full turn every 14,000 samples
    with torch.no_grad():
        whole = m(x, k)[0]
        c = (n - s) // cfg.hop * cfg.hop
        part = m(x[:, s:s + c], k, torch.tensor([s]))[0]
        wrong = m(x[:, s:s + c], k)[0]  # as if the chunk were the pair's start
    settle = cfg.mod_max + cfg.hop  # the chunk has no input before its start, and its first hop ramps
    # the chunk's phase is computed in float64, the whole pair's summed hop by hop in float32: they
    # part by about 1e-6 of a turn over these 117 hops, 2e-3 samples of the sweep (white noise)
    assert float((part[settle:] - whole[s + settle:s + c]).abs().max()) < 2e-3
    assert float((wrong[settle:] - whole[s + settle:s + c]).abs().max()) > 0.1
