"""Benchmark: cost of Neural Amp Modeler's WaveNet (standard, lite) beside ours, in one run.

    make bench-nam          # sets up .venv-nam (neural-amp-modeler 0.12.3, torch 2.13.0 CPU) if missing
    .venv-nam/bin/python -m training.bench_nam [--blocks 50 --rounds 8 --whole 7] [--no-tflite]

NAM's WaveNet is built by NAM's own code (``nam.models.wavenet.WaveNet``) from NAM's own
configurations (``nam.train.core.get_wavenet_config(Architecture.STANDARD / LITE)``). Release
0.12.3 is the last one with those presets: 0.13.0 trains a "PackedWaveNet" from
``nam/train/_resources/config_model_packed.json`` instead and has no standard/lite choice, so
the environment pins 0.12.3 (same dependencies, torch 2.13.0).

Per model, at 48 kHz:
  - multiply-adds per second of audio. NAM: from the layer list (rechannel, per layer dilated
    conv C*C*K + input mixer C + 1x1 C*C, head rechannel), checked against forward hooks on every
    Conv1d/Linear with their real output lengths (two input lengths 48,000 samples apart, so the
    receptive-field warm-up cancels: what a streaming plugin computes per second). Ours:
    ``training.model.macs_per_second`` (the streaming form).
  - PyTorch, one thread: blocks of 64 samples streamed the way a plugin does (NAM: each dilated
    layer keeps the last d*(K-1) columns of its input, NeuralAmpModelerCore's ring buffers, so
    no context is recomputed; checked equal to NAM's own forward on the whole signal. Ours:
    ``StepModel``), and one call on a whole second (NAM: with its receptive field of context in
    front; ours: ``SignalTrainPi.forward``). Models interleaved, medians.
  - TFLite float32 through the same ONNX -> onnx2tf path as the pipeline (``run_onnx2tf`` in
    .venv-host), timed with ai-edge-litert in .venv-device, one thread, state fed back each block,
    checked against PyTorch first.
NAM's models have no knobs (one capture per setting); ours take 4 knobs every block.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SR = 48000
HOP = 64
OURS = {"ours small gain+fir": {}, "ours small +shaper": {"shaper_units": 8},
        "ours small +shaper+delay": {"shaper_units": 8, "delay_lines": 1}}
CHECK_BLOCKS = 40  # blocks of PyTorch reference each converted model must reproduce


# --- NAM's WaveNet --------------------------------------------------------------------------------
def nam_models() -> dict:
    import torch
    from nam.models.wavenet import WaveNet
    from nam.train.core import Architecture, get_wavenet_config
    out = {}
    for arch in (Architecture.STANDARD, Architecture.LITE):
        torch.manual_seed(0)
        cfg = get_wavenet_config(arch)
        out[f"NAM WaveNet {arch.value}"] = (WaveNet(**cfg, sample_rate=SR).eval(), cfg)
    return out


def nam_macs_per_sample(cfg: dict) -> int:
    """From the layer list: what each output sample costs once every layer's past is kept."""
    n = 0
    for lc in cfg["layers_configs"]:
        C, K, cond = lc["channels"], lc["kernel_size"], lc["condition_size"]
        assert not lc["gated"]
        n += lc["input_size"] * C  # rechannel
        n += len(lc["dilations"]) * (C * C * K + cond * C + C * C)  # dilated conv, input mixer, 1x1
        n += C * lc["head_size"]  # head rechannel
    return n


def hooked_macs(model, n_out: int) -> int:
    """Multiply-adds PyTorch does for n_out outputs with the receptive field of context in front,
    counted by hooks on every Conv1d/Linear with their real output lengths."""
    import torch
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv1d):
            total[0] += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0]
        else:
            total[0] += out.numel() * mod.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear))]
    with torch.inference_mode():
        model(torch.zeros(1, model.receptive_field - 1 + n_out), pad_start=False)
    for h in hs:
        h.remove()
    return total[0]


