"""Can the target TensorRT run this ONNX graph? Every node against the target's operator table and
the parser's restrictions (constant axes/pads/starts, Resize modes, Q/DQ zero-point, TopK, dtypes, opset).

``check(model, target)`` returns a :class:`Report`; ``Report.raise_if_unsupported()`` turns errors into
one :class:`~edgekit.errors.UnsupportedOpError` line naming op types, nodes and a hint.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from edgekit.errors import UnsupportedOpError
from edgekit.graph.targets import Target, get_target

# Inputs that TensorRT needs as build-time constants: op -> input indices.
CONSTANT_INPUTS = {
    "Pad": (1,),
    "Slice": (1, 2, 3, 4),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "CumSum": (1,),
    "OneHot": (1,),
    "TopK": (1,),
    **{op: (1,) for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                           "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
}
TOPK_MAX_K = 3840
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")

HINTS = {
    "NonZero": "avoid data-dependent shapes (boolean masks, one-argument tf.where) or target TensorRT 8.5+",
    "NonMaxSuppression": "do NMS after the model or use the EfficientNMS_TRT plugin",
    "Unique": "compute it outside the model",
    "LayerNormalization": "needs TensorRT 8.6+ (JetPack 6.0+); or decompose it with ReduceMean/Sub/Mul",
    "Mod": "needs TensorRT 8.5+; or rewrite with Div/Floor/Sub",
    "OneHot": "needs TensorRT 8.5+; or compute it outside the model",
    "HardSwish": "needs TensorRT 8.5+ (opset 14+)",
    "Gelu": "needs TensorRT 10; or export the tanh/erf form",
}
# Plugins of TensorRT's plugin library that onnx-tensorrt's parser falls back to for an unknown op type:
# op type -> (first TensorRT release shipping it, {attribute: first release reading it}).
PLUGINS = {
    "EfficientNMS_TRT": ((8, 0), {"class_agnostic": (8, 6)}),
}
DEFAULT_HINT = "rewrite the model without it, target a newer TensorRT, or provide a TensorRT plugin"


@dataclass(frozen=True)
class Problem:
    """One thing the target's ONNX parser refuses (``error``) or runs differently (``warning``)."""

    op: str
    node: str
    message: str
    severity: str = "error"  # "error": the parser refuses it; "warning": it runs, changed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    """The problems of one graph on one target; ``verdict`` is ``unsupported`` when any is an error."""

    target: Target
    opset: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def verdict(self) -> str:
        return "unsupported" if self.errors else "ok"

    def to_dict(self) -> dict:
        return {
            "name": self.target.name,
            "tensorrt": self.target.tensorrt,
            "op_table": self.target.op_table,
            "verdict": self.verdict,
            "problems": [p.to_dict() for p in self.problems],
        }

    def summary(self) -> str:
        """One line: the failing op types with their nodes, and a hint."""
        by_op: dict[str, list[str]] = {}
        for p in self.errors:
            by_op.setdefault(p.op, []).append(p.node)
        parts = []
        for op, nodes in by_op.items():
            shown = ", ".join(nodes[:3]) + (f" +{len(nodes) - 3} more" if len(nodes) > 3 else "")
            reason = next(p.message for p in self.errors if p.op == op)
            parts.append(f"{op} ({shown}): {reason}")
        hint = next((HINTS[op] for op in by_op if op in HINTS), DEFAULT_HINT)
        return (
            f"{self.target.name} (TensorRT {self.target.tensorrt}) cannot run {len(self.errors)} node(s): "
            + "; ".join(parts) + f"; hint: {hint}; --allow-unsupported writes the bundle anyway"
        )

    def raise_if_unsupported(self) -> "Report":
        """Raise UnsupportedOpError with :meth:`summary` when there are errors; else return self."""
        if self.errors:
            raise UnsupportedOpError(self.summary())
        return self


def check(model, target: Target | str) -> Report:
    """Check every node of ``model`` (an ``onnx.ModelProto``), subgraphs included, against ``target``."""
    target = get_target(target) if isinstance(target, str) else target
    opset = onnx_opset(model) or 0
    report = Report(target, opset)
    if opset > target.max_opset or opset < target.min_opset:
        report.problems.append(Problem(
            "opset", "model",
            f"opset {opset} is outside TensorRT {target.tensorrt}'s range {target.min_opset}-{target.max_opset}",
        ))
    _check_graph(model.graph, target, report, set(), is_main=True)
    return report


