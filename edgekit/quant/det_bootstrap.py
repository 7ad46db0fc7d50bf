"""A bootstrap confidence interval of a detector's mAP@0.5 drop, for a gate verdict that does not flip
with the sample of images.

Matching a detection to the truth depends on its own image only, so each image is matched once
(COCO's rule: by descending score, to the unmatched box of its class it overlaps most, at IoU >= 0.5)
and a resample of images is a concatenation of their matches. AP per class is COCO's 101-point
interpolated precision; mAP averages the classes with truth in the resample. Both models are scored
on the same resamples (a paired bootstrap), so the interval is of their difference.
"""

from __future__ import annotations

import numpy as np

IOU = 0.5
RECALLS = np.linspace(0, 1, 101)


def matches(truth: list[np.ndarray], dets: dict, size: tuple[int, int]) -> list[tuple]:
    """Per image: (scores, classes, true-positive flags) of its detections and its truth classes.

    ``truth``: rows (class, x1, y1, x2, y2) in model-input pixels; ``dets``: NMS outputs, boxes normalised.
    """
    h, w = size
    out = []
    for i, rows in enumerate(truth):
        rows = np.asarray(rows, np.float64).reshape(-1, 5)
        n = int(dets["num_detections"][i, 0])
        scores = dets["detection_scores"][i, :n].astype(np.float64)
        classes = dets["detection_classes"][i, :n].astype(np.int64)
        boxes = dets["detection_boxes"][i, :n].astype(np.float64) * [w, h, w, h]
        tp = np.zeros(n, bool)
        used = np.zeros(len(rows), bool)
        for d in np.argsort(-scores, kind="stable"):
            same = (rows[:, 0] == classes[d]) & ~used
            if not same.any():
                continue
            iou = _iou(boxes[d], rows[:, 1:])
            iou[~same] = -1
            j = int(np.argmax(iou))
            if iou[j] >= IOU:
                used[j] = tp[d] = True
        out.append((scores, classes, tp, rows[:, 0].astype(np.int64)))
    return out


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def map50(per_image: list[tuple], images: np.ndarray, num_classes: int) -> float:
    """mAP@0.5 in percent over ``images`` (indices into ``per_image``, repeats allowed)."""
    scores = np.concatenate([per_image[i][0] for i in images])
    classes = np.concatenate([per_image[i][1] for i in images])
    tp = np.concatenate([per_image[i][2] for i in images])
    truth = np.bincount(np.concatenate([per_image[i][3] for i in images]), minlength=num_classes)
    aps = []
    for c in np.flatnonzero(truth):
        mine = classes == c
        order = np.argsort(-scores[mine], kind="stable")
        hits = tp[mine][order]
        if not len(hits):
            aps.append(0.0)
            continue
        cum = np.cumsum(hits)
        recall = cum / truth[c]
        precision = np.maximum.accumulate((cum / np.arange(1, len(hits) + 1))[::-1])[::-1]
        at = np.searchsorted(recall, RECALLS, side="left")
        aps.append(float(np.where(at < len(hits), precision[np.minimum(at, len(hits) - 1)], 0.0).mean()))
    return 100.0 * float(np.mean(aps)) if aps else 0.0


def drop_interval(reference: list[tuple] | None, model: list[tuple], num_classes: int, resamples: int = 200,
                  level: float = 0.9, seed: int = 0) -> tuple[float, float]:
    """The ``level`` bootstrap interval (percentile) of ``map50(reference) - map50(model)``, in points
    (``reference`` None: 100, the score of FP32 against its own detections)."""
    rng = np.random.default_rng(seed)
    n = len(model)
    drops = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        ref = 100.0 if reference is None else map50(reference, idx, num_classes)
        drops.append(ref - map50(model, idx, num_classes))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(drops, [tail, 100 - tail])
    return float(low), float(high)
