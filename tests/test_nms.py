"""edgekit/nms.py: the EfficientNMS_TRT plugin's semantics in numpy (no TensorFlow needed)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.nms import NmsParams, efficient_nms, filter_detections


def random_detections(seed, batch=3, n=200, classes=4):
    rng = np.random.default_rng(seed)
    xy = rng.random((batch, n, 2)) * 0.8
    wh = rng.random((batch, n, 2)) * 0.3 + 0.02
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores = rng.random((batch, n, classes)).astype(np.float32)
    return boxes, scores


def iou(a, b):
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def test_outputs_follow_the_plugin_contract():
    boxes, scores = random_detections(0)
    out = efficient_nms(boxes, scores, score_threshold=0.5, iou_threshold=0.5, max_output_boxes=30)
    assert list(out) == ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]
    assert out["num_detections"].shape == (3, 1) and out["num_detections"].dtype == np.int32
    assert out["detection_boxes"].shape == (3, 30, 4) and out["detection_boxes"].dtype == np.float32
    assert out["detection_scores"].shape == (3, 30) and out["detection_classes"].dtype == np.int32
    for b in range(3):
        n = out["num_detections"][b, 0]
        s = out["detection_scores"][b]
        assert 0 < n <= 30
        assert np.all(s[:n] >= 0.5) and np.all(np.diff(s[:n]) <= 0)  # thresholded, sorted best first
        assert not s[n:].any() and not out["detection_boxes"][b, n:].any()  # zero padding
        kept = out["detection_boxes"][b, :n]
        cls = out["detection_classes"][b, :n]
        for i in range(n):  # no two kept boxes of one class overlap above the IoU threshold
            for j in range(i):
                if cls[i] == cls[j]:
                    assert iou(kept[i], kept[j]) <= 0.5


def test_class_agnostic_suppresses_across_classes():
    boxes = np.array([[[0, 0, 0.5, 0.5], [0.01, 0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.0, 0.8], [0.1, 0.7]]], np.float32)
    per_class = efficient_nms(boxes, scores, score_threshold=0.3, iou_threshold=0.5, max_output_boxes=5)
    agnostic = efficient_nms(boxes, scores, score_threshold=0.3, iou_threshold=0.5, max_output_boxes=5,
                             class_agnostic=True)
    assert per_class["num_detections"][0, 0] == 3
    assert agnostic["num_detections"][0, 0] == 2
    assert agnostic["detection_classes"][0, :2].tolist() == [0, 1]
    np.testing.assert_allclose(agnostic["detection_scores"][0, :2], [0.9, 0.7])


def test_reversed_corners_are_normalised_like_the_plugin():
    boxes, scores = random_detections(1, batch=1)
    flipped = boxes[..., [2, 3, 0, 1]]
    a = efficient_nms(boxes, scores, score_threshold=0.3, iou_threshold=0.4, max_output_boxes=50)
    b = efficient_nms(flipped, scores, score_threshold=0.3, iou_threshold=0.4, max_output_boxes=50)
    np.testing.assert_array_equal(a["detection_scores"], b["detection_scores"])
    np.testing.assert_array_equal(a["detection_boxes"], b["detection_boxes"][..., [2, 3, 0, 1]])


@pytest.mark.parametrize("seed", [2, 3])
def test_low_threshold_then_filter_equals_nms_at_the_run_threshold(seed):
    """Why one TensorRT engine (plugin at the eval threshold) serves `run` at the run threshold."""
    boxes, scores = random_detections(seed)
    low = efficient_nms(boxes, scores, score_threshold=0.01, iou_threshold=0.5, max_output_boxes=100)
    high = efficient_nms(boxes, scores, score_threshold=0.6, iou_threshold=0.5, max_output_boxes=100)
    filtered = filter_detections(low, 0.6)
    for key in high:
        np.testing.assert_array_equal(filtered[key], high[key])


def test_no_candidates_gives_empty_padded_outputs():
    boxes, scores = random_detections(4, batch=2)
    out = efficient_nms(boxes, scores * 0.1, score_threshold=0.5, iou_threshold=0.5, max_output_boxes=7)
    assert out["num_detections"].tolist() == [[0], [0]]
    assert out["detection_boxes"].shape == (2, 7, 4) and not out["detection_boxes"].any()


def test_params_are_checked_with_option_names():
    from edgekit.errors import UsageError

    with pytest.raises(UsageError, match="--iou-threshold"):
        NmsParams(iou_threshold=1.5)
    with pytest.raises(UsageError, match="--max-detections"):
        NmsParams(max_detections=0)
    with pytest.raises(UsageError, match="--eval-score-threshold 0.5 exceeds --score-threshold 0.3"):
        NmsParams(score_threshold=0.3, eval_score_threshold=0.5)
    assert NmsParams.from_dict(NmsParams(score_threshold=0.4).to_dict()).score_threshold == 0.4


def test_device_side_modules_are_python_3_8_syntax():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "edgekit"
    for rel in ("nms.py", "backends/detection.py"):
        source = (root / rel).read_text()
        assert source.startswith('"""') and "from __future__ import annotations" in source
        ast.parse(source, feature_version=(3, 8))
