"""Non-maximum suppression in numpy with the outputs of TensorRT's ``EfficientNMS_TRT`` plugin.

ONNX Runtime runs a detection bundle's pre-plugin graph (``boxes`` [B, N, 4] corners, ``scores``
[B, N, C] probabilities); :func:`efficient_nms` turns them into what TensorRT's plugin returns, with
the plugin's semantics: (box, class) pairs scoring at least ``score_threshold`` are ranked by score
(the best ``pre_nms_top_k`` per image: the plugin keeps 5000 on Xavier, Orin and desktop GPUs, 2000 on
TX1/TX2/Nano, see :func:`edgekit.backends.tensorrt.gpus.plugin_top_k`), greedily suppressed per class
(or across classes) when their IoU with a kept box is at least ``iou_threshold`` (the plugin's ``>=``),
and the best ``max_output_boxes`` are
returned sorted by score, zero-padded. The greedy loop runs once per *kept* detection (at most
``max_output_boxes`` times), each step vectorised over every remaining candidate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgekit.backends.tensorrt.gpus import PLUGIN_TOP_K

OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
PLUGIN_MIN_SCORE = 0.01  # below it EfficientNMS_TRT takes its slow dense path; NVIDIA's samples clamp to it
NATIVE_SCORE_THRESHOLD = "edgekit_nms_score_threshold"  # the native NMS's score threshold initializer


def engine_score_threshold(asked: float, eval_score_threshold: float) -> float:
    """The NMS score threshold of the TensorRT engine serving a runner that reports from ``asked`` on.

    Evaluation (``asked`` at or below the bundle's eval threshold: validate, the gates) gets an engine at
    exactly ``asked``; every other use (the camera loop) one at ``asked`` but at least 0.01, the clamp
    NVIDIA's efficientdet sample applies: below ~0.007 the plugin copies and sorts every score per frame.
    """
    if asked <= eval_score_threshold:
        return float(asked)
    return max(PLUGIN_MIN_SCORE, float(asked))


@dataclass(frozen=True)
class NmsParams:
    """The NMS a detection bundle records (manifest ``nms``) and every backend applies."""

    score_threshold: float = 0.25  # for `run`
    eval_score_threshold: float = 0.001  # for mAP (validate, the quantize gate) and the TensorRT plugin
    iou_threshold: float = 0.5
    max_detections: int = 100
    class_agnostic: bool = False
    tensorrt_nms: str | None = None  # "plugin" (EfficientNMS_TRT) or "native" (NonMaxSuppression); None: by target

    def __post_init__(self):
        from edgekit.errors import UsageError

        if self.tensorrt_nms not in (None, "plugin", "native"):
            raise UsageError(f"--nms must be plugin or native, got {self.tensorrt_nms!r}")
        for name in ("score_threshold", "eval_score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"--{name.replace('_', '-')} must be within [0, 1], got {value:g}")
        if self.iou_threshold <= 0.0:  # EfficientNMS_TRT validates iouThreshold > 0: the build would fail
            raise UsageError("--iou-threshold must be above 0 (TensorRT's NMS plugin refuses 0), got 0")
        if self.eval_score_threshold > self.score_threshold:
            raise UsageError(f"--eval-score-threshold {self.eval_score_threshold:g} exceeds --score-threshold "
                             f"{self.score_threshold:g} (TensorRT's plugin runs at the eval threshold, run filters above it)")
        if not 1 <= self.max_detections <= PLUGIN_TOP_K:  # the plugin never has more candidates to return
            raise UsageError(f"--max-detections must be within 1-{PLUGIN_TOP_K} (the boxes TensorRT's NMS plugin "
                             f"keeps before NMS), got {self.max_detections}")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "NmsParams":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def efficient_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    class_agnostic: bool = False,
    pre_nms_top_k: int = PLUGIN_TOP_K,
) -> dict[str, np.ndarray]:
    """The plugin's four outputs for ``boxes`` [B, N, 4] (any corner order) and ``scores`` [B, N, C]."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"need boxes [B, N, 4] and scores [B, N, C]; got {boxes.shape} and {scores.shape}")
    batch = boxes.shape[0]
    k = int(max_output_boxes)
    out = {
        "num_detections": np.zeros((batch, 1), np.int32),
        "detection_boxes": np.zeros((batch, k, 4), np.float32),
        "detection_scores": np.zeros((batch, k), np.float32),
        "detection_classes": np.zeros((batch, k), np.int32),
    }
    corners = np.concatenate([np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], -1)
    for b in range(batch):
        keep_box, keep_cls, keep_score = _nms_image(corners[b], scores[b], score_threshold, iou_threshold, k,
                                                    class_agnostic, pre_nms_top_k)
        n = len(keep_box)
        out["num_detections"][b, 0] = n
        out["detection_boxes"][b, :n] = boxes[b, keep_box]
        out["detection_scores"][b, :n] = keep_score
        out["detection_classes"][b, :n] = keep_cls
    return out


def _nms_image(corners, scores, score_threshold, iou_threshold, k, class_agnostic, top_k):
    """Indices of kept boxes, their classes and scores for one image, best first."""
    box_idx, cls_idx = np.nonzero(scores >= score_threshold)
    cand = scores[box_idx, cls_idx]
    order = np.argsort(-cand, kind="stable")[:top_k]
    box_idx, cls_idx, cand = box_idx[order], cls_idx[order], cand[order]
    c = corners[box_idx]
    area = np.maximum(c[:, 2] - c[:, 0], 0) * np.maximum(c[:, 3] - c[:, 1], 0)
    alive = np.ones(len(cand), bool)
    kept = []
    while len(kept) < k:
        live = np.flatnonzero(alive)
        if not len(live):
            break
        i = live[0]
        kept.append(i)
        alive[i] = False
        rest = live[1:]
        lt = np.maximum(c[rest, :2], c[i, :2])
        rb = np.minimum(c[rest, 2:], c[i, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        union = area[rest] + area[i] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
        hit = iou >= iou_threshold  # the plugin suppresses at IoU >= threshold
        if not class_agnostic:
            hit &= cls_idx[rest] == cls_idx[i]
        alive[rest[hit]] = False
    kept = np.asarray(kept, dtype=np.int64)
    return box_idx[kept], cls_idx[kept], cand[kept]


def filter_detections(dets: dict[str, np.ndarray], score_threshold: float) -> dict[str, np.ndarray]:
    """Drop detections scoring below ``score_threshold`` from the plugin's outputs (rows stay sorted, padded).

    Low-scoring boxes never suppress higher-scoring ones, so NMS at a low threshold then this filter
    equals NMS at ``score_threshold``: one TensorRT engine serves both evaluation and deployment.
    """
    scores = dets["detection_scores"]
    rows = np.arange(scores.shape[1])[None, :]
    valid = (rows < dets["num_detections"]) & (scores >= score_threshold)
    out = {k: np.where(valid[..., None] if v.ndim == 3 else valid, v, 0).astype(v.dtype)
           for k, v in dets.items() if k != "num_detections"}
    out["num_detections"] = valid.sum(1, keepdims=True).astype(np.int32)
    return {k: out[k] for k in OUTPUTS}
