"""Detection graph surgery with onnx-graphsurgeon.

``append_efficient_nms(graph, params)`` turns a pre-plugin graph (outputs ``boxes`` [B, N, 4] corners
and ``scores`` [B, N, C]) into the one TensorRT builds: ``EfficientNMS_TRT`` appended, with the
plugin's four outputs; ``append_nms`` appends that or, for TensorRT 10.12+ (or ``--nms native``),
ONNX NonMaxSuppression with the same outputs (:mod:`edgekit.graph.native_nms`). ``cut_tf_nms(graph)`` finds the ONNX ``NonMaxSuppression`` tf2onnx made of a
TensorFlow NMS (``combined_non_max_suppression``, ``non_max_suppression_v4/v5``, padded variants),
cuts the graph at its boxes/scores inputs, reorders TensorFlow's ``[y1, x1, y2, x2]`` to corners
``[x1, y1, x2, y2]`` and makes them the graph's ``boxes``/``scores``; it reports what it removed, or
raises ModelError naming the nodes that stop the cut. The clipping of the NMS's output boxes to
[0, 1] (``combined_non_max_suppression``'s ``clip_boxes``, a Max 0 / Min 1 after the NMS) is recorded
in the Cut and redone after the NMS by the detection runner on every backend; TensorFlow's per-class
output limit (``max_output_size_per_class`` below ``max_total_size``) has no equal in EfficientNMS_TRT,
ONNX NMS as TensorRT runs it, or edgekit's NMS: the Cut records it as ``per_class_cap`` and export names
it; detections equal TensorFlow's while no class reaches it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import ModelError, UsageError
from edgekit.nms import OUTPUTS, NmsParams

PLUGIN = "EfficientNMS_TRT"
BOXES, SCORES = "boxes", "scores"


def _gs():
    import onnx_graphsurgeon as gs

    return gs


def append_efficient_nms(graph, params: NmsParams, trt_major_minor: tuple[int, int] = (10, 0)):
    """Append EfficientNMS_TRT to ``graph`` (a gs.Graph whose outputs are ``boxes`` and ``scores``), in place.

    The plugin runs at the *eval* score threshold: the runner filters its output to the run threshold
    (see :func:`edgekit.nms.filter_detections`). ``class_agnostic`` exists from TensorRT 8.6 on.
    """
    gs = _gs()
    outs = _detection_outputs(graph)
    attrs = {
        "plugin_version": "1",
        "background_class": -1,
        "max_output_boxes": int(params.max_detections),
        "score_threshold": float(params.eval_score_threshold),
        "iou_threshold": float(params.iou_threshold),
        "score_activation": 0,
        "box_coding": 0,
    }
    if params.class_agnostic:
        if trt_major_minor < (8, 6):
            raise UsageError("class-agnostic NMS needs TensorRT 8.6+ (EfficientNMS_TRT's class_agnostic)")
        attrs["class_agnostic"] = 1
    batch = graph.inputs[0].shape[0] if graph.inputs[0].shape else "batch"
    k = int(params.max_detections)
    outputs = [
        gs.Variable(OUTPUTS[0], np.int32, [batch, 1]),
        gs.Variable(OUTPUTS[1], np.float32, [batch, k, 4]),
        gs.Variable(OUTPUTS[2], np.float32, [batch, k]),
        gs.Variable(OUTPUTS[3], np.int32, [batch, k]),
    ]
    graph.layer(op=PLUGIN, name="efficient_nms", inputs=[outs[BOXES], outs[SCORES]], outputs=outputs, attrs=attrs)
    graph.outputs = outputs
    return graph


@dataclass
class Cut:
    """What :func:`cut_tf_nms` did: the NMS node(s) found, the ops it removed, the NMS's own parameters."""

    nms_nodes: list[str]
    removed: Counter = field(default_factory=Counter)
    iou_threshold: float | None = None
    score_threshold: float | None = None
    max_detections: int | None = None
    clip_boxes: bool = False  # TensorFlow clipped the NMS's output boxes to [0, 1]
    per_class_cap: int | None = None  # TensorFlow's max_output_size_per_class, where below max_detections

    def summary(self) -> str:
        ops = ", ".join(f"{op} {n}" for op, n in self.removed.most_common())
        return f"cut TensorFlow NMS at {', '.join(self.nms_nodes)}: removed {sum(self.removed.values())} nodes ({ops})"

    def to_dict(self) -> dict:
        return {"nms_nodes": self.nms_nodes, "removed": dict(self.removed.most_common()),
                "iou_threshold": self.iou_threshold, "score_threshold": self.score_threshold,
                "max_detections": self.max_detections, "clip_boxes": self.clip_boxes,
                "per_class_cap": self.per_class_cap}

    def candidates(self, n: int) -> None:
        """The NMS reads ``n`` boxes: a per-class cap of ``n`` or more is never reached."""
        if self.per_class_cap is not None and self.per_class_cap >= n:
            self.per_class_cap = None

    def per_class_note(self) -> str:
        """What the per-class cap changes ("" when there is none)."""
        if self.per_class_cap is None:
            return ""
        return (f"TensorFlow's NMS keeps at most {self.per_class_cap} boxes per class (max_output_size_per_class) "
                f"of {self.max_detections}; edgekit's and TensorRT's NMS have no per-class cap, so detections "
                f"differ where a class has more")


