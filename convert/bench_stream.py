"""Benchmark: per-hop time of the streaming TFLite model for each size tier and hop, and for each
configuration of parts the data can choose (training/parts.py).

    python -m convert.bench_stream [--tiers nano small standard] [--hops 64 128] [--configs ...]

Each model (random weights, shaken so that every part is active; speed does not depend on them)
goes through the real conversion into a bundle; the device environment then times it with one
thread, feeding the state back each hop (python -m device.bench_step). Reported as a fraction of
real time at 48 kHz beside the multiply-adds per second of audio, which do not depend on the
machine, with the state size, streaming == offline in PyTorch (largest difference on 3 s with
knob changes), the measured latency, and each precision's SNR against PyTorch from the
conversion's own check. Every model is timed in the same run, so the ratios between rows hold
even on a noisy machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from training.effects import get_effect
from training.lfo import example_fit
from training.model import SignalTrainPi, StepModel, macs_per_second, tier_config

from .pipeline import convert

REPO = Path(__file__).resolve().parents[1]
# the configurations the data can choose (training/parts.py), at the small tier; delays as an
# echo's (15 ms .. 0.6 s)
CONFIGS = {
    "gain": dict(fir_taps=0),
    "gain+fir": dict(),
    "gain+fir+shaper": dict(shaper_units=8),
    "gain+fir+delay": dict(delay_lines=1, delay_min=720, delay_max=720 + 28672),
    "gain+shaper+delay": dict(fir_taps=0, shaper_units=8, delay_lines=1, delay_min=720, delay_max=720 + 28672),
    "gain+fir+mod": dict(mod_lines=1, mod_max=1024),  # a chorus's swept delay
    "gain+fir+mod6": dict(mod_lines=1, mod_max=2048, mod_echoes=6),  # a flanger's, with regeneration
}


def shaken(cfg, seed=0) -> SignalTrainPi:
    """A model whose every part matters: weights moved off their near-zero start, delays fitted to
    move with every knob."""
    torch.manual_seed(seed)
    m = SignalTrainPi(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
        if cfg.delay_lines:
            m.delay_head.bias.fill_(0.5)
    if cfg.delay_lines:
        k = torch.rand(64, cfg.n_knobs, dtype=torch.float64).numpy()
        m.fit_delay_map(k, cfg.delay_min + (cfg.delay_max - cfg.delay_min) * (0.1 + 0.8 * k.mean(1)))
    if cfg.mod_lines:
        reach = 0.45 * cfg.mod_max / cfg.mod_echoes  # every fed-back pass within the line
        m.fit_mod(example_fit(cfg.n_knobs, cfg.sample_rate, centre=reach, sweep=reach))
        with torch.no_grad():
            m.mod_head.bias.fill_(0.7)
    return m


@torch.no_grad()
def streaming_check(m: SignalTrainPi, seconds: float = 3.0) -> dict:
    """Largest |offline - streaming| on noise with a knob change every second, and the latency a
    click measures (the first output sample that moves when one input sample does)."""
    cfg = m.cfg
    T = int(seconds * cfg.sample_rate) // cfg.hop
    g = torch.Generator().manual_seed(1)
    x = 0.3 * torch.randn(1, T * cfg.hop, generator=g)
    every = cfg.sample_rate // cfg.hop
    k = torch.rand(T // every + 1, cfg.n_knobs, generator=g).repeat_interleave(every, 0)[:T][None]
    off = m(x, k)
    st, outs = StepModel(m).eval(), []
    s = st.initial_state()
    for t in range(T):
        y, s = st(x[:, t * cfg.hop:(t + 1) * cfg.hop], k[:, t], s)
        outs.append(y)
    on = torch.cat(outs, 1)
    pos = (T // 2) * cfg.hop + cfg.hop - 1  # the last sample of a hop: the longest wait
    xc = x.clone()
    xc[0, pos] += 1.0
    first = int(torch.nonzero((m(xc, k) - off).abs()[0] > 0)[0])
    return {"stream_vs_offline_max_abs": float((off - on).abs().max()), "latency_samples_measured": pos - first + 1,
            "latency_samples_declared": cfg.latency_samples, "state_floats": st.state_size}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", nargs="*", default=["nano", "small", "standard"])
    ap.add_argument("--hops", nargs="*", type=int, default=[64, 128])
    ap.add_argument("--data", type=Path, default=REPO / "build/testkit/data", help="any comp4 dataset (golden vectors)")
    ap.add_argument("--out", type=Path, default=REPO / "build/bench_stream")
    ap.add_argument("--device-python", default=str(REPO / ".venv-device/bin/python"))
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), help=f"part configurations at small/64: {list(CONFIGS)}")
    ap.add_argument("--precision", default="float32", help="which of each bundle's models to time")
    a = ap.parse_args(argv)
    effect = get_effect("comp4")
    rows = []
    runs = [(f"{tier}_h{hop}", tier, hop, "gain+fir", {}) for tier in a.tiers for hop in a.hops]
    runs += [(f"small_h64_{c.replace('+', '_')}", "small", 64, c, CONFIGS[c]) for c in a.configs]
    for name, tier, hop, parts, over in runs:
        cfg = tier_config(tier, hop=hop, n_knobs=len(effect.knobs), **over)
        model = shaken(cfg)
        ck = a.out / f"{name}.pt"
        ck.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model_config": cfg.to_dict(), "state_dict": model.state_dict(), "effect": "comp4",
                    "knobs": [k.to_dict() for k in effect.knobs], "metrics": {}, "train_config": {}}, ck)
        convert(ck, a.data, a.out / name, log=lambda *m: None)
        r = subprocess.run([a.device_python, "-m", "device.bench_step", "--bundle", str(a.out / f"{name}.pedal"),
                            "--precision", a.precision],
                           capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        if r.returncode:
            sys.exit(f"bench_step failed for {name}: {r.stderr[-2000:]}")
        t = json.loads(r.stdout.strip().splitlines()[-1])
        conv = json.loads((a.out / f"{name}.conversion.json").read_text())
        t.update(tier=tier, hop=hop, parts=parts, params=sum(p.numel() for p in model.parameters()),
                 mmacs_per_s=macs_per_second(cfg) / 1e6, **streaming_check(model),
                 snr_db_vs_pytorch={p: v.get("snr_db_vs_pytorch") for p, v in conv["precisions"].items()})
        rows.append(t)
        snr = ", ".join(f"{p} {v:.0f}" for p, v in t["snr_db_vs_pytorch"].items() if v is not None)
        print(f"{tier:<9} hop {hop:>3} {parts:<18} {t['precision']}: {t['params'] / 1e3:6.1f} k params, "
              f"{t['mmacs_per_s']:6.1f} M MAC/s, state {t['state_floats']} floats, per hop {t['hop_ms_median']:.4f} ms "
              f"median / {t['hop_ms_p99']:.4f} ms p99 = {100 * t['realtime_fraction_median']:.2f}% / "
              f"{100 * t['realtime_fraction_p99']:.2f}% of real time; stream vs offline "
              f"{t['stream_vs_offline_max_abs']:.1e}; latency {t['latency_samples_measured']} "
              f"(declared {t['latency_samples_declared']}); SNR dB vs PyTorch: {snr}", flush=True)
    (a.out / "bench_stream.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
