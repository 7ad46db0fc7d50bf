"""Task-aligned assignment and IoU-aware losses for the pyramid detectors (TensorFlow, training only).

The designs are the published ones, written here from the papers:

* task-aligned assignment (TOOD, Feng et al. 2021): for each ground-truth box, the cells whose
  centres lie inside it (the nearest cell for a box smaller than every cell) are candidates; the
  ``topk`` candidates with the highest ``score**alpha * IoU**beta`` of the current prediction become
  positives; a cell claimed by several boxes keeps the one it overlaps most;
* the class target at a positive is IoU-aware: the alignment normalised per box to the best IoU
  reached on that box, raised to ``quality_power``, so a score says how good the box is; the loss is
  varifocal (Zhang et al. 2021, VarifocalNet: ``BCE(p, t)`` weighted by ``t`` at positives and
  ``alpha * p**gamma`` elsewhere) or quality focal (Li et al. 2020, Generalized Focal Loss: weighted
  by ``|t - p|**gamma``), over every cell and class, except that the other classes at a positive cell
  take plain cross-entropy (weight 1: a wrong class on an object is never an easy negative, and short
  training otherwise leaves several classes above the run threshold on one object);
* the box loss is ``1 - CIoU`` (Zheng et al. 2020) at positives, weighted by their class target.

Ground truth comes padded: boxes ``[B, M, 4]`` normalised corners, classes ``[B, M]`` with -1 for padding.
"""

from __future__ import annotations

from dataclasses import dataclass

EPS = 1e-7


@dataclass(frozen=True)
class LossConfig:
    """Weights and assignment parameters; the defaults are what training uses."""

    topk: int = 10
    alpha: float = 1.0  # score exponent of the alignment metric
    beta: float = 6.0  # IoU exponent
    classification: str = "varifocal"  # or "quality_focal"
    # VarifocalNet's gamma 2 and negative weight 0.75 leave more wrong-class and background boxes above the
    # run threshold after 30 epochs: 1 and 2 took the sample set from P/R 0.87/0.87 to 0.91/0.89 (seed 0)
    # and 0.87/0.89 to 0.92/0.90 (seed 1) at 0.25 (benchmarks/bench_detector.py's set)
    gamma: float = 1.0  # focal modulation
    negative_weight: float = 2.0  # varifocal: alpha of the negatives' p**gamma weight
    box_weight: float = 2.5
    cls_weight: float = 1.0
    # the IoU-aware class target raised to 0.65 lifts the scores of found objects above the run threshold: with
    # the last epochs unaugmented (train_detect.PLAIN_DIVISOR), the sample set at 160 px went from mAP 71.1 and
    # P/R 0.922/0.913 at 0.25 to 74.5 and 0.924/0.945 (seed 0; 0.5: 73.3, 0.907/0.948; bench_detector.py's set)
    quality_power: float = 0.65


def pairwise_iou(a, b):
    """IoU of corner boxes broadcast over their leading axes (``[..., 4]`` each)."""
    import tensorflow as tf

    lt = tf.maximum(a[..., :2], b[..., :2])
    rb = tf.minimum(a[..., 2:], b[..., 2:])
    wh = tf.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area = lambda x: tf.maximum(x[..., 2] - x[..., 0], 0.0) * tf.maximum(x[..., 3] - x[..., 1], 0.0)  # noqa: E731
    return inter / (area(a) + area(b) - inter + EPS)


def ciou(a, b):
    """Complete IoU of corner boxes ``[..., 4]``: IoU minus the normalised centre distance and an aspect term."""
    import math

    import tensorflow as tf

    iou = pairwise_iou(a, b)
    hull = tf.maximum(a[..., 2:], b[..., 2:]) - tf.minimum(a[..., :2], b[..., :2])
    c2 = tf.reduce_sum(hull**2, -1) + EPS
    rho2 = tf.reduce_sum(((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])) ** 2, -1) / 4
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1] + EPS
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1] + EPS
    v = (4 / math.pi**2) * (tf.atan(wa / ha) - tf.atan(wb / hb)) ** 2
    weight = tf.stop_gradient(v / (1 - iou + v + EPS))
    return iou - rho2 / c2 - weight * v