def nam_step_class():
    import torch
    import torch.nn.functional as F

    class NamStep(torch.nn.Module):
        """NAM's WaveNet one block at a time, with its weights: each dilated layer keeps the last
        d*(K-1) rows of its input (time x channels) in a flat state (1, S), as NeuralAmpModelerCore
        keeps a buffer per layer; (audio (1, hop), state) -> (audio (1, hop), state). Time-major 2-D
        matrices (the K taps side by side, one matmul per conv), which onnx2tf converts (NAM's
        channels-first Conv1d with the state concatenated in front does not: onnx2tf loses the
        time axis). Same multiply-adds per sample as the layer-list count."""

        def __init__(self, wavenet, hop: int = HOP):
            super().__init__()
            net, self.hop = wavenet._net, hop
            assert net._head is None
            self.head_scale = float(net._head_scale)
            self.layout = []
            t = lambda w: w.detach().clone()  # noqa: E731
            self.arrays = torch.nn.ModuleList()
            for arr in net._layers:
                a = torch.nn.Module()
                a.rechannel = torch.nn.Parameter(t(arr._rechannel.weight[:, :, 0]))  # (C, in)
                hr = arr._head_rechannel
                a.head_w = torch.nn.Parameter(t(hr.weight[:, :, 0]))
                a.head_b = torch.nn.Parameter(t(hr.bias)) if hr.bias is not None else None
                a.layers = torch.nn.ModuleList()
                for layer in arr._layers:
                    assert not layer.gated
                    conv, C, K, d = layer.conv, layer._1x1.in_channels, layer.kernel_size, layer.conv.dilation[0]
                    L = torch.nn.Module()
                    L.conv_w = torch.nn.Parameter(t(conv.weight.permute(0, 2, 1).reshape(C, K * C)))  # taps side by side
                    L.conv_b = torch.nn.Parameter(t(conv.bias))
                    L.mix_w = torch.nn.Parameter(t(layer._input_mixer.weight[:, :, 0]))
                    L.w1 = torch.nn.Parameter(t(layer._1x1.weight[:, :, 0]))
                    L.b1 = torch.nn.Parameter(t(layer._1x1.bias))
                    L.act = layer._activation
                    L.C, L.K, L.d, L.P = C, K, d, d * (K - 1)
                    a.layers.append(L)
                    self.layout.append((C, L.P))
                self.arrays.append(a)
            self.state_size = sum(c * p for c, p in self.layout)

        def initial_state(self):
            return torch.zeros(1, self.state_size)

        def forward(self, audio, state):
            H = self.hop
            c = audio.view(H, 1)  # the condition: the input itself, every layer
            y, head, off, new = c, None, 0, []
            for a in self.arrays:
                x = F.linear(y, a.rechannel)  # (H, C)
                for L in a.layers:
                    C, P = L.C, L.P
                    xin = torch.cat([state[:, off: off + P * C].view(P, C), x], 0)  # (P + H, C), oldest first
                    off += P * C
                    new.append(xin[H:].reshape(1, P * C))
                    taps = torch.cat([xin[k * L.d: k * L.d + H] for k in range(L.K)], 1)  # (H, K*C)
                    z = L.act(F.linear(taps, L.conv_w, L.conv_b) + F.linear(c, L.mix_w))
                    x = x + F.linear(z, L.w1, L.b1)
                    head = z if head is None else head + z
                head = F.linear(head, a.head_w, a.head_b)
                y = x
            return (self.head_scale * head).view(1, H), torch.cat(new, 1)

    return NamStep


# --- timing helpers -------------------------------------------------------------------------------
class Streamer:
    """One model fed block by block with its state carried: .block(x) -> y."""

    def __init__(self, step, knobs=None):
        self.step, self.knobs, self.state = step, knobs, step.initial_state()

    def block(self, x):
        if self.knobs is None:
            y, self.state = self.step(x, self.state)
        else:
            y, self.state = self.step(x, self.knobs, self.state)
        return y


