"""edgekit's NMS against ONNX's ``NonMaxSuppression`` (run by ONNX Runtime), box for box, on inputs
built so that suppression happens: clusters of overlapping boxes of several classes (IoUs spread
around the threshold), boxes on both sides of the score threshold, and equal scores.

Where the two rules differ by definition the difference is asserted, not hidden: ONNX suppresses at
``IoU > iou_threshold``; TensorRT's EfficientNMS_TRT, which edgekit imitates, at ``IoU >= iou_threshold``
(``/work/shared/reference/detection-facts.md``, from the plugin's source). Random coordinates keep
IoU ties out of the comparison (checked: no pair within 1e-5 of the threshold); grid-aligned boxes
test the tie itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from detection_fixtures import onnx_nms
from edgekit.nms import efficient_nms

ort = pytest.importorskip("onnxruntime")  # a third-party runtime, not edgekit's own module

SCORE, IOU = 0.3, 0.5


def clusters(seed, batch=3, objects=14, copies=6, classes=3):
    """Objects, each drawn ``copies`` times with jitter (IoUs around 0.2-0.9), scored per class."""
    rng = np.random.default_rng(seed)
    centre = rng.random((batch, objects, 1, 2)) * 0.7 + 0.15
    size = rng.random((batch, objects, 1, 2)) * 0.2 + 0.08
    jitter = rng.normal(0, 0.12, (batch, objects, copies, 2)) * size
    grow = 1 + rng.normal(0, 0.12, (batch, objects, copies, 2))
    c, s = centre + jitter, size * np.clip(grow, 0.5, 1.6)
    boxes = np.concatenate([c - s / 2, c + s / 2], -1).reshape(batch, objects * copies, 4).astype(np.float32)
    kind = rng.integers(0, classes, (batch, objects))
    scores = rng.random((batch, objects, copies, classes)) * 0.36  # other classes: mostly below SCORE
    main = rng.random((batch, objects, copies)) * 0.7 + 0.2  # the object's class: both sides of SCORE
    np.put_along_axis(scores, np.broadcast_to(kind[..., None, None], (batch, objects, copies, 1)), main[..., None], -1)
    scores = scores.reshape(batch, objects * copies, classes).astype(np.float32)
    scores[:, -2:, :] = np.float32(0.777)  # equal scores ...
    boxes[:, -2:] = np.array([[0.0, 0.0, 0.05, 0.05], [0.95, 0.95, 1.0, 1.0]], np.float32)  # ... on boxes apart
    return boxes, scores


def _ious(c):
    lt, rb = np.maximum(c[:, None, :2], c[None, :, :2]), np.minimum(c[:, None, 2:], c[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area = np.prod(c[:, 2:] - c[:, :2], -1)
    return inter / (area[:, None] + area[None, :] - inter)


def _rows(selected_b, scores_b):
    """(score, class, box) rows sorted by score, then class, then box: equal scores in one order."""
    rows = [(float(scores_b[n, c]), int(c), int(n)) for _, c, n in selected_b]
    return sorted(rows, key=lambda r: (-r[0], r[1], r[2]))


def _ours(dets, b, scores_b, boxes_b):
    n = int(dets["num_detections"][b, 0])
    rows = []
    for box, cls, score in zip(dets["detection_boxes"][b, :n], dets["detection_classes"][b, :n],
                               dets["detection_scores"][b, :n]):
        idx = np.flatnonzero((boxes_b == box).all(1) & (scores_b[:, cls] == score))
        assert len(idx) == 1, (box, cls, score)
        rows.append((float(score), int(cls), int(idx[0])))
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_nms_equals_onnx_box_for_box(seed):
    boxes, scores = clusters(seed)
    for b in range(len(boxes)):  # the construction's premises: no tie with either threshold
        assert np.abs(scores[b] - SCORE).min() > 1e-6
        ious = _ious(boxes[b])
        assert np.abs(ious - IOU).min() > 1e-5
    selected = onnx_nms(boxes, scores, IOU, SCORE)
    dets = efficient_nms(boxes, scores, score_threshold=SCORE, iou_threshold=IOU, max_output_boxes=300)
    suppressed = 0
    for b in range(len(boxes)):
        want = _rows(selected[selected[:, 0] == b][:, :], scores[b])
        got = _ours(dets, b, scores[b], boxes[b])
        assert [r[1:] for r in sorted(got, key=lambda r: (-r[0], r[1], r[2]))] == [r[1:] for r in want], b
        assert [r[0] for r in got] == sorted((r[0] for r in got), reverse=True)  # best first
        candidates = int((scores[b] >= SCORE).sum())
        suppressed += candidates - len(want)
        assert {r[1] for r in want} == {0, 1, 2}  # several classes survive
        assert any(r[0] == np.float32(0.777) for r in want)  # the equal-score pair is compared too
    assert suppressed >= 30 * len(boxes)  # NMS had work to do: most of each cluster went


def test_top_k_keeps_onnxs_best_k():
    boxes, scores = clusters(5)
    scores[:, -2:, :] = 0.0  # no equal scores where k cuts
    selected = onnx_nms(boxes, scores, IOU, SCORE)
    k = 7
    dets = efficient_nms(boxes, scores, score_threshold=SCORE, iou_threshold=IOU, max_output_boxes=k)
    for b in range(len(boxes)):
        want = _rows(selected[selected[:, 0] == b], scores[b])[:k]
        assert _ours(dets, b, scores[b], boxes[b]) == want


def test_class_agnostic_equals_onnx_on_box_class_pairs():
    """Class-agnostic: every (box, class) pair is one candidate; ONNX on the pairs as one class."""
    boxes, scores = clusters(3)
    batch, n, classes = scores.shape
    pair_boxes = np.repeat(boxes, classes, axis=1)  # pair i = box i // C, class i % C
    pair_scores = scores.reshape(batch, n * classes, 1)
    selected = onnx_nms(pair_boxes, pair_scores, IOU, SCORE)
    dets = efficient_nms(boxes, scores, score_threshold=SCORE, iou_threshold=IOU, max_output_boxes=300,
                         class_agnostic=True)
    for b in range(batch):
        want = sorted(((float(pair_scores[b, i, 0]), int(i % classes), int(i // classes))
                       for _, _, i in selected[selected[:, 0] == b]), key=lambda r: (-r[0], r[1], r[2]))
        got = sorted(_ours(dets, b, scores[b], boxes[b]), key=lambda r: (-r[0], r[1], r[2]))
        assert got == want and len(want) < int((scores[b] >= SCORE).sum()) // 2


def test_an_exact_iou_tie_follows_the_plugin_not_onnx():
    """Grid-aligned boxes with IoU exactly 0.5: the plugin suppresses (>=), ONNX keeps both (>)."""
    boxes = np.array([[[0, 0, 3, 1], [1, 0, 4, 1], [6, 6, 7, 7]]], np.float32) / 8  # IoU(0, 1) = 2/4
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    assert _ious(boxes[0])[0, 1] == 0.5
    ours = efficient_nms(boxes, scores, score_threshold=0.1, iou_threshold=0.5, max_output_boxes=10)
    assert ours["num_detections"][0, 0] == 2  # box 1 suppressed at IoU == threshold
    np.testing.assert_array_equal(ours["detection_boxes"][0, :2], boxes[0, [0, 2]])
    assert sorted(onnx_nms(boxes, scores, 0.5, 0.1)[:, 2].tolist()) == [0, 1, 2]  # ONNX's documented rule
    above = efficient_nms(boxes, scores, score_threshold=0.1, iou_threshold=0.5001, max_output_boxes=10)
    assert above["num_detections"][0, 0] == 3  # just above the tie, both keep it
