"""Conversion: only builtin TFLite ops reach a box, and the TFLite step model streams exactly
like the PyTorch offline model."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convert.pipeline import ConversionError, check_builtin_only, run_onnx2tf, tflite_ops
from device.bundle import load_bundle
from device.engine import StepRunner
from training.train import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TESTKIT = REPO / "build/testkit"


@pytest.fixture(scope="module")
def testkit():
    if not (TESTKIT / "tiny.pedal").exists():
        pytest.fail("build/testkit is missing: `make test` builds it (python -m tests.make_testkit)")
    return TESTKIT


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


def test_the_shipped_models_use_builtin_ops_only(testkit):
    b = load_bundle(testkit / "tiny")
    for entry in b.manifest.models.values():
        ops = tflite_ops(b.path(entry.file))
        assert ops and all(builtin for _, builtin in ops), ops
        check_builtin_only(b.path(entry.file))


def test_conversion_report_meets_the_fidelity_floors(testkit):
    rep = json.loads((testkit / "tiny.conversion.json").read_text())
    assert rep["onnx_snr_db"] >= 90
    assert rep["precisions"]["float32"]["snr_db_vs_pytorch"] >= 90
    assert rep["precisions"]["float16"]["snr_db_vs_pytorch"] >= 55


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