def find_nms(graph) -> list:
    """The NonMaxSuppression nodes of ``graph``'s main graph; ModelError if one hides in a subgraph (a Loop/If body)."""
    nested = [n for n in graph.nodes for sub in _subgraphs(n) if any(m.op == "NonMaxSuppression" for m in sub.nodes)]
    if nested:
        raise ModelError(
            "cannot cut the NMS: NonMaxSuppression runs inside " + ", ".join(f"{n.op} {n.name}" for n in nested)
            + " (a per-image or per-class loop); export the model without NMS and let edgekit append it"
        )
    return [n for n in graph.nodes if n.op == "NonMaxSuppression"]


def cut_tf_nms(graph) -> Cut:
    """Replace everything from the graph's NonMaxSuppression on with outputs ``boxes``/``scores`` (in place)."""
    gs = _gs()
    nodes = find_nms(graph)
    if not nodes:
        raise ModelError("no NonMaxSuppression in the graph: nothing to cut")
    pairs = {(n.inputs[0].name, n.inputs[1].name) for n in nodes}
    if len(pairs) > 1:
        raise ModelError("cannot cut the NMS: " + ", ".join(n.name for n in nodes)
                         + " read different boxes/scores (several detection heads); export them before NMS")
    nms = nodes[0]
    center = nms.attrs.get("center_point_box", 0)
    if center:
        raise ModelError(f"cannot cut the NMS: {nms.name} uses center_point_box=1; edgekit reads corner boxes")
    boxes_in, scores_in = nms.inputs[0], nms.inputs[1]
    blockers = [n for n in _producers_upstream(boxes_in, scores_in) if n.op == "NonMaxSuppression" or _subgraphs(n)]
    if blockers:
        raise ModelError("cannot cut the NMS: its boxes/scores come through "
                         + ", ".join(f"{n.op} {n.name}" for n in blockers))
    before = Counter(n.op for n in graph.nodes)
    clip = _clips_to_unit(_consumers_downstream(*nms.outputs))
    cut = Cut([n.name for n in nodes], iou_threshold=_scalar(nms, 3), score_threshold=_scalar(nms, 4))
    per_class = _scalar(nms, 2)
    per_class = int(per_class) if per_class else None
    cut.max_detections = _max_total(graph) or per_class
    if per_class and cut.max_detections and per_class < cut.max_detections:
        cut.per_class_cap = per_class  # export drops it when no class can reach it (see Cut.candidates)
    cut.clip_boxes = clip

    # scores: ONNX NMS reads [B, C, N]; the contract wants [B, N, C].
    producer = scores_in.inputs[0] if scores_in.inputs else None
    if producer is not None and producer.op == "Transpose" and list(producer.attrs.get("perm", [])) == [0, 2, 1]:
        scores = producer.inputs[0]
    else:
        scores = gs.Variable("scores_bnc", np.float32)
        graph.layer(op="Transpose", name="nms_cut_scores", inputs=[scores_in], outputs=[scores], attrs={"perm": [0, 2, 1]})
    # boxes: ONNX (and TensorFlow) order [y1, x1, y2, x2] -> [x1, y1, x2, y2].
    boxes = gs.Variable("boxes_xyxy", np.float32)
    order = gs.Constant("nms_cut_xy_order", np.array([1, 0, 3, 2], np.int64))
    graph.layer(op="Gather", name="nms_cut_boxes", inputs=[boxes_in, order], outputs=[boxes], attrs={"axis": 2})
    out_boxes = gs.Variable(BOXES, np.float32)
    out_scores = gs.Variable(SCORES, np.float32)
    graph.layer(op="Identity", name="nms_cut_boxes_out", inputs=[boxes], outputs=[out_boxes])
    graph.layer(op="Identity", name="nms_cut_scores_out", inputs=[scores], outputs=[out_scores])
    graph.outputs = [out_boxes, out_scores]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    after = Counter(n.op for n in graph.nodes if not n.name.startswith("nms_cut_"))
    cut.removed = before - after
    return cut


def _subgraphs(node) -> list:
    gs = _gs()
    subs = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            subs.append(value)
        elif isinstance(value, (list, tuple)):
            subs.extend(v for v in value if isinstance(v, gs.Graph))
    return subs