def onnx_opset(model) -> int | None:
    """The model's opset of the default ONNX domain (None if it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def op_histogram(model) -> Counter:
    """Node count per op type, subgraphs included."""
    counts = Counter()
    for node in _walk(model.graph):
        counts[node.op_type] += 1
    return counts


def _walk(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _walk(sub)


def _check_graph(graph, target: Target, report: Report, outer_constants: set, is_main: bool = False) -> None:
    from onnx import TensorProto

    constants = set(outer_constants) | {t.name for t in graph.initializer}
    constant_values = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
            for attr in node.attribute:
                if attr.name == "value":
                    constant_values[node.output[0]] = attr.t
    io = {v.name for v in (*graph.input, *graph.output)} if is_main else set()
    add = report.problems.append
    for node in graph.node:
        op, name = node.op_type, node.name or f"<{node.op_type} -> {node.output[0] if node.output else ''}>"
        attrs = {a.name: a for a in node.attribute}
        if op in PLUGINS and node.domain in ("", "ai.onnx"):
            _check_plugin(node, op, name, attrs, target, add)
            continue
        if node.domain not in ("", "ai.onnx"):
            add(Problem(op, name, f"custom-domain op ({node.domain}) needs a TensorRT plugin"))
            continue
        if op not in target.supported_ops:
            known = "not supported" if op in target.unsupported_ops else "unknown to the ONNX parser"
            add(Problem(op, name, f"{known} in TensorRT {target.tensorrt}"))
            continue
        for i in CONSTANT_INPUTS.get(op, ()):
            if i < len(node.input) and node.input[i] and node.input[i] not in constants:
                add(Problem(op, name, f"input {i} ({node.input[i]}) must be a constant"))
        if op == "Resize":
            mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
            allowed = ("nearest", "linear", "cubic") if target.trt_major >= 10 else ("nearest", "linear")
            if mode not in allowed:
                add(Problem(op, name, f"mode {mode!r} (TensorRT {target.tensorrt} has {', '.join(allowed)})"))
            if "antialias" in attrs and attrs["antialias"].i:
                add(Problem(op, name, "antialias is not supported"))
            ctm = attrs.get("coordinate_transformation_mode")
            ctm = ctm.s.decode() if ctm is not None else ""
            if ctm and ctm not in RESIZE_COORDINATE_MODES:
                add(Problem(op, name, f"coordinate_transformation_mode {ctm!r} is not supported"))
        elif op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            zp = constant_values.get(node.input[2])
            if zp is None:
                add(Problem(op, name, "zero-point must be a constant"))
            else:
                from onnx import numpy_helper

                arr = numpy_helper.to_array(zp)
                if arr.dtype == np.uint8:
                    add(Problem(op, name, "UINT8 quantization; TensorRT needs symmetric INT8 (zero-point 0, int8)"))
                elif np.any(arr != 0):
                    add(Problem(op, name, "zero-point must be 0 (TensorRT quantization is symmetric)"))
        elif op == "TopK":
            if "sorted" in attrs and not attrs["sorted"].i:
                add(Problem(op, name, "sorted=0 is not supported"))
            k = constant_values.get(node.input[1]) if len(node.input) > 1 else None
            if k is not None:
                from onnx import numpy_helper

                if int(np.asarray(numpy_helper.to_array(k)).max()) >= TOPK_MAX_K:
                    add(Problem(op, name, f"K must be below {TOPK_MAX_K}"))
        elif op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            add(Problem(op, name, "the Indices output is not supported"))
        elif op in ("ScatterND", "ScatterElements") and attrs.get("reduction") and attrs["reduction"].s != b"none":
            if op == "ScatterND" or target.trt_major < 10:
                add(Problem(op, name, f"reduction {attrs['reduction'].s.decode()!r} is not supported"))
        elif op == "Dropout" and len(node.input) > 2 and node.input[2]:
            if node.input[2] not in constants:
                add(Problem(op, name, "training_mode must be a constant false (inference only)"))
        elif op == "Cast" and "to" in attrs:
            to = attrs["to"].i
            if to == TensorProto.DOUBLE:
                add(Problem(op, name, "cast to DOUBLE: TensorRT computes it in FP32", "warning"))
            elif to == TensorProto.INT64 and target.trt_major < 10:
                add(Problem(op, name, "cast to INT64: TensorRT 8 computes it in INT32", "warning"))
            elif to == TensorProto.UINT8 and not set(node.output) & io:
                add(Problem(op, name, "UINT8 is only allowed as a network input or output"))
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                _check_graph(sub, target, report, constants)


def trt_version(target: Target) -> tuple[int, int]:
    """The target's TensorRT (major, minor); a bare major (``tensorrt-10``) counts as its first minor."""
    parts = [int(p) for p in target.tensorrt.split(".")[:2] if p.isdigit()]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def _check_plugin(node, op: str, name: str, attrs: dict, target: Target, add) -> None:
    since, attr_since = PLUGINS[op]
    version = trt_version(target)
    if version < since:
        add(Problem(op, name, f"plugin {op} ships from TensorRT {since[0]}.{since[1]}, not in {target.tensorrt}"))
        return
    if op == "EfficientNMS_TRT" and version >= (10, 12):
        add(Problem(op, name, f"deprecated from TensorRT 10.12 ({target.tensorrt} still runs it; INMSLayer replaces "
                              "it): export with --nms native", "warning"))
    for attr, first in attr_since.items():
        if attr in attrs and attrs[attr].i and version < first:
            add(Problem(op, name, f"attribute {attr} needs TensorRT {first[0]}.{first[1]}+ ({op} of {target.tensorrt} lacks it)"))
