"""edgekit inspect: the readable summary and --json, on the TF-free tiny bundle and the exported one."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_inspect_tiny_bundle_text(cli, tiny_bundle):
    r = cli("inspect", tiny_bundle.path)
    assert r.code == 0, r
    for fragment in ("labels    red, green, blue", "input     input ['batch', 3, 32, 32] NCHW float32",
                     "model     fp32: model.onnx", "Conv 1", "Softmax 1", "probs ['batch', 3]"):
        assert fragment in r.out, r.out
    assert tiny_bundle.models["fp32"]["sha256"][:16] in r.out


def test_inspect_json_matches_files(cli, fp32_bundle):
    from edgekit.atomic import sha256_file

    r = cli("inspect", fp32_bundle.path, "--json")
    assert r.code == 0, r
    s = json.loads(r.out)
    fp32 = s["models"]["fp32"]
    assert fp32["sha256"] == sha256_file(fp32_bundle.model_path()) and fp32["hash_ok"]
    assert fp32["size"] == fp32_bundle.model_path().stat().st_size
    assert fp32["ops"]["Conv"] == 3 and fp32["nodes"] == sum(fp32["ops"].values())
    assert fp32["inputs"] == [{"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    assert s["target"]["verdict"] == "ok" and s["parity"]["max_abs_error"] <= 1e-4
    assert fp32["qdq"] == 0


def test_inspect_recheck_against_other_target_and_int8_model(cli, tiny_bundle, tmp_path):
    """A second model (here a copy standing in as int8) is listed; --target re-checks the fp32 graph."""
    import shutil

    from edgekit.bundle import Bundle

    path = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, path)
    b = Bundle.load(path)
    b.add_model("int8", path / "model.onnx", "model.int8.onnx", method="test-copy")
    b.save()
    r = cli("inspect", path, "--target", "jetpack-4.6.1")
    assert r.code == 0, r
    assert "int8: model.int8.onnx" in r.out
    assert "jetpack-4.6.1 (TensorRT 8.2): unsupported" in r.out and "opset 17" in r.out  # opset > 13
    (path / "model.int8.onnx").write_bytes(b"edited")
    r = cli("inspect", path)
    assert r.code == 0 and "HASH MISMATCH" in r.out


def test_inspect_errors(cli, tmp_path):
    assert_one_line_error(cli("inspect", tmp_path / "nope"), "does not exist")
    (tmp_path / "plain").mkdir()
    assert_one_line_error(cli("inspect", tmp_path / "plain"), "not an edgekit bundle")
    r = cli("inspect", tmp_path / "plain", "--target", "jetpack-1")
    assert r.code != 0
