"""The effect catalogue: every effect's target really depends on every knob, knobs can move during
playback, and the noise effect is deterministic. Real pedalboard effects, numbers asserted."""
from __future__ import annotations

import numpy as np
import pytest

from training import sources
from training.effects import CATALOGUE, INVERSE_SUFFIX, NoiseAdder, base_effect_name, get_effect, heldout_grid, sample_knobs

SR = 48000
# A knob sweep must change the target by far more than the modelling error we aim for (ESR 0.01,
# NAM's "great"): at 5x that, a model that ignored the knob could not pass as good.
MIN_KNOB_ESR = 0.05


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    """1 s: plucked strings then level steps, peaking at -6 dBFS (loud enough for every threshold)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([sources.plucks(rng, 0.5, SR), sources.level_steps(rng, 0.5, SR)])
    return (x / np.abs(x).max() * 10 ** (-6 / 20)).astype(np.float32)


def knob_esr(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric ESR: the difference's energy over the louder render's."""
    return float(((a - b) ** 2).sum() / max((a ** 2).sum(), (b ** 2).sum()))


CASES = [(e.name, i) for e in CATALOGUE.values() for i in range(len(e.knobs))]


@pytest.mark.parametrize("name,index", CASES, ids=[f"{n}-{CATALOGUE[n].knobs[i].name}" for n, i in CASES])
def test_turning_each_knob_end_to_end_changes_the_target(music, name, index):
    effect = CATALOGUE[name]
    knob = effect.knobs[index]
    lo, hi = effect.defaults(), effect.defaults()
    lo[index], hi[index] = knob.minimum, knob.maximum
    a, b = effect.render(music, SR, lo), effect.render(music, SR, hi)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    esr = knob_esr(a, b)
    assert esr > MIN_KNOB_ESR, f"{name}: {knob.name} {knob.minimum}..{knob.maximum} {knob.unit} moves the target by ESR {esr:.4f}"


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_knobs_have_units_ranges_and_a_default_inside(name):
    effect = CATALOGUE[name]
    units = {"dB": "_db", "dBFS": "_db", "Hz": "_hz", "ms": "_ms"}
    for k in effect.knobs:
        assert k.minimum <= k.default <= k.maximum
        if k.unit in units:  # the unit is in the name, as in pedalboard
            assert k.name.endswith(units[k.unit]), k
        assert k.taper in ("lin", "log")


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_rendering_in_blocks_equals_one_render_and_knob_moves_take_effect(music, name):
    effect = CATALOGUE[name]
    block = 4800
    n_blocks = -(-len(music) // block)
    steady = np.array([effect.defaults()] * n_blocks)
    whole = effect.render(music, SR, effect.defaults())
    np.testing.assert_allclose(effect.render_automation(music, SR, steady, block), whole, atol=1e-6)
    moved = steady.copy()
    moved[n_blocks // 2:] = [k.maximum for k in effect.knobs]  # every knob to its end mid-way
    out = effect.render_automation(music, SR, moved, block)
    half = n_blocks // 2 * block
    np.testing.assert_allclose(out[:half], whole[:half], atol=1e-6)  # nothing changes before the move
    assert knob_esr(out[half:], whole[half:]) > MIN_KNOB_ESR


def test_noise_is_at_its_level_and_the_same_for_the_same_seed(music):
    noise = get_effect("noise")
    for level_db in (-60.0, -30.0):
        added = noise.render(np.zeros(SR, np.float32), SR, [level_db], seed=7)
        rms_db = 10 * np.log10(np.mean(added.astype(np.float64) ** 2))
        assert abs(rms_db - level_db) < 0.1
    a, b = noise.render(music, SR, [-40.0], seed=3), noise.render(music, SR, [-40.0], seed=3)
    np.testing.assert_array_equal(a, b)
    c = noise.render(music, SR, [-40.0], seed=4)
    assert knob_esr(a - music, c - music) > 1.0  # another seed, other noise: independent, ESR ~2


def test_the_noise_board_acts_like_a_pedalboard():
    board = NoiseAdder(-40.0, seed=1)
    x = np.zeros((1, 10000), np.float32)
    whole = board(x, SR)
    parts = np.concatenate([board(x[:, :3000], SR, reset=True), board(x[:, 3000:], SR, reset=False)], axis=1)
    np.testing.assert_array_equal(whole, parts)
    board[0].noise_db = -20.0  # what Effect.update does through _set_attrs
    assert np.std(board(x, SR)) == pytest.approx(0.1, rel=0.05)


def test_inverse_names_point_back_to_the_catalogue():
    assert base_effect_name("noise" + INVERSE_SUFFIX) == ("noise", True)
    assert base_effect_name("comp4") == ("comp4", False)
    assert base_effect_name("LA2A_2c") == ("LA2A_2c", False)


def test_knob_draws_cover_the_space_with_extra_weight_at_the_ends():
    effect = get_effect("comp4")
    values = sample_knobs(effect, np.random.default_rng(0), 4000)
    pos = np.array([[k.to_normalized(v) for k, v in zip(effect.knobs, row)] for row in values])
    at_ends = np.mean((pos < 0.1) | (pos > 0.9))
    assert 0.40 < at_ends < 0.48  # uniform alone gives 0.20; edge weight 0.3 gives 0.3 + 0.7 * 0.2 = 0.44
    grid = heldout_grid(effect)
    assert grid.shape == (16, 4)
    assert not any(np.allclose(row, g) for row in values for g in grid)
