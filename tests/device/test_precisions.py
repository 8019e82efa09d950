"""Every precision a bundle ships runs on the box's runtime and proves itself there: golden vectors
within the manifest's tolerance, float audio, knobs and state in and out, and a default precision
that keeps the fidelity the conversion promised."""
import numpy as np
import pytest

from device.bundle import BundleError, load_bundle
from device.engine import StepRunner
from device.selftest import check_golden


def esr(ref, out):
    return float(np.sum((out.astype(np.float64) - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-12))


def run_golden(bundle, precision):
    m, g = bundle.manifest, bundle.golden()
    runner = StepRunner(bundle, precision)
    H = m.hop
    return np.concatenate([runner.step(g["input"][t * H:(t + 1) * H], g["knob_positions"][t]).copy()
                           for t in range(len(g["knob_positions"]))])


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return load_bundle(bundle_path)


def test_every_shipped_precision_meets_its_manifest_tolerance_on_this_runtime(bundle):
    m = bundle.manifest
    assert set(m.tolerances) == set(m.models)  # no model without a tolerance the self-test can check
    for prec in m.models:
        r = check_golden(bundle, prec)
        assert r["ok"], f"{prec}: {r['snr_db']:.1f} dB < {r['snr_db_min']:g} dB"
        assert r["snr_db_min"] == m.tolerances[prec]["snr_db_min"]


def test_the_quantized_precisions_are_there_or_the_manifest_says_why(bundle):
    m = bundle.manifest
    assert {"float32", "float16"} <= set(m.models)
    for prec in ("dynamic_int8", "int8"):
        assert prec in m.models or prec in m.conversion.get("left_out", {}), prec
    for prec in set(m.models) - {"float32", "float16"}:
        q = m.models[prec].quantization
        assert q["io"] == "float32" and q["state"] == "float32"  # the sound and the state never pass int8 on the way in
        assert m.tolerances[prec]["snr_db_min"] >= 40


def test_every_model_takes_and_gives_float_and_the_state_by_name(bundle):
    m = bundle.manifest
    for prec, e in m.models.items():
        runner = StepRunner(bundle, prec)
        ins = {d["index"]: d for d in runner.it.get_input_details()}
        outs = {d["index"]: d for d in runner.it.get_output_details()}
        for idx, table in ((runner.i_audio, ins), (runner.i_knobs, ins), (runner.i_state, ins), (runner.o_audio, outs),
                           (runner.o_state, outs)):
            assert np.dtype(table[idx]["dtype"]) == np.float32, (prec, table[idx]["name"])
        assert "state" in e.inputs["state"].name
        assert list(ins[runner.i_state]["shape"]) == list(outs[runner.o_state]["shape"]) == [1, m.state_size]


def test_the_default_precision_keeps_the_esr_of_float32_on_this_runtime(bundle):
    m = bundle.manifest
    g = bundle.golden()
    d = m.default_precision
    assert d in m.models and m.conversion.get("default_rule")
    e32 = esr(g["target"], run_golden(bundle, "float32"))
    ed = esr(g["target"], run_golden(bundle, d))
    assert ed <= 1.10 * e32 + 1e-9, f"{d}: ESR {ed:.5f} vs float32 {e32:.5f}"


def test_with_tflite_runtime_where_installed(bundle, monkeypatch):
    tflite_runtime = pytest.importorskip("tflite_runtime.interpreter")
    import device.engine as engine
    monkeypatch.setattr(engine, "make_interpreter",
                        lambda path, threads=1: tflite_runtime.Interpreter(model_path=str(path), num_threads=threads))
    m = bundle.manifest
    for prec in m.models:
        try:
            r = check_golden(bundle, prec)
        except BundleError as e:  # tflite-runtime 2.14 cannot load some op versions written by TF 2.19
            assert prec not in ("float32", "float16"), e
            assert "cannot load" in str(e)
            continue
        assert r["ok"], (prec, r["snr_db"])