def _producers_upstream(*tensors) -> list:
    seen, stack, nodes = set(), list(tensors), []
    while stack:
        t = stack.pop()
        for node in t.inputs:
            if id(node) not in seen:
                seen.add(id(node))
                nodes.append(node)
                stack.extend(node.inputs)
    return nodes


def _consumers_downstream(*tensors) -> list:
    seen, stack, nodes = set(), list(tensors), []
    while stack:
        for node in stack.pop().outputs:
            if id(node) not in seen:
                seen.add(id(node))
                nodes.append(node)
                stack.extend(node.outputs)
    return nodes


def _clips_to_unit(nodes) -> bool:
    """Whether ``nodes`` clip a tensor to [0, 1]: a Clip(0, 1), or a Max with 0 feeding a Min with 1."""
    for node in nodes:
        if node.op == "Clip" and [_scalar(node, 1), _scalar(node, 2)] == [0.0, 1.0]:
            return True
        if node.op == "Max" and 0.0 in (_scalar(node, 0), _scalar(node, 1)):
            if any(m.op == "Min" and 1.0 in (_scalar(m, 0), _scalar(m, 1)) for m in node.outputs[0].outputs):
                return True
    return False


def _scalar(node, index: int) -> float | None:
    gs = _gs()
    if index < len(node.inputs) and isinstance(node.inputs[index], gs.Constant):
        return float(np.asarray(node.inputs[index].values).reshape(-1)[0])
    return None


def _max_total(graph) -> int | None:
    """TensorFlow's ``max_total_size``: the fixed second dimension of a [B, K, 4] output, when there is one."""
    for t in graph.outputs:
        if t.shape and len(t.shape) == 3 and t.shape[2] == 4 and isinstance(t.shape[1], int):
            return t.shape[1]
    return None


PLUGIN_DEPRECATED = (10, 12)  # EfficientNMS_TRT deprecated from here (INMSLayer replaces it)


def nms_mode(params: NmsParams, trt_major_minor: tuple[int, int]) -> str:
    """How TensorRT does the NMS: ``params.tensorrt_nms`` when given, else ``native`` (ONNX
    NonMaxSuppression) where the target's TensorRT deprecates the plugin (10.12+), else ``plugin``."""
    if params.tensorrt_nms:
        return params.tensorrt_nms
    return "native" if trt_major_minor >= PLUGIN_DEPRECATED else "plugin"


def append_nms(graph, params: NmsParams, trt_major_minor: tuple[int, int]):
    """Append the NMS TensorRT runs (see :func:`nms_mode`) to ``graph``, in place."""
    if nms_mode(params, trt_major_minor) == "native":
        from edgekit.graph.native_nms import append_native_nms

        outs = _detection_outputs(graph)
        return append_native_nms(graph, outs[BOXES], outs[SCORES], params)
    return append_efficient_nms(graph, params, trt_major_minor)


def _detection_outputs(graph) -> dict:
    outs = {t.name: t for t in graph.outputs}
    if BOXES not in outs or SCORES not in outs:
        raise ModelError(f"a detection graph needs outputs {BOXES!r} and {SCORES!r}; it has {', '.join(outs)}")
    return outs


def attach_plugin_model(bundle, key: str) -> dict:
    """Write ``bundle``'s ``key`` model with its TensorRT NMS appended (what TensorRT builds) beside it.

    The file is ``<model stem>.trt.onnx``; the model entry gets ``tensorrt: {path, sha256}``. The NMS
    uses the manifest's ``nms`` and the target's TensorRT version: EfficientNMS_TRT, or ONNX
    NonMaxSuppression (:mod:`edgekit.graph.native_nms`) per :func:`nms_mode`, recorded as the manifest's
    ``nms.tensorrt_nms`` so every model of the bundle gets the same. Returns the entry.
    """
    import onnx

    from edgekit.atomic import atomic_path, sha256_file
    from edgekit.graph.support import trt_version
    from edgekit.graph.targets import get_target

    gs = _gs()
    src = bundle.model_path(key)
    target = get_target(bundle.manifest.get("target", {}).get("name") or "jetpack-6.1")
    graph = gs.import_onnx(onnx.load(str(src)))
    params = NmsParams.from_dict(bundle.manifest.get("nms") or {})
    version = trt_version(target)
    append_nms(graph, params, version)
    bundle.manifest.setdefault("nms", {})["tensorrt_nms"] = nms_mode(params, version)
    model = gs.export_onnx(graph)
    name = src.name[: -len(".onnx")] + ".trt.onnx" if src.name.endswith(".onnx") else src.name + ".trt.onnx"
    with atomic_path(src.with_name(name)) as tmp:
        onnx.save(model, str(tmp))
    entry = bundle.models[key]
    entry["tensorrt"] = {"path": name, "sha256": sha256_file(src.with_name(name))}
    return entry
