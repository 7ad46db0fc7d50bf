"""A detector's raw outputs, described and converted to edgekit's detection contract.

The contract: ``boxes`` [B, N, 4] corners ``[x1, y1, x2, y2]`` normalised to the input (0..1) and
``scores`` [B, N, C] per-class probabilities without a background column. :class:`OutputFormat` says
how a model's outputs differ (export's ``--box-format``, ``--box-units``, ``--score-activation``,
``--background``, or the sidecar's fields of the same names); :func:`append_conversion` appends the
ops that convert them to the graph (Gather, Slice, Mul, Sub, Add, Concat, Div, Sigmoid, Softmax: every
TensorRT release runs them), and :func:`convert` does the same in numpy for export's parity check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgekit.errors import InputError, ModelError

CHOICES = {
    "box_format": ("xyxy", "yxyx", "cxcywh"),  # corners x first, corners y first (TensorFlow's), centre-size
    "box_units": ("normalised", "pixels"),  # 0..1 of the input, or pixels of the model's input
    "score_activation": ("none", "sigmoid", "softmax"),  # none: already probabilities
    "background": ("none", "first", "last"),  # a background column to drop
}
INT64_MAX = 2**63 - 1  # a Slice end meaning "to the last column"


@dataclass(frozen=True)
class OutputFormat:
    """How a detector's raw boxes and scores differ from the contract (the defaults: they do not)."""

    box_format: str = "xyxy"
    box_units: str = "normalised"
    score_activation: str = "none"
    background: str = "none"
    given: tuple = field(default=(), compare=False)  # (field, where it was set) pairs, for errors

    @classmethod
    def from_sources(cls, *sources: tuple[dict, str]) -> "OutputFormat":
        """The fields set in ``sources``, ``(values, where)`` pairs, later ones winning; ``where`` formats
        a field's name into a label (``"--{option}"`` or ``'"{field}" in det.keras.edgekit.json'``)."""
        values, given = {}, {}
        for fields, where in sources:
            for name in CHOICES:
                if fields.get(name) is not None:
                    values[name] = fields[name]
                    given[name] = where.format(field=name, option=name.replace("_", "-"))
        return cls(**values, given=tuple(given.items()))

    @property
    def first_given(self) -> str | None:
        """Where the first field set was set (None: none was)."""
        return self.given[0][1] if self.given else None

    def label(self, name: str) -> str:
        """Where field ``name`` was set (its option when it was not)."""
        return dict(self.given).get(name, "--" + name.replace("_", "-"))

    def __post_init__(self):
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise InputError(f"{self.label(name)} must be one of {', '.join(choices)}, "
                                 f"got {getattr(self, name)!r}")

    @property
    def is_contract(self) -> bool:
        """The outputs already meet the contract: nothing to convert."""
        return self == OutputFormat()

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "given"}

    def describe(self) -> str:
        """What the conversion does, for the log (``cxcywh -> xyxy, pixels -> 0..1, softmax, …``)."""
        steps = [f"{self.box_format} -> xyxy" if self.box_format != "xyxy" else "",
                 "pixels -> 0..1" if self.box_units == "pixels" else "",
                 self.score_activation if self.score_activation != "none" else "",
                 f"background {self.background} dropped" if self.background != "none" else ""]
        return ", ".join(s for s in steps if s) or "none"


def convert(boxes, scores, fmt: OutputFormat, height: int, width: int) -> tuple:
    """Raw (boxes, scores) as the contract's, in float32 numpy: what :func:`append_conversion`'s ops compute."""
    import numpy as np

    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    if fmt.box_format == "yxyx":
        boxes = boxes[..., [1, 0, 3, 2]]
    elif fmt.box_format == "cxcywh":
        centre, half = boxes[..., :2], boxes[..., 2:] * np.float32(0.5)
        boxes = np.concatenate([centre - half, centre + half], axis=-1)
    if fmt.box_units == "pixels":
        boxes = boxes / np.array([width, height, width, height], np.float32)
    if fmt.score_activation == "sigmoid":
        scores = (np.float32(0.5) * (1 + np.tanh(np.float32(0.5) * scores))).astype(np.float32)
    elif fmt.score_activation == "softmax":
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores = e / e.sum(axis=-1, keepdims=True)
    if fmt.background == "first":
        scores = scores[..., 1:]
    elif fmt.background == "last":
        scores = scores[..., :-1]
    return boxes, scores


