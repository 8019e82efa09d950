"""The streaming engine on the real TFLite runtime: it computes what PyTorch computed, and the
sound never stops or bursts when something goes wrong."""
import numpy as np
import pytest

from device.bundle import load_bundle
from device.engine import Engine
from device.selftest import check_golden, run_selftest

from .helpers import max_step


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path)


def loud_sine(seconds, sr=48000, f=220.0, level=0.5):
    t = np.arange(int(seconds * sr) // 64 * 64) / sr
    return (level * np.sin(2 * np.pi * f * t)).astype(np.float32)


def heavy_knobs(bundle, n_hops):
    """Low threshold, high ratio: the wet signal is far quieter than the dry, so a hard switch would click."""
    vals = {"threshold_db": -45.0, "ratio": 9.0, "attack_ms": 2.0, "release_ms": 100.0}
    row = [k.to_normalized(vals.get(k.name, k.default)) for k in bundle.manifest.knobs]
    return np.tile(np.array(row, np.float32), (n_hops, 1))


def test_float32_reproduces_pytorch_to_90_db(bundle):
    r = check_golden(bundle, "float32")
    assert r["snr_db"] >= 90.0, r


def test_float16_reproduces_pytorch_to_55_db(bundle):
    r = check_golden(bundle, "float16")
    assert r["snr_db"] >= 55.0, r


def test_selftest_passes_on_a_good_bundle(bundle_path, capsys):
    assert run_selftest(bundle_path)
    out = capsys.readouterr().out
    assert out.count("PASS") >= 5 and "FAIL" not in out


@pytest.mark.parametrize("precision", ["float32", "float16", "dynamic_int8", "int8"])
def test_render_without_smoothing_equals_the_golden_reference(bundle, precision):
    """The engine's render path (not only the self-test's) reproduces PyTorch, each precision to its
    own floor. Pinned per precision: the bundle's default is chosen by timing on the converting
    machine, so it differs between machines."""
    if precision not in bundle.manifest.models:
        pytest.skip(f"{precision} left out of this bundle")
    g = bundle.golden()
    e = Engine(bundle, precision=precision, knob_smoothing_ms=0)
    y = e.render(g["input"], g["knob_positions"])
    snr = 10 * np.log10(np.sum(g["expected"] ** 2) / np.sum((y - g["expected"]) ** 2))
    floor = bundle.manifest.tolerances.get(precision, {}).get("snr_db_min", 90.0)
    assert snr >= floor, (precision, snr, floor)


def test_bypass_toggle_is_click_free(bundle):
    x = loud_sine(1.0)
    rows = heavy_knobs(bundle, len(x) // 64)
    wet = Engine(bundle).render(x, rows)
    e = Engine(bundle, crossfade_ms=10.0)
    e.prime(rows[0])
    out = np.empty_like(x)
    for t in range(len(x) // 64):
        if t == 300:
            e.set_bypass(True)
        if t == 500:
            e.set_bypass(False)
        out[t * 64:(t + 1) * 64] = e.process_hop(x[t * 64:(t + 1) * 64], rows[t])
    gap = float(np.abs(x[300 * 64:] - wet[300 * 64:]).max())
    assert gap > 0.2, "the test needs a wet signal far from the dry one"
    # a hard switch would jump by up to `gap`; the crossfade stays within the signals' own slopes
    assert max_step(out) <= max(max_step(x), max_step(wet)) * 1.05 + 1e-4
    assert np.allclose(out[400 * 64:500 * 64], x[400 * 64:500 * 64], atol=1e-6)  # bypassed = dry
    assert e.drain_events() == ["bypass on", "bypass off"]


class Flaky:
    """Wraps the real runner; makes chosen hops return NaN or raise, like a model blowing up."""

    def __init__(self, runner, nan_hops=(), raise_hops=()):
        self.runner, self.nan_hops, self.raise_hops, self.n = runner, set(nan_hops), set(raise_hops), 0
        self.out = np.zeros(runner.hop, np.float32)

    def reset(self):
        self.runner.reset()

    def step(self, audio, knobs):
        n, self.n = self.n, self.n + 1
        if n in self.raise_hops:
            raise RuntimeError("invoke failed")
        y = self.runner.step(audio, knobs)
        if n in self.nan_hops:
            self.out[:] = np.nan
            return self.out
        return y


def memory_reach_s(bundle) -> float:
    """How far back the model's attention memory reaches: after a state reset, its output is the
    uninterrupted one again once that much audio has passed."""
    c = bundle.manifest.training["model_config"]
    levels = [(c["mem_block_frames"], c["mem_slots"]), (c.get("mem2_block_frames", 0), c.get("mem2_slots", 0))]
    return max(d * m for d, m in levels) * c["hop"] / c["sample_rate"]


@pytest.mark.parametrize("fault", ["nan", "raise"])
def test_a_model_fault_falls_back_to_dry_without_a_burst_and_recovers(bundle, fault):
    x = loud_sine(600 * 64 / 48000 + memory_reach_s(bundle) + 2.0)  # the fault, the memory's reach, then a second to compare
    n_hops = len(x) // 64
    rows = heavy_knobs(bundle, n_hops)
    e = Engine(bundle, crossfade_ms=10.0, warmup_s=0.25)
    e.runner = Flaky(e.runner, nan_hops=[600] if fault == "nan" else [], raise_hops=[600] if fault == "raise" else [])
    out = e.render(x, rows)
    assert np.isfinite(out).all()
    assert float(np.abs(out).max()) <= float(np.abs(x).max()) + 1e-6  # no burst
    wet = Engine(bundle).render(x, rows)
    # no click: the hop that faulted is replaced by the dry signal at the last good gain, which
    # continues the wet signal closely but not exactly; a hard switch would jump by |dry - wet|
    hard_jump = float(np.abs(x - wet)[600 * 64:601 * 64].max())
    assert max_step(out) <= max(max_step(x), max_step(wet)) * 1.25 + 1e-4
    assert max_step(out) < 0.2 * hard_jump
    fade = int(0.010 * 48000)
    hold_end = 600 * 64 + int(0.25 * 48000)
    assert np.allclose(out[600 * 64 + fade: hold_end - 64], x[600 * 64 + fade: hold_end - 64], atol=1e-6)  # dry
    assert e.mix == 1.0 and e.fault_hops == 0  # back to the model
    assert np.abs(out[-48000:] - wet[-48000:]).max() < 0.05 * np.abs(wet[-48000:]).max()
    msgs = e.drain_events()
    assert msgs[0].startswith("model output not finite" if fault == "nan" else "model invoke failed")
    assert msgs[-1] == "model back: crossfade to wet"
    assert e.counts["nonfinite" if fault == "nan" else "model_error"] == 1


def test_repeated_compute_overruns_fall_back_to_dry_then_retry(bundle):
    x = loud_sine(4.0)
    rows = heavy_knobs(bundle, len(x) // 64)
    e = Engine(bundle, budget_s=1e-9, overruns_to_fallback=4, retry_after_s=0.5, warmup_s=0.1)  # every hop overruns
    out = e.render(x, rows)
    assert np.isfinite(out).all() and float(np.abs(out).max()) <= 0.5 + 1e-6
    assert e.counts["overrun"] >= 2  # fell back, retried, fell back again
    assert "compute overrun" in e.drain_events()[0]


def test_a_turned_knob_makes_no_zipper_noise(bundle):
    """Threshold jumps from -10 to -45 dB in one hop: the engine glides the knob (20 ms) and the
    model interpolates its gain per sample, so the output's slope stays that of a smooth signal."""
    x = loud_sine(1.0)
    n = len(x) // 64
    rows = heavy_knobs(bundle, n)
    rows[: n // 2, 0] = bundle.manifest.knobs[0].to_normalized(-10.0)
    out = Engine(bundle).render(x, rows)
    steady = Engine(bundle).render(x, heavy_knobs(bundle, n))
    assert max_step(out) <= max(max_step(x), max_step(steady)) * 1.05 + 1e-4


@pytest.mark.parametrize("hops_per_period", [2, 4])
def test_a_period_of_several_hops_sounds_as_hop_by_hop(bundle, hops_per_period):
    """The daemon hands the engine a whole ALSA period (the knob glide, output check and mix then
    run once per period); what comes out is what the hop-by-hop path makes, through a knob jump,
    a bypass and back, a live knob held for the period, and a glide that settled long ago."""
    x = loud_sine(1152 * 64 / 48000)  # 1152 hops: whole periods of 2 and 4 hops
    n = len(x) // 64
    rows = heavy_knobs(bundle, n)
    rows[: n // 3, 0] = bundle.manifest.knobs[0].to_normalized(-10.0)
    toggles = {400: True, 500: False}  # on period boundaries, as the daemon sees them
    by_hop, by_period = Engine(bundle), Engine(bundle)
    for e in (by_hop, by_period):
        e.prime(rows[0])
    want = np.empty_like(x)
    for t in range(n):
        if t in toggles:
            by_hop.set_bypass(toggles[t])
        want[t * 64:(t + 1) * 64] = by_hop.process_hop(x[t * 64:(t + 1) * 64], rows[t])
    P = 64 * hops_per_period
    x_period, out = np.zeros(P, np.float32), np.zeros(P, np.float32)  # the same buffers every call, as the daemon's
    got = np.empty_like(x)
    for t in range(0, n, hops_per_period):
        if t in toggles:
            by_period.set_bypass(toggles[t])
        x_period[:] = x[t * 64:t * 64 + P]
        knobs = rows[t] if t >= n // 2 else rows[t:t + hops_per_period]  # held per period, or one row per hop
        got[t * 64:t * 64 + P] = by_period.process(x_period, knobs, out)
    assert np.abs(want - x).max() > 0.2  # the wet signal is far from the dry one
    assert np.array_equal(got, want)  # bit for bit
    assert by_period.counts["hops"] == by_hop.counts["hops"] == n
    assert by_period.drain_events() == by_hop.drain_events() == ["bypass on", "bypass off"]
