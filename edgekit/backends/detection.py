"""A detection bundle's runner: the EfficientNMS_TRT plugin's four outputs on every backend.

On TensorRT the engine's NMS (EfficientNMS_TRT or ONNX NonMaxSuppression, at the threshold the builder
wrote: the loop's, at least 0.01, or validate's eval threshold) computes them; on ONNX Runtime
:func:`edgekit.nms.efficient_nms` does, from the pre-plugin graph's ``boxes`` and ``scores``, with the
manifest's ``nms`` parameters and the pre-NMS top-k of the plugin on this machine's GPU (5000; 2000 on
TX1/TX2/Nano; 5000 without a GPU). Both are then held to ``score_threshold`` (the
manifest's run threshold unless given), so the backends return the same detections. A detector whose
TensorFlow NMS clipped its output boxes to [0, 1] (``nms_cut.clip_boxes``) gets them clipped after the NMS.
"""

from __future__ import annotations

import logging

import numpy as np

from edgekit.backends.base import Runner, TensorSpec
from edgekit.backends.tensorrt import probe
from edgekit.backends.tensorrt.gpus import plugin_top_k
from edgekit.errors import ModelError
from edgekit.nms import OUTPUTS, NmsParams, efficient_nms, filter_detections

log = logging.getLogger(__name__)


class DetectionRunner(Runner):
    """Wraps the runner of a detection model: one ending in the plugin (its four outputs) or the
    pre-plugin graph (``boxes``, ``scores``); which, it learns from the model's outputs on activation."""

    def __init__(self, inner: Runner, params: NmsParams, score_threshold: float | None = None,
                 engine_threshold: float | None = None, clip_boxes: bool = False):
        super().__init__()
        self.clip_boxes = clip_boxes
        self.inner = inner
        self.name = inner.name
        self.params = params
        self.score_threshold = params.score_threshold if score_threshold is None else float(score_threshold)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ModelError(f"score threshold must be within [0, 1], got {self.score_threshold:g}")
        # the NMS threshold in a TensorRT engine (the builder writes it; None: the model file's, the eval one)
        self.engine_threshold = params.eval_score_threshold if engine_threshold is None else float(engine_threshold)
        self.pre_nms_top_k = plugin_top_k((probe.gpu_info(0) or {}).get("compute_capability"))
        self.nms_in_graph = None

    def activate_impl(self) -> None:
        self.inner.activate()
        names = {s.name for s in self.inner.output_specs}
        if set(OUTPUTS) <= names:
            self.nms_in_graph = True
            if self.score_threshold < self.engine_threshold:
                log.warning("score threshold %g is below the %g the engine's NMS runs at (at least 0.01 outside "
                            "evaluation: lower is TensorRT's slow path): detections below %g are not reported",
                            self.score_threshold, self.engine_threshold, self.engine_threshold)
        elif {"boxes", "scores"} <= names:
            self.nms_in_graph = False
        else:
            self.inner.deactivate()
            raise ModelError(f"detection model has outputs {', '.join(sorted(names))}: neither the NMS plugin's "
                             f"({', '.join(OUTPUTS)}) nor boxes and scores")

    def deactivate_impl(self) -> None:
        self.inner.deactivate()

    @property
    def input_spec(self) -> TensorSpec:
        return self.inner.input_spec

    @property
    def output_specs(self) -> list[TensorSpec]:
        b, k = self.inner.input_spec.shape[0], self.params.max_detections
        return [TensorSpec(OUTPUTS[0], (b, 1), np.dtype(np.int32)),
                TensorSpec(OUTPUTS[1], (b, k, 4), np.dtype(np.float32)),
                TensorSpec(OUTPUTS[2], (b, k), np.dtype(np.float32)),
                TensorSpec(OUTPUTS[3], (b, k), np.dtype(np.int32))]

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.inner.infer(batch)
        if self.nms_in_graph:
            dets = {k: np.asarray(out[k]) for k in OUTPUTS}
            dets["num_detections"] = dets["num_detections"].astype(np.int32).reshape(-1, 1)
            dets["detection_classes"] = dets["detection_classes"].astype(np.int32)
            dets = filter_detections(dets, self.score_threshold)
        else:
            dets = self.nms(out)
        if self.clip_boxes:
            np.clip(dets["detection_boxes"], 0.0, 1.0, out=dets["detection_boxes"])
        return dets

    def nms(self, out: dict) -> dict[str, np.ndarray]:
        """The plugin's outputs from the pre-plugin graph's ``boxes`` and ``scores`` (edgekit's NMS)."""
        p = self.params
        return efficient_nms(out["boxes"], out["scores"], score_threshold=self.score_threshold,
                             iou_threshold=p.iou_threshold, max_output_boxes=p.max_detections,
                             class_agnostic=p.class_agnostic, pre_nms_top_k=self.pre_nms_top_k)
