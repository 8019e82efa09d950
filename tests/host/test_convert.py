"""Conversion: only builtin TFLite ops reach a box, the TFLite step model streams exactly like the
PyTorch offline model, and every precision the bundle ships was verified in the device runtime,
int8 included, with the error kept away from the sound."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from convert.calibrate import calibration_set, latin_hypercube
from convert.pipeline import (ESR_RATIO_MAX, TOLERANCES, ConversionError, check_builtin_only, choose_default, device_check,
                              device_python, io_tensors, left_out_reasons, run_onnx2tf, tflite_ops)
from convert.quantize import consumers_of_inputs, linear_names, matmul_kinds
from device.bundle import Manifest, ModelEntry, load_bundle, write_bundle
from device.engine import StepRunner
from training.model import StepModel
from training.train import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TESTKIT = Path(os.environ.get("PEDAL_TESTKIT", REPO / "build/testkit"))


@pytest.fixture(scope="module")
def testkit():
    if not (TESTKIT / "tiny.pedal").exists():
        pytest.fail(f"{TESTKIT} is missing: `make test` builds it (python -m tests.make_testkit)")
    return TESTKIT


@pytest.fixture(scope="module")
def report(testkit):
    return json.loads((testkit / "tiny.conversion.json").read_text())


class ExactGelu(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(x)  # exact GELU -> Erf -> FlexErf: no runtime here can run it


def test_a_model_with_an_unsupported_op_is_refused_by_name(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(ExactGelu(), (torch.zeros(1, 64),), str(onnx_path), input_names=["audio"], output_names=["out"],
                      opset_version=17, dynamo=False)
    files = run_onnx2tf(onnx_path, tmp_path, log=lambda *a: None)
    assert ("FlexErf", False) in tflite_ops(files["float32"])
    with pytest.raises(ConversionError, match=r"non-builtin op\(s\) \['FlexErf'\]"):
        check_builtin_only(files["float32"])
    # and a model that is not the step model's interface is refused by its tensors
    with pytest.raises(ConversionError, match=r"cannot tell which output 'out'"):
        io_tensors(files["float32"], 64, 4, 100)


def test_the_shipped_models_use_builtin_ops_only_and_float_io(testkit):
    b = load_bundle(testkit / "tiny")
    m = b.manifest
    for prec, entry in m.models.items():
        ops = tflite_ops(b.path(entry.file))
        assert ops and all(builtin for _, builtin in ops), ops
        check_builtin_only(b.path(entry.file))
        ins, outs = io_tensors(b.path(entry.file), m.hop, len(m.knobs), m.state_size)  # raises on any mismatch
        assert {r: t.name for r, t in ins.items()} == {r: t.name for r, t in entry.inputs.items()}, prec
        assert {r: t.name for r, t in outs.items()} == {r: t.name for r, t in entry.outputs.items()}, prec
        assert "state" in entry.inputs["state"].name  # the state is found by its name, not guessed
        assert {t.dtype for t in (*ins.values(), *outs.values())} == {"float32"}


def test_conversion_report_meets_the_fidelity_floors(report):
    assert report["onnx_snr_db"] >= 90
    p = report["precisions"]
    assert p["float32"]["snr_db_vs_pytorch"] >= 90
    assert p["float16"]["snr_db_vs_pytorch"] >= 55
    for prec in ("dynamic_int8", "int8"):  # 40 dB: DESIGN.md's aim; the default model measures 50-60 dB
        assert prec in p, f"{prec} was not even tried"
        if p[prec]["shipped"]:
            assert p[prec]["snr_db_vs_pytorch"] >= TOLERANCES[prec]["snr_db_min"] == 40.0
        else:
            assert p[prec]["why_not"]  # left out, and the report says why


def test_quantized_models_were_verified_in_the_device_runtime(report):
    exe, is_device = device_python()
    if not is_device:
        pytest.skip("no device environment (.venv-device): int8 was verified with the host runtime")
    # ai-edge-litert 2.1 (onnx2tf's pin, the host) computes int8 activation x activation matmuls wrongly
    assert "ai-edge-litert 2.3" in report["verified_in"] or "ai-edge-litert 2.4" in report["verified_in"], report["verified_in"]


def test_the_default_precision_keeps_fidelity_and_is_not_slower(testkit, report):
    m = load_bundle(testkit / "tiny").manifest
    p = report["precisions"]
    d = m.default_precision
    assert d == report["default_precision"] and d in m.models
    assert p[d]["esr_vs_target"] <= ESR_RATIO_MAX * p["float32"]["esr_vs_target"] + 1e-9
    assert p[d]["per_hop_ms_host"] <= p["float32"]["per_hop_ms_host"]
    assert "fastest" in m.conversion["default_rule"] and m.conversion["default_reason"]


def test_tflite_streaming_equals_pytorch_offline_on_10_s_with_knob_changes(testkit):
    model, ck = load_checkpoint(testkit / "run/best.pt")
    bundle = load_bundle(testkit / "tiny")
    H = model.cfg.hop
    n_hops = 10 * model.cfg.sample_rate // H
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(n_hops * H) * np.linspace(0.05, 1, n_hops * H)).astype(np.float32)
    knobs = np.repeat(rng.uniform(0, 1, (n_hops // 200 + 1, len(bundle.manifest.knobs))), 200, 0)[:n_hops].astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None], torch.from_numpy(knobs)[None])[0].numpy()
    runner = StepRunner(bundle, "float32")
    out = np.concatenate([runner.step(x[t * H:(t + 1) * H], knobs[t]).copy() for t in range(n_hops)])
    assert float(np.abs(out - ref).max()) <= 1e-5


# --- calibration and the int8 plan ------------------------------------------------------------------------
def test_calibration_covers_the_knob_space_with_states_the_model_really_streams(testkit):
    model, ck = load_checkpoint(testkit / "run/best.pt")
    step = StepModel(model).eval()
    cal = calibration_set(step, testkit / "data", n_clips=4, seconds=1.0, per_clip=12, seed=3, log=lambda *a: None)
    H, K, S = model.cfg.hop, model.cfg.n_knobs, step.state_size
    assert cal["audio"].shape == (48, H) and cal["knobs"].shape == (48, K) and cal["state"].shape == (48, S)
    # every knob's whole range is visited (8 settings on a Latin hypercube: one per eighth of each knob)
    assert (cal["knobs"].min(0) < 0.125).all() and (cal["knobs"].max(0) > 0.875).all()
    lhs = latin_hypercube(8, K, np.random.default_rng(0))
    assert all(sorted((lhs[:, j] * 8).astype(int)) == list(range(8)) for j in range(K))
    # states are streamed ones, not zeros: the analysis buffer holds audio, and most tuples come
    # after the pooled attention memory began to fill (a block of frames later)
    part = {p["name"]: p for p in step.layout}
    ana, mem = part["analysis"], part["b0.k_mem0"]
    buf = cal["state"][:, ana["offset"]: ana["offset"] + ana["size"]]
    assert 0.2 < np.sqrt(np.mean(buf ** 2)) / np.sqrt(np.mean(cal["audio"] ** 2)) < 5
    filled = np.abs(cal["state"][:, mem["offset"]: mem["offset"] + mem["size"]]).max(1) > 0
    assert filled.mean() > 0.5
    # bounded: the largest values are the coarse memory's running sums (up to 256 frames of keys)
    assert np.isfinite(cal["state"]).all() and np.abs(cal["state"]).max() < 1e4
    with torch.no_grad():  # a state the model produced, fed back, gives a finite next step
        y, s = step(torch.from_numpy(cal["audio"][:1]), torch.from_numpy(cal["knobs"][:1]), torch.from_numpy(cal["state"][:1]))
    assert torch.isfinite(y).all() and torch.isfinite(s).all()


def test_every_matmul_is_found_by_its_pytorch_name(testkit):
    model, _ = load_checkpoint(testkit / "run/best.pt")
    f32 = load_bundle(testkit / "tiny").path("step_float32.tflite").read_bytes()
    names = linear_names(f32, model)
    linears = {n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert set(names.values()) == linears  # GELU's 0.5 folded into the next weights is still found


def test_the_quantized_models_follow_their_plans_and_keep_io_state_knobs_and_gain_in_float(testkit):
    b = load_bundle(testkit / "tiny")
    model = load_checkpoint(testkit / "run/best.pt")[0]
    shapes = {n: tuple(mod.weight.shape) for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    kind = {"float": ("float32", "float32"), "dynamic": ("int8", "float32"), "int8": ("int8", "int8")}
    quantized = [p for p in ("dynamic_int8", "int8") if p in b.manifest.models]
    if not quantized:
        pytest.skip(f"no quantized model in the test bundle: {b.manifest.conversion.get('left_out')}")
    for prec in quantized:
        q = b.path(b.manifest.models[prec].file).read_bytes()
        info = b.manifest.models[prec].quantization
        assert info["io"] == info["state"] == "float32" and info["plan"]
        modes = info["matmuls"]
        assert set(modes) == set(shapes)
        # the sound's own path and the knobs never see int8 activations
        for name in ("gain_head", "fir_head", "synth_head", "film.0"):
            if name in modes:
                assert modes[name] in (("float",) if name != "synth_head" else ("float", "dynamic", "int8")), (prec, name)
        assert modes["film.0"] == modes["gain_head"] == "float"
        # every matmul in the file is what the plan says (weights, input type), shape by shape
        want, got = {}, {}
        for name, mode in modes.items():
            want.setdefault(shapes[name], []).append(kind[mode])
        for r in matmul_kinds(q):
            got.setdefault(tuple(r["weights"]), []).append((r["weight_type"], r["input_type"]))
        for shape, kinds in want.items():  # matmuls that are no nn.Linear (constant weights) stay float
            extra = list(got.get(shape, []))
            for k in kinds:
                assert k in extra, (prec, shape, kinds, got.get(shape))
                extra.remove(k)
            assert all(k == ("float32", "float32") for k in extra), (prec, shape, extra)
        assert all(k == ("float32", "float32") for shape, ks in got.items() if shape not in want for k in ks), prec
        # nothing quantizes the audio, the knobs or the state on the way in
        for name, users in consumers_of_inputs(q).items():
            assert "QUANTIZE" not in users, (prec, name, users)
        if prec == "int8":
            assert "int8" in modes.values() and info["calibration"]["tuples"] > 0  # real int8 x int8 somewhere


# --- what gets shipped --------------------------------------------------------------------------------------
def _res(snr, esr, ms, loaded=True):
    return {"loaded": loaded, "finite": True, "snr_db_vs_pytorch": snr, "esr_vs_target": esr, "per_hop_ms_host": ms,
            "meets_floor": True}


def test_the_default_is_the_fastest_precision_that_keeps_fidelity():
    r = {"float32": _res(140, 0.0100, 0.030), "float16": _res(85, 0.0100, 0.031),
         "dynamic_int8": _res(55, 0.0104, 0.022), "int8": _res(50, 0.0105, 0.021)}
    assert choose_default(r)[0] == "dynamic_int8"  # int8 is faster, but by less than 10%: not worth 5 dB
    r["int8"]["per_hop_ms_host"] = 0.019
    assert choose_default(r)[0] == "int8"
    r["int8"]["esr_vs_target"] = 0.0112  # 12% worse than float32 against the real effect: out
    assert choose_default(r)[0] == "dynamic_int8"
    r["dynamic_int8"]["meets_floor"] = False
    assert choose_default(r)[0] == "float32"  # float16 is no faster on x86


def test_a_model_the_runtime_cannot_load_or_that_aborts_it_is_reported_and_not_shipped(testkit, tmp_path):
    b = load_bundle(testkit / "tiny")
    m = b.manifest
    work = testkit / "tiny.work"
    # a model that aborts ai-edge-litert: int16 activations reach LayerNorm's RSQRT (no int16 kernel: SIGABRT)
    import tensorflow as tf
    calib = {k: np.load(work / f"calib_{k}.npy")[:16] for k in ("audio", "knobs", "state")}
    conv = tf.lite.TFLiteConverter.from_saved_model(str(work / "onnx2tf" / "tf"))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ({k: v[i:i + 1] for k, v in calib.items()} for i in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                                      tf.lite.OpsSet.TFLITE_BUILTINS]  # what onnx2tf's -oiqt int16 model does
    int16 = tmp_path / "int16.tflite"
    int16.write_bytes(conv.convert())
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"TFL3" + bytes(200))
    results = {"float32": {"loaded": True, "finite": True, "snr_db_vs_pytorch": 140.0}}
    for prec, path in (("int8", int16), ("dynamic_int8", garbage)):
        models = {"float32": m.models["float32"]}
        ins, outs = io_tensors(int16, m.hop, len(m.knobs), m.state_size) if prec == "int8" else (
            m.models["float32"].inputs, m.models["float32"].outputs)
        models[prec] = ModelEntry(prec, "x.tflite", ins, outs)
        man = Manifest(**{**vars(m), "models": models, "default_precision": "float32"})
        staged = write_bundle(tmp_path / prec, man, {"golden.npz": b.path("golden.npz"),
                                                     "step_float32.tflite": b.path("step_float32.tflite"), "x.tflite": path},
                              archive=False)
        results[prec] = device_check(["verify", "--bundle", str(staged), "--precision", prec], timeout=120)
    assert results["int8"]["loaded"] is False and "abort" in results["int8"]["error"], results["int8"]
    assert results["dynamic_int8"]["loaded"] is False and "cannot load" in results["dynamic_int8"]["error"]
    left = left_out_reasons(results)
    assert set(left) == {"int8", "dynamic_int8"} and all(w.startswith("cannot run") for w in left.values())