def check_raw_shapes(boxes_shape: tuple, scores_shape: tuple, fmt: OutputFormat) -> None:
    """ModelError naming both shapes when raw outputs are not boxes [B, N, 4] and scores [B, N, C] (C
    counting the background column, so at least 2 with one)."""
    if len(boxes_shape) != 3 or boxes_shape[2] != 4 or len(scores_shape) != 3 or scores_shape[:2] != boxes_shape[:2]:
        raise ModelError(f"detector outputs must be boxes [B, N, 4] and scores [B, N, C]; got boxes "
                         f"{list(boxes_shape)} and scores {list(scores_shape)}")
    if fmt.background != "none" and scores_shape[2] < 2:
        raise ModelError(f"a background column ({fmt.label('background')} {fmt.background}) needs scores "
                         f"[B, N, C + 1] with C >= 1; got scores {list(scores_shape)}")


def append_conversion(graph, fmt: OutputFormat, height: int, width: int) -> int:
    """Append to an onnx-graphsurgeon ``graph`` whose outputs are the raw (boxes, scores) the ops that
    convert them to the contract; the graph's outputs become the converted tensors. Returns the nodes added.
    The caller checks the raw shapes first (:func:`check_raw_shapes`): a Slice would hide a fifth box column."""
    import numpy as np
    import onnx_graphsurgeon as gs

    boxes, scores = graph.outputs
    added = []

    def op(name: str, kind: str, *inputs, **attrs):
        out = gs.Variable(f"contract/{name}", dtype=np.float32)
        added.append(gs.Node(kind, f"contract/{name}", attrs, list(inputs), [out]))
        return out

    def const(name: str, values) -> gs.Constant:
        return gs.Constant(f"contract/{name}", np.asarray(values))

    def columns(name: str, x, start: int, end: int):  # x[..., start:end]
        if graph.opset < 10:  # Slice's starts/ends became inputs in opset 10
            return op(name, "Slice", x, starts=[start], ends=[end], axes=[2])
        return op(name, "Slice", x, const(f"{name}_starts", np.array([start], np.int64)),
                  const(f"{name}_ends", np.array([end], np.int64)), const(f"{name}_axes", np.array([2], np.int64)))

    if fmt.box_format == "yxyx":
        boxes = op("boxes_xyxy", "Gather", boxes, const("yxyx_to_xyxy", np.array([1, 0, 3, 2], np.int64)), axis=2)
    elif fmt.box_format == "cxcywh":
        centre, size = columns("centre", boxes, 0, 2), columns("size", boxes, 2, 4)
        half = op("half_size", "Mul", size, const("one_half", np.array(0.5, np.float32)))
        boxes = op("boxes_xyxy", "Concat", op("top_left", "Sub", centre, half),
                   op("bottom_right", "Add", centre, half), axis=2)
    if fmt.box_units == "pixels":
        boxes = op("boxes_normalised", "Div", boxes,
                   const("input_size", np.array([width, height, width, height], np.float32)))
    if fmt.score_activation == "sigmoid":
        scores = op("scores_sigmoid", "Sigmoid", scores)
    elif fmt.score_activation == "softmax":
        scores = op("scores_softmax", "Softmax", scores, axis=2)  # the last axis at every opset, for rank 3
    if fmt.background == "first":
        scores = columns("scores_classes", scores, 1, INT64_MAX)
    elif fmt.background == "last":
        scores = columns("scores_classes", scores, 0, -1)
    graph.nodes.extend(added)
    graph.outputs = [boxes, scores]
    return len(added)
