"""The detection gate's bootstrap interval: its mAP@0.5 agrees with pycocotools, and the interval of
a drop covers the measured drop, narrowing as images are added."""

from __future__ import annotations

import numpy as np
import pytest

SIZE = (100, 100)


def _scenes(n, rng, jitter):
    """``n`` images of 1-4 boxes of 3 classes; detections: each truth box moved by ``jitter`` px plus a
    false alarm, scores higher for the closer boxes."""
    truth, boxes, scores, classes, counts = [], np.zeros((n, 8, 4)), np.zeros((n, 8)), np.zeros((n, 8), int), []
    for i in range(n):
        k = int(rng.integers(1, 5))
        xy = rng.uniform(0, 70, (k, 2))
        wh = rng.uniform(10, 30, (k, 2))
        c = rng.integers(0, 3, k)
        truth.append(np.concatenate([c[:, None], xy, xy + wh], 1))
        moved = np.concatenate([xy, xy + wh], 1) + rng.normal(0, jitter, (k, 4))
        moved = np.concatenate([np.minimum(moved[:, :2], moved[:, 2:]), np.maximum(moved[:, :2], moved[:, 2:])], 1)
        corner = rng.uniform(0, 70, 2)
        fake = np.concatenate([corner, corner + rng.uniform(10, 30, 2)])[None]
        det = np.concatenate([moved, fake]) / 100.0
        boxes[i, : k + 1] = det
        scores[i, : k + 1] = np.concatenate([rng.uniform(0.5, 1.0, k), rng.uniform(0.0, 0.7, 1)])
        classes[i, : k + 1] = np.concatenate([c, rng.integers(0, 3, 1)])
        counts.append(k + 1)
    dets = {"num_detections": np.array(counts)[:, None], "detection_boxes": boxes.astype(np.float32),
            "detection_scores": scores.astype(np.float32), "detection_classes": classes.astype(np.int32)}
    return truth, dets


def test_map50_agrees_with_pycocotools():
    pytest.importorskip("pycocotools")
    from edgekit.quant.det_bootstrap import map50, matches
    from edgekit.quant.detection_gate import coco_map

    for seed, jitter in ((0, 2.0), (1, 5.0)):
        truth, dets = _scenes(40, np.random.default_rng(seed), jitter)
        ours = map50(matches(truth, dets, SIZE), np.arange(40), 3)
        assert ours == pytest.approx(coco_map(truth, dets, 3, SIZE)[1], abs=0.05)


def test_interval_covers_the_drop_and_narrows_with_more_images():
    from edgekit.quant.det_bootstrap import drop_interval, map50, matches

    widths = []
    for n in (30, 240):
        rng = np.random.default_rng(n)
        truth, good = _scenes(n, rng, 1.0)
        bad = {k: v.copy() for k, v in good.items()}
        bad["detection_boxes"] += np.random.default_rng(7).normal(0, 0.03, bad["detection_boxes"].shape)
        ref, model = matches(truth, good, SIZE), matches(truth, bad, SIZE)
        drop = map50(ref, np.arange(n), 3) - map50(model, np.arange(n), 3)
        low, high = drop_interval(ref, model, 3, resamples=100)
        assert drop > 0 and low <= drop <= high
        widths.append(high - low)
        assert drop_interval(ref, ref, 3, resamples=20) == (0.0, 0.0)
    assert widths[1] < widths[0] * 0.7


def test_unlabelled_interval_is_of_the_agreement_shortfall():
    """Without labels the reference is FP32's own detections (100 by definition)."""
    from edgekit.quant.det_bootstrap import drop_interval, map50, matches

    truth, dets = _scenes(30, np.random.default_rng(3), 2.0)
    model = matches(truth, dets, SIZE)
    low, high = drop_interval(None, model, 3, resamples=50)
    assert 0 < low <= 100 - map50(model, np.arange(30), 3) <= high