def time_pytorch(models: dict, blocks: int, rounds: int, whole: int) -> dict:
    """models: name -> (streamer, whole_fn). Interleaved: each round streams `blocks` blocks
    through every model in turn, then one whole-second call each."""
    import torch
    g = torch.Generator().manual_seed(1)
    xs = 0.1 * torch.randn(blocks, 1, HOP, generator=g)
    sec = 0.1 * torch.randn(1, SR, generator=g)
    bt = {n: [] for n in models}
    wt = {n: [] for n in models}
    with torch.inference_mode():
        for n, (s, w) in models.items():  # warm up
            for t in range(20):
                s.block(xs[t % blocks])
            w(sec)
        for r in range(max(rounds, whole)):
            for n, (s, w) in models.items():
                if r < rounds:
                    for t in range(blocks):
                        t0 = time.perf_counter()
                        s.block(xs[t])
                        bt[n].append(time.perf_counter() - t0)
                if r < whole:
                    t0 = time.perf_counter()
                    w(sec)
                    wt[n].append(time.perf_counter() - t0)
    per_s = SR / HOP
    return {n: {"pt_block_ms_per_s": 1000 * per_s * float(np.median(bt[n])),
                "pt_whole_ms_per_s": 1000 * float(np.median(wt[n]))} for n in models}


# --- stage run in .venv-host: ONNX -> onnx2tf -> TFLite float32 -----------------------------------
def stage_convert(work: Path, names: list[str]) -> None:
    from convert.pipeline import ConversionError, run_onnx2tf
    res = {}
    for n in names:
        t0 = time.time()
        try:
            res[n] = {"tflite": str(run_onnx2tf(work / f"{n}.onnx", work / n, log=lambda *m: None)["float32"]),
                      "convert_s": time.time() - t0}
        except ConversionError as e:
            res[n] = {"error": str(e)}
    print(json.dumps(res))


# --- stage run in .venv-device: TFLite timing -----------------------------------------------------
def stage_tflite(work: Path, names: list[str], blocks: int, rounds: int) -> None:
    from device.engine import make_interpreter
    runners, res = {}, {}
    for n in names:
        ref = np.load(work / f"{n}.ref.npz")
        try:
            it = make_interpreter(work / n / "onnx2tf" / "tf" / "model_float32.tflite", 1)
            it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            res[n] = {"error": f"cannot load: {e}"}
            continue
        S = int(ref["state_size"])
        by_shape = lambda ds: {tuple(int(v) for v in d["shape"]): d["index"] for d in ds}  # noqa: E731
        ins, outs = by_shape(it.get_input_details()), by_shape(it.get_output_details())
        r = {"i_audio": ins.get((1, HOP)), "i_state": ins.get((1, S)), "i_knobs": ins.get((1, 4)),
             "o_audio": outs.get((1, HOP)), "o_state": outs.get((1, S)), "it": it}
        if None in (r["i_audio"], r["i_state"], r["o_audio"], r["o_state"]):
            res[n] = {"error": f"inputs {list(ins)} / outputs {list(outs)} are not (1,{HOP}) audio + (1,{S}) state"}
            continue
        if r["i_knobs"] is not None:
            it.tensor(r["i_knobs"])()[0] = ref["knobs"][0]
        runners[n] = r

    def step(r, x):
        it = r["it"]
        it.tensor(r["i_audio"])()[0] = x
        it.invoke()
        y = it.tensor(r["o_audio"])()[0].copy()
        np.copyto(it.tensor(r["i_state"])(), it.tensor(r["o_state"])())
        return y

    for n, r in list(runners.items()):  # reproduce the PyTorch reference from a zero state
        ref = np.load(work / f"{n}.ref.npz")
        r["it"].tensor(r["i_state"])().fill(0.0)
        y = np.concatenate([step(r, x) for x in ref["x"]])
        e = ref["y"].ravel()
        snr = 10 * np.log10(np.sum(e ** 2) / max(np.sum((y - e) ** 2), 1e-30))
        res[n] = {"snr_db_vs_pytorch": float(snr), "max_abs_err": float(np.max(np.abs(y - e)))}
        if not snr > 60:
            res[n]["error"] = f"output differs from PyTorch (SNR {snr:.1f} dB)"
            del runners[n]
    rng = np.random.default_rng(2)
    xs = (0.1 * rng.standard_normal((blocks, HOP))).astype(np.float32)
    dt = {n: [] for n in runners}
    for r in runners.values():
        for t in range(50):
            step(r, xs[t % blocks])
    for _ in range(rounds):
        for n, r in runners.items():
            for t in range(blocks):
                t0 = time.perf_counter()
                step(r, xs[t])
                dt[n].append(time.perf_counter() - t0)
    for n in runners:
        res[n]["tfl_block_ms_per_s"] = 1000 * SR / HOP * float(np.median(dt[n]))
    print(json.dumps(res))


