"""The detection INT8 gate refuses a detector whose INT8 model really lost accuracy, at the default --max-drop.

A random-weight detector (tests/detection_fixtures.py) has nothing to lose against real labels, so the
labels here are its own FP32 detections on real images (digits pasted on noisy canvases): FP32 scores
~100 % mAP@0.5 on them. Two real ways to a bad INT8 model: calibration on the wrong images (near-black
frames: every activation range is tiny, the real scenes saturate) and weights damaged after
quantization (Gaussian noise added, the manifest's hash updated through ``Bundle.add_model``, so only
the gate can notice). A faithfully quantized model passes the same gate: the gate separates them.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import assert_one_line_error
from edgekit.bundle import Bundle

pytest.importorskip("tensorflow")  # the detector is built with Keras (third-party, not edgekit)


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """(bundle folder with a faithfully quantized int8, its calibration images, FP32-labelled images)."""
    from edgekit.host.export import export_bundle
    from edgekit.quant.quantize import quantize_bundle
    from detection_fixtures import build_detector, digit_scenes, labels_from_fp32

    root = tmp_path_factory.mktemp("gate")
    scenes = digit_scenes(root / "scenes", n=24)
    model = build_detector(root / "det.keras")
    bundle = export_bundle(model, root / "bundle", target="jetpack-6.1", nms={"score_threshold": 0.3, "max_detections": 50})
    labelled = labels_from_fp32(bundle, scenes / "images", root / "labelled")
    assert len(json.loads((labelled / "annotations.json").read_text())["annotations"]) >= 24
    quantize_bundle(bundle.path, scenes / "images", method="minmax", holdout=8, fp16=False, progress=False)
    return bundle.path, scenes / "images", labelled


def _degrade(path, noise: float = 1.0, seed: int = 1) -> None:
    """Add Gaussian noise (``noise`` x each weight tensor's std) to the int8 model's float conv weights;
    record the new file through the bundle's own API (hash updated, verdict reset to usable)."""
    import onnx
    from onnx import numpy_helper

    from edgekit.graph.nms import attach_plugin_model

    bundle = Bundle.load(path)
    model = onnx.load(str(bundle.model_path("int8")))
    rng = np.random.default_rng(seed)
    damaged = 0
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim == 4:
            init.CopyFrom(numpy_helper.from_array((w + rng.normal(0, noise * w.std(), w.shape)).astype(np.float32), init.name))
            damaged += 1
    assert damaged >= 4  # the backbone and both heads
    noisy = path.parent / "noisy.int8.onnx"
    onnx.save(model, str(noisy))
    entry = bundle.models["int8"]
    info = {k: v for k, v in entry.items() if k not in ("path", "sha256", "usable", "tensorrt", "gate", "validation")}
    bundle.add_model("int8", noisy, entry["path"], **info)
    attach_plugin_model(bundle, "int8")  # TensorRT's copy of the damaged model, as quantize writes it
    bundle.save()
    noisy.unlink()
    Bundle.load(path)  # hashes agree: nothing but the gate can tell


def test_validate_passes_faithful_int8_refuses_damaged_int8_and_run_refuses_it(det, cli, tmp_path):
    path, _, labelled = det
    good = tmp_path / "good"
    shutil.copytree(path, good)
    r = cli("validate", good, "--images", labelled, "--no-tensorrt")  # the default --max-drop (1 point)
    assert r.code == 0, r
    rows = {row["name"]: row for row in json.loads((good / "validation.json").read_text())["results"]}
    assert rows["fp32"]["accuracy"] > 95 and rows["int8"]["passed"] is True
    assert Bundle.load(good).usable("int8")

    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    _degrade(bad)
    r = cli("validate", bad, "--images", labelled, "--no-tensorrt")
    assert r.code == 3, r
    assert_one_line_error(r, "accuracy gate failed", "int8 on onnxruntime", "(max 1)")
    entry = Bundle.load(bad).models["int8"]
    assert entry["usable"] is False and entry["validation"]["passed"] is False
    assert entry["validation"]["drop"] > 10 and entry["validation"]["max_drop"] == 1.0

    r = cli("run", bad, "--source", labelled / "images", "--backend", "onnxruntime", "--precision", "int8",
            "--max-frames", 2, "--json", tmp_path / "out.jsonl")
    assert r.code == 3, r
    assert_one_line_error(r, "int8 failed `edgekit validate`", "--allow-failed-gate")
    assert not (tmp_path / "out.jsonl").exists()


def test_quantize_refuses_int8_calibrated_on_the_wrong_images(det, cli, tmp_path):
    import cv2

    path, _, labelled = det
    dark = tmp_path / "dark"  # what a lens cap gives: calibration ranges far below the real scenes'
    dark.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        cv2.imwrite(str(dark / f"{i:02d}.png"), rng.integers(0, 6, (64, 64, 3), np.uint8))
    bundle = tmp_path / "bundle"
    shutil.copytree(path, bundle)
    r = cli("quantize", bundle, "--calib-images", dark, "--gate-images", labelled, "--method", "minmax", "--no-fp16")
    assert r.code == 3, r
    assert_one_line_error(r, "int8 failed the accuracy gate", "mAP@0.5 dropped", "(max 1)")
    entry = Bundle.load(bundle).models["int8"]
    assert entry["usable"] is False and entry["gate"]["drop"] > 10 and entry["gate"]["labelled"] is True

    r = cli("run", bundle, "--source", labelled / "images", "--backend", "onnxruntime", "--precision", "int8",
            "--max-frames", 2)
    assert r.code == 3, r
    assert_one_line_error(r, "int8 failed the quantize accuracy gate")