def assign(scores, boxes, gt_boxes, gt_classes, centers, config: LossConfig = LossConfig()):
    """Task-aligned targets of a batch.

    ``scores`` ``[B, N, C]`` probabilities and ``boxes`` ``[B, N, 4]`` are the current predictions;
    ``centers`` ``[N, 2]`` the cell centres (x, y). Returns ``(target_boxes [B, N, 4], target_scores
    [B, N, C], positive [B, N] bool)``, all without gradient.
    """
    import tensorflow as tf

    scores, boxes = tf.stop_gradient(scores), tf.stop_gradient(boxes)
    n_cells, n_classes = tf.shape(scores)[1], tf.shape(scores)[2]
    valid = gt_classes >= 0  # [B, M]
    cls = tf.maximum(gt_classes, 0)
    iou = pairwise_iou(gt_boxes[:, :, None, :], boxes[:, None, :, :])  # [B, M, N]
    cls_score = tf.gather(tf.transpose(scores, [0, 2, 1]), cls, batch_dims=1)  # [B, M, N]
    align = cls_score**config.alpha * iou**config.beta
    cx, cy = centers[None, None, :, 0], centers[None, None, :, 1]
    x1, y1, x2, y2 = (gt_boxes[..., i : i + 1] for i in range(4))
    inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)
    dist = (cx - (x1 + x2) / 2) ** 2 + (cy - (y1 + y2) / 2) ** 2
    nearest = tf.one_hot(tf.argmin(dist, axis=-1), n_cells, on_value=True, off_value=False)
    candidate = (inside | nearest) & valid[..., None]
    metric = tf.where(candidate, align + EPS, 0.0)  # a candidate always outranks a non-candidate
    k = tf.minimum(config.topk, n_cells)
    kth = tf.math.top_k(metric, k).values[..., -1:]
    positive = candidate & (metric >= kth)
    # a cell claimed by several boxes keeps the one its prediction overlaps most
    claims = tf.reduce_sum(tf.cast(positive, tf.int32), axis=1, keepdims=True)  # [B, 1, N]
    best = tf.one_hot(tf.argmax(tf.where(positive, iou, -1.0), axis=1), tf.shape(gt_boxes)[1], axis=1,
                      on_value=True, off_value=False)
    positive = tf.where(claims > 1, positive & best, positive)
    fg = tf.reduce_any(positive, axis=1)  # [B, N]
    owner = tf.argmax(tf.cast(positive, tf.int32), axis=1)  # [B, N]
    target_boxes = tf.gather(gt_boxes, owner, batch_dims=1)
    target_cls = tf.gather(cls, owner, batch_dims=1)
    pos_f = tf.cast(positive, scores.dtype)
    aligned = align * pos_f
    quality = aligned / (tf.reduce_max(aligned, -1, keepdims=True) + EPS) * tf.reduce_max(iou * pos_f, -1, keepdims=True)
    quality = tf.reduce_max(quality, axis=1) ** config.quality_power * tf.cast(fg, scores.dtype)  # [B, N]
    target_scores = tf.one_hot(target_cls, n_classes, dtype=scores.dtype) * quality[..., None]
    return tf.stop_gradient(target_boxes), tf.stop_gradient(target_scores), fg


def detection_loss(logits, boxes, gt_boxes, gt_classes, centers, config: LossConfig = LossConfig()):
    """``(total, {"cls": ..., "box": ...})`` for a batch: quality focal loss on every cell and class,
    ``1 - CIoU`` at positives, both summed and divided by the sum of class targets (at least 1)."""
    import tensorflow as tf

    scores = tf.sigmoid(logits)
    target_boxes, target_scores, fg = assign(scores, boxes, gt_boxes, gt_classes, centers, config)
    norm = tf.maximum(tf.reduce_sum(target_scores), 1.0)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target_scores, logits=logits)
    if config.classification == "varifocal":
        positive = tf.cast(target_scores > 0, logits.dtype)
        modulation = positive * target_scores + (1 - positive) * config.negative_weight * scores**config.gamma
    else:
        modulation = tf.abs(target_scores - scores) ** config.gamma
    # at an object's cells a wrong class is never an easy negative: plain cross-entropy pushes it down
    wrong_class = tf.cast(fg, logits.dtype)[..., None] * tf.cast(target_scores <= 0, logits.dtype)
    modulation = wrong_class + (1 - wrong_class) * modulation
    cls_loss = tf.reduce_sum(bce * modulation) / norm
    weight = tf.reduce_sum(target_scores, -1) * tf.cast(fg, logits.dtype)
    box_loss = tf.reduce_sum((1.0 - ciou(boxes, target_boxes)) * weight) / norm
    total = config.cls_weight * cls_loss + config.box_weight * box_loss
    return total, {"cls": cls_loss, "box": box_loss}
