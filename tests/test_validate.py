"""``edgekit validate``: every precision of a bundle on labelled images, report, chart and exit code."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from conftest import assert_one_line_error
from edgekit.bundle import Bundle
from edgekit.quant.gate import REPORT_JSON, REPORT_PNG, validate

pytestmark = pytest.mark.slow


def test_report_per_precision_and_chart(int8_bundle, digits, tmp_path, cli):
    from edgekit.backends.select import tensorrt_available

    out = tmp_path / "report"
    result = cli("validate", int8_bundle.path, "--images", digits / "val", "--out", out)
    assert result.code == 0, result
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["passed"] is True and report["labelled"] is True and report["images"] > 300
    rows = {r["name"]: r for r in report["results"]}
    assert {"fp32", "fp16", "int8"} <= set(rows)
    for name in ("fp32", "fp16", "int8"):
        row = rows[name]
        assert 0 < row["accuracy"] <= 100 and row["latency_ms"] > 0 and row["max_abs_error"] >= row["mean_abs_error"]
    assert rows["fp32"]["agreement"] == 100 and rows["fp32"]["max_abs_error"] == 0 and rows["fp32"]["passed"] is None
    assert rows["int8"]["passed"] is True and rows["int8"]["drop"] <= 1.0
    if not tensorrt_available():
        assert "not available" in rows["tensorrt"]["skipped"]
        assert "skipped: TensorRT is not available" in result.out
    assert (out / REPORT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "int8" in result.out and "fp16" in result.out
    assert not list(out.glob(".*.tmp"))  # written atomically, nothing left over


def test_gate_exit_code_on_a_broken_int8(int8_bundle, digits, tmp_path, cli):
    """An INT8 model calibrated on nothing useful (ranges of black images) fails with exit 3."""
    from edgekit.quant.calibration import calibration_set
    from edgekit.quant.qdq import quantize_qdq

    bundle = tmp_path / "b"
    shutil.copytree(int8_bundle.path, bundle)
    flat = tmp_path / "flat"
    flat.mkdir()
    import cv2

    for i in range(20):
        cv2.imwrite(str(flat / f"{i}.png"), np.zeros((32, 32, 3), np.uint8))
    loaded = Bundle.load(bundle)
    cal = calibration_set(flat, loaded.preprocess, progress=False)
    quantize_qdq(loaded.model_path("fp32"), tmp_path / "broken.onnx", cal, "minmax")
    loaded.add_model("int8", tmp_path / "broken.onnx", "model.int8.onnx")
    loaded.save()
    result = cli("validate", bundle, "--images", digits / "val", "--no-tensorrt")
    assert_one_line_error(result, "accuracy gate failed", "int8", "max 1")
    assert result.code == 3
    report = json.loads((bundle / REPORT_JSON).read_text())
    assert report["passed"] is False
    assert next(r for r in report["results"] if r["name"] == "int8")["drop"] > 1.0
    # The verdict is recorded in the manifest and honoured by later commands
    record = Bundle.load(bundle).models["int8"]
    assert record["usable"] is False and record["validation"]["passed"] is False
    assert record["validation"]["images"] == report["images"] and record["validation"]["drop"] > 1.0
    assert_one_line_error(cli("bench", bundle, "--precision", "int8", "--backend", "onnxruntime"),
                          "int8 failed `edgekit validate`")
    # a generous enough max-drop lets it through, and makes it usable again
    assert cli("validate", bundle, "--images", digits / "val", "--max-drop", 100, "--no-tensorrt").code == 0
    assert Bundle.load(bundle).usable("int8")


def test_class_folders_must_match_labels(int8_bundle, tmp_path, cli):
    import cv2

    images = tmp_path / "animals"
    for name in ("cat", "dog", "3"):
        (images / name).mkdir(parents=True)
        cv2.imwrite(str(images / name / "a.png"), np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "out"
    result = cli("validate", int8_bundle.path, "--images", images, "--out", out)
    assert_one_line_error(result, "cat, dog", "not labels of the bundle")
    assert not out.exists()


@pytest.mark.parametrize("case", ["one-class", "empty", "no-fp32", "negative-drop"])
def test_bad_inputs(case, tiny_bundle, tmp_path, cli):
    import cv2

    images = tmp_path / "imgs"
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle)
    args = []
    if case == "one-class":
        (images / "red").mkdir(parents=True)
        cv2.imwrite(str(images / "red" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    elif case == "empty":
        images.mkdir()
    else:
        for label in ("red", "green"):
            (images / label).mkdir(parents=True)
            cv2.imwrite(str(images / label / "a.png"), np.zeros((8, 8, 3), np.uint8))
    if case == "no-fp32":
        manifest = json.loads((bundle / "edgekit.json").read_text())
        manifest["models"] = {}
        (bundle / "edgekit.json").write_text(json.dumps(manifest))
    if case == "negative-drop":
        args = ["--max-drop", -1]
    result = cli("validate", bundle, "--images", images, *args)
    fragment = {"one-class": "at least 2", "empty": "holds no images", "no-fp32": "no fp32 model",
                "negative-drop": "--max-drop': -1.0 is not in the range x>=0"}[case]
    assert_one_line_error(result, fragment)
    assert not (bundle / REPORT_JSON).exists()


def test_validate_api_on_tiny_bundle_without_labels_missing(tiny_bundle, tmp_path, colour_media):
    """The API: a folder missing one label still validates (with a warning); fp32-only has no gate."""
    images = tmp_path / "imgs"
    for label in ("red", "blue"):
        colour_media.folder(images / label, [label] * 3)
    report = validate(tiny_bundle, images, out=tmp_path / "out", tensorrt=False)
    assert [r.name for r in report.results] == ["fp32"]
    assert report.results[0].accuracy == 100.0 and not report.failures
    assert onnx.load(tiny_bundle.model_path()).graph.node  # bundle intact