def run_stage(python: Path, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([str(python), "-m", "training.bench_nam", *args], capture_output=True, text=True, cwd=REPO, env=env)
    if p.returncode:
        raise RuntimeError(f"{python} {' '.join(args[:2])} failed (exit {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# --- the run --------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["convert", "tflite"], help=argparse.SUPPRESS)
    ap.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--blocks", type=int, default=50, help="blocks of 64 samples per model per round")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds of block streaming")
    ap.add_argument("--whole", type=int, default=7, help="whole-second calls per model (interleaved)")
    ap.add_argument("--no-tflite", action="store_true", help="skip ONNX -> TFLite")
    ap.add_argument("--tflite-ours", nargs="*", default=list(OURS), help="which of our models to convert too")
    ap.add_argument("--out", type=Path, default=REPO / "build/bench_nam")
    ap.add_argument("--host-python", type=Path, default=REPO / ".venv-host/bin/python")
    ap.add_argument("--device-python", type=Path, default=REPO / ".venv-device/bin/python")
    a = ap.parse_args(argv)
    if a.stage == "convert":
        return stage_convert(a.out, a.names)
    if a.stage == "tflite":
        return stage_tflite(a.out, a.names, a.blocks, a.rounds)

    import torch
    from .model import SignalTrainPi, StepModel, macs_per_second, tier_config
    torch.set_num_threads(1)
    import nam
    NamStep = nam_step_class()
    rows, pt, steps, notes = {}, {}, {}, []
    for name, (m, cfg) in nam_models().items():
        per_sample = nam_macs_per_sample(cfg)
        hooked = hooked_macs(m, 2 * SR) - hooked_macs(m, SR)
        if hooked != per_sample * SR:
            raise SystemExit(f"{name}: hooks count {hooked} MAC/s, layer list {per_sample * SR}")
        whole_work = hooked_macs(m, SR)
        step = NamStep(m).eval()
        with torch.inference_mode():  # the streaming form is NAM's forward, block by block, once
            # a receptive field has passed (before that its zero state is not NAM's zero padding)
            warm = -(-m.receptive_field // HOP)
            x = 0.1 * torch.randn(1, (warm + 40) * HOP)
            want = m(x, pad_start=False)[:, -40 * HOP:]
            s = Streamer(step)
            got = [s.block(x[:, t * HOP:(t + 1) * HOP]) for t in range(warm + 40)][warm:]
            err = float((torch.cat(got, 1) - want).abs().max())
        if err > 1e-5:
            raise SystemExit(f"{name}: block streaming differs from NAM's forward by {err}")
        ctx = torch.zeros(1, m.receptive_field - 1)
        rows[name] = {"params": sum(p.numel() for p in m.parameters()), "mmacs_per_s": per_sample * SR / 1e6,
                      "receptive_field": m.receptive_field, "state_size": step.state_size}
        notes.append(f"{name}: receptive field {m.receptive_field} samples, {per_sample} MAC per sample "
                     f"(layer list = hooks); NAM's PyTorch forward on a whole second with its context does "
                     f"{whole_work / 1e6:.0f} M MAC (its input mixers run over the full input); streaming "
                     f"matches NAM's forward to {err:.1e}")
        pt[name] = (Streamer(step), lambda sec, m=m, ctx=ctx: m(torch.cat([ctx, sec], 1), pad_start=False))
        steps[name] = (step, None)
    for name, kw in OURS.items():
        torch.manual_seed(0)
        cfg = tier_config("small", **kw)
        m = SignalTrainPi(cfg).eval()
        step = StepModel(m).eval()
        knobs = torch.full((1, cfg.n_knobs), 0.5)
        rows[name] = {"params": sum(p.numel() for p in m.parameters()), "mmacs_per_s": macs_per_second(cfg) / 1e6,
                      "state_size": step.state_size, "parts": "+".join(cfg.parts)}
        pt[name] = (Streamer(step, knobs), lambda sec, m=m, knobs=knobs: m(sec, knobs))
        steps[name] = (step, knobs)
    print(f"PyTorch {torch.__version__}, 1 thread, neural-amp-modeler {nam.__version__}: timing "
          f"{a.rounds} x {a.blocks} blocks and {a.whole} whole seconds per model, interleaved", file=sys.stderr)
    for n, t in time_pytorch(pt, a.blocks, a.rounds, a.whole).items():
        rows[n].update(t)

    if not a.no_tflite:
        a.out.mkdir(parents=True, exist_ok=True)
        names = [n for n in rows if n.startswith("NAM") or n in a.tflite_ours]
        files = {}
        for n in names:
            step, knobs = steps[n]
            f = n.replace(" ", "_").replace("+", "_")
            files[f] = n
            g = torch.Generator().manual_seed(3)
            x = 0.1 * torch.randn(CHECK_BLOCKS, 1, HOP, generator=g)
            with torch.inference_mode():
                s = Streamer(step, knobs)
                y = torch.stack([s.block(xb) for xb in x])
            np.savez(a.out / f"{f}.ref.npz", x=x[:, 0].numpy(), y=y[:, 0].numpy(), state_size=step.state_size,
                     knobs=(knobs if knobs is not None else torch.zeros(1, 4)).numpy())
            # as convert.pipeline.export_onnx does (opset 17, TorchScript exporter)
            args = (torch.zeros(1, HOP), step.initial_state()) if knobs is None else \
                (torch.zeros(1, HOP), knobs, step.initial_state())
            in_names = ["audio", "state"] if knobs is None else ["audio", "knobs", "state"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, on purpose
                torch.onnx.export(step, args, str(a.out / f"{f}.onnx"), input_names=in_names,
                                  output_names=["audio_out", "state_out"], opset_version=17, dynamo=False)
        print(f"onnx2tf on {len(files)} models (.venv-host)", file=sys.stderr)
        conv = run_stage(a.host_python, ["--stage", "convert", "--out", str(a.out), *files])
        ok = [f for f in files if "error" not in conv[f]]
        for f in files:
            rows[files[f]].update({k: v for k, v in conv[f].items() if k != "tflite"})
        if ok:
            print(f"TFLite timing of {len(ok)} models (.venv-device)", file=sys.stderr)
            tfl = run_stage(a.device_python, ["--stage", "tflite", "--out", str(a.out), "--blocks", str(a.blocks),
                                              "--rounds", str(a.rounds), *ok])
            for f, r in tfl.items():
                rows[files[f]].update(r)

    (a.out).mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    print()
    for line in notes:
        print(f"- {line}")
    for n, r in rows.items():
        if "error" in r:
            print(f"- {n}: TFLite: {r['error']}")
        elif "snr_db_vs_pytorch" in r:
            print(f"- {n}: TFLite float32 matches PyTorch at {r['snr_db_vs_pytorch']:.0f} dB SNR "
                  f"(converted in {r.get('convert_s', 0):.0f} s)")


def markdown(rows: dict) -> str:
    f = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
    out = ["| model | params | MAC/s (M) | PyTorch block-64 (ms per audio s) | PyTorch whole second (ms per audio s) "
           "| TFLite f32 block-64 (ms per audio s) | fraction of one core (TFLite block-64; PyTorch block-64 without TFLite) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for n, r in rows.items():
        t = r.get("tfl_block_ms_per_s")
        core = (t if t is not None else r.get("pt_block_ms_per_s")) / 1000
        out.append(f"| {n} | {r['params'] / 1e3:.1f} k | {r['mmacs_per_s']:.1f} | {f(r.get('pt_block_ms_per_s'), '.1f')} "
                   f"| {f(r.get('pt_whole_ms_per_s'), '.1f')} | {f(t, '.1f')} | {core:.3f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
