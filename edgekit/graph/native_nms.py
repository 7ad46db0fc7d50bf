"""Native NMS for TensorRT >= 10.12: ONNX ``NonMaxSuppression`` (TensorRT's INMSLayer) appended to a
pre-NMS detection graph, with the same four fixed-size outputs as EfficientNMS_TRT.

EfficientNMS_TRT is deprecated from TensorRT 10.12 (its header names INMSLayer as the replacement) and
TensorRT 11 drops the older NMS plugins; INMSLayer is what onnx-tensorrt imports for ``NonMaxSuppression``
(TensorRT 8.5+). Its output is data-dependent (``selected [K, 3]``: batch, class, box), so after it:
a 0/1 mask of the selected (class, box) pairs is scattered over the scores, the masked scores of each
image (padded with ``max_detections`` dropped entries) are ranked by one TopK (the plugin's order: best
score first), and boxes and classes are gathered for the winners; rows past ``num_detections`` are
zero, as the plugin pads. Class-agnostic NMS runs on
each box's best class (suppressing across classes keeps at most one class per box anyway).

Semantics against :func:`edgekit.nms.efficient_nms`: ONNX Runtime keeps scores above the threshold and
suppresses at IoU above it (the plugin: at or above), and has no pre-NMS top-k (TensorRT's INMSLayer
has one, ``topk_box_limit``, left at TensorRT's default); on real scores the detections are the same
(tests/test_native_nms.py holds ONNX Runtime to it on the sample images).
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import UsageError
from edgekit.nms import NATIVE_SCORE_THRESHOLD, OUTPUTS, NmsParams

MIN_OPSET = 13  # Unsqueeze/ReduceSum take their axes as inputs from 13 on
TOPK_MAX_K = 3840  # onnx-tensorrt: TopK's K must stay below it


def append_native_nms(graph, boxes, scores, params: NmsParams):
    """Append NonMaxSuppression and the fixed-size outputs to ``graph`` (a gs.Graph), in place, after its
    tensors ``boxes`` [B, N, 4] (corners) and ``scores`` [B, N, C]."""
    import onnx_graphsurgeon as gs

    opset = _opset(graph)
    if opset < MIN_OPSET:
        raise UsageError(f"native NMS needs opset {MIN_OPSET}+, the model has {opset}: export with --opset 13 or higher")
    k = int(params.max_detections)
    if k >= TOPK_MAX_K:
        raise UsageError(f"native NMS keeps fewer than {TOPK_MAX_K} detections (TensorRT's TopK); got --max-detections {k}")
    batch = graph.inputs[0].shape[0] if graph.inputs[0].shape else "batch"
    g = _Builder(graph, gs)

    if params.class_agnostic:  # each box's best class, as one class for NMS
        best, best_class = g.op("TopK", [scores, g.const("top1", np.array([1], np.int64))], 2, axis=2)
        per_class = g.op("Transpose", [best], perm=[0, 2, 1])  # [B, 1, N]
        box_class = g.op("Reshape", [best_class, g.const("bn", np.array([0, -1], np.int64))])  # [B, N]
    else:
        per_class = g.op("Transpose", [scores], perm=[0, 2, 1])  # [B, C, N]
    threshold = gs.Constant(NATIVE_SCORE_THRESHOLD, np.array([params.eval_score_threshold], np.float32))
    selected = g.op("NonMaxSuppression", [boxes, per_class, g.const("per_class", np.array([k], np.int64)),
                                          g.const("iou", np.array([params.iou_threshold], np.float32)), threshold],
                    center_point_box=0)
    # a 0/1 mask of the kept (class, box) pairs; scores of the others become -1 (scores are probabilities)
    zeros = g.op("ConstantOfShape", [g.op("Shape", [per_class])], value=np.array([0.0], np.float32))
    count = g.op("Slice", [g.op("Shape", [selected]), g.const("s0", np.array([0], np.int64)),
                           g.const("s1", np.array([1], np.int64))])
    ones = g.op("ConstantOfShape", [count], value=np.array([1.0], np.float32))
    mask = g.op("ScatterND", [zeros, selected, ones])
    dropped = g.op("Sub", [g.const("one", np.array(1.0, np.float32)), mask])
    masked = g.op("Sub", [g.op("Mul", [per_class, mask]), dropped])
    flat = g.op("Reshape", [masked, g.const("flat", np.array([0, -1], np.int64))])  # [B, C*N]
    # k more dropped entries, so TopK(k) fits however few (class, box) pairs there are
    flat = g.op("Pad", [flat, g.const("pad", np.array([0, 0, 0, k], np.int64)), g.const("minus1", np.array(-1.0, np.float32))])
    values, index = g.op("TopK", [flat, g.const("k", np.array([k], np.int64))], 2, axis=1)
    valid = g.op("Greater", [values, g.const("half", np.array(-0.5, np.float32))])
    valid_f = g.op("Cast", [valid], to=np.float32)
    valid_i = g.op("Cast", [valid], to=np.int64)
    num = g.op("ReduceSum", [g.op("Cast", [valid], to=np.int32), g.const("ax1", np.array([1], np.int64))], keepdims=1)
    size = g.op("Gather", [g.op("Shape", [scores]), g.const("axis1", np.array(1, np.int64))])  # N, a scalar
    cls = g.op("Div", [index, size])  # a padding entry decodes to a class past the last: its row is dropped
    box = g.op("Sub", [index, g.op("Mul", [cls, size])])
    if params.class_agnostic:
        cls = g.op("GatherElements", [box_class, box], axis=1)
    picked = g.op("GatherND", [boxes, g.op("Unsqueeze", [box, g.const("ax2", np.array([2], np.int64))])], batch_dims=1)
    out_boxes = g.op("Mul", [picked, g.op("Unsqueeze", [valid_f, g.const("ax2b", np.array([2], np.int64))])])
    out_scores = g.op("Relu", [values])  # dropped rows (-1) become 0
    out_classes = g.op("Cast", [g.op("Mul", [cls, valid_i])], to=np.int32)
    final = [gs.Variable(OUTPUTS[0], np.int32, [batch, 1]), gs.Variable(OUTPUTS[1], np.float32, [batch, k, 4]),
             gs.Variable(OUTPUTS[2], np.float32, [batch, k]), gs.Variable(OUTPUTS[3], np.int32, [batch, k])]
    for src, dst in zip((num, out_boxes, out_scores, out_classes), final):
        graph.layer(op="Identity", name=f"native_nms_{dst.name}", inputs=[src], outputs=[dst])
    graph.outputs = final
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


class _Builder:
    """Names the nodes and constants of the appended graph ``native_nms_*``."""

    def __init__(self, graph, gs):
        self.graph, self.gs, self.count = graph, gs, 0

    def const(self, name: str, value: np.ndarray):
        return self.gs.Constant(f"native_nms_{name}", value)

    def op(self, op: str, inputs: list, outputs: int = 1, **attrs):
        self.count += 1
        name = f"native_nms_{op.lower()}_{self.count}"
        outs = [self.gs.Variable(f"{name}_out{i}") for i in range(outputs)]
        if op == "Cast":
            attrs["to"] = _onnx_type(attrs["to"])
        elif op == "ConstantOfShape":
            attrs["value"] = self.gs.Constant(f"{name}_value", attrs["value"])
        self.graph.layer(op=op, name=name, inputs=inputs, outputs=outs, attrs=attrs)
        return outs[0] if outputs == 1 else outs


def _onnx_type(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _opset(graph) -> int:
    return int(getattr(graph, "opset", None) or 0) or 17
