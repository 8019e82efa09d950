"""A box must refuse a bundle it cannot trust, saying exactly why, and run one it can."""
import json
import shutil
import tarfile

import numpy as np
import pytest

from device.bundle import SCHEMA_VERSION, BundleError, load_bundle
from device.engine import StepRunner


@pytest.fixture
def bundle_dir(bundle_path, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(load_bundle(bundle_path).root, d)  # not tarfile's filter=: Python 3.11.4+ only
    return d


def test_the_test_bundle_loads_and_describes_itself(bundle_path):
    b = load_bundle(bundle_path)
    m = b.manifest
    assert m.schema_version == SCHEMA_VERSION
    assert [k.name for k in m.knobs] == ["threshold_db", "ratio", "attack_ms", "release_ms"]
    assert m.sample_rate == 48000 and m.hop == 64 and m.latency_samples <= 128
    assert {"float32", "float16"} <= set(m.models)
    assert sum(p["size"] for p in m.state_layout) == m.state_size
    assert set(m.files) == {"golden.npz"} | {e.file for e in m.models.values()}
    assert {"step_float32.tflite", "step_float16.tflite"} <= set(m.files)
    assert "threshold_db" in b.card() and "float32" in b.card()


def test_a_wrong_checksum_is_refused_naming_the_file(bundle_dir):
    f = bundle_dir / "step_float32.tflite"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for 'step_float32.tflite'"):
        load_bundle(bundle_dir)


def test_a_missing_file_is_refused_naming_it(bundle_dir):
    (bundle_dir / "golden.npz").unlink()
    with pytest.raises(BundleError, match=r"missing file 'golden.npz'"):
        load_bundle(bundle_dir)


def test_an_unknown_schema_version_is_refused(bundle_dir):
    man = json.loads((bundle_dir / "manifest.json").read_text())
    man["schema_version"] = 99
    (bundle_dir / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match=r"schema_version 99 is not supported \(this device reads 1\)"):
        load_bundle(bundle_dir)


def test_a_missing_manifest_and_bad_json_are_refused(bundle_dir):
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest.json: not valid JSON"):
        load_bundle(bundle_dir)
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"missing manifest.json"):
        load_bundle(bundle_dir)


def test_shapes_that_disagree_with_the_hop_are_refused(bundle_dir):
    man = json.loads((bundle_dir / "manifest.json").read_text())
    man["hop"] = 128
    (bundle_dir / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match=r"models.float32.inputs.audio has shape \[1, 64\], expected \[1, 128\]"):
        load_bundle(bundle_dir)


def test_a_manifest_that_lies_about_a_tensor_is_caught_by_the_runtime(bundle_dir):
    man = json.loads((bundle_dir / "manifest.json").read_text())
    man["models"]["float32"]["inputs"]["knobs"]["name"] = "serving_default_volume:0"
    (bundle_dir / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match=r"input tensor 'serving_default_volume:0' \(knobs\) not in the model"):
        StepRunner(load_bundle(bundle_dir), "float32")


def test_a_truncated_archive_is_refused(bundle_path, tmp_path):
    cut = tmp_path / "cut.pedal"
    cut.write_bytes(bundle_path.read_bytes()[: bundle_path.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"cut.pedal: (not a readable bundle archive|missing|checksum)"):
        load_bundle(cut)


def test_an_archive_with_a_path_outside_the_bundle_is_refused(bundle_dir, tmp_path):
    evil = tmp_path / "evil.pedal"
    with tarfile.open(evil, "w") as tar:
        tar.add(bundle_dir / "manifest.json", arcname="../manifest.json")
    with pytest.raises(BundleError, match=r"unexpected archive member"):
        load_bundle(evil)


def test_golden_vectors_are_complete(bundle_path):
    g = load_bundle(bundle_path).golden()
    m = load_bundle(bundle_path).manifest
    n_hops = len(g["knob_positions"])
    assert g["input"].shape == g["expected"].shape == g["target"].shape == (n_hops * m.hop,)
    assert g["knob_positions"].shape == g["knob_values"].shape == (n_hops, len(m.knobs))
    pos = np.array([[k.to_normalized(v) for k, v in zip(m.knobs, row)] for row in g["knob_values"]])
    assert np.allclose(pos, g["knob_positions"], atol=1e-5)
    assert g["knob_positions"].std(axis=0).min() > 0.1  # every knob really moves
