"""Named, chainable graph passes over an onnx-graphsurgeon Graph::

    model = (Passes(model).strip_training().cast_double().fold_constants().channels_first().fold_batchnorm()
             .replace_unsupported(target.supported_ops)
             .rename_io(outputs=["probs"]).set_batch("batch").drop_noop_reshapes().cleanup().toposort().model())

export runs that chain as ``Passes(model).clean(target.supported_ops)`` (up to replace_unsupported) and
``.finish(inputs, outputs, batch)`` (from rename_io on), the detection branch with its own steps between.

Each pass returns ``self``; ``applied`` lists ``(pass, changes)`` in order for the manifest.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

TRAINING_ONLY = ("Dropout", "Identity")


def _gs():
    import onnx_graphsurgeon as gs

    return gs


class Passes:
    """A graph and the passes applied to it, in order."""

    def __init__(self, model):
        gs = _gs()
        self.graph = model if isinstance(model, gs.Graph) else gs.import_onnx(model)
        self.applied: list[tuple[str, int]] = []

    def _done(self, name: str, changes: int) -> "Passes":
        self.applied.append((name, changes))
        if changes:
            log.debug("pass %s: %d change(s)", name, changes)
        return self

    # ---- passes ----------------------------------------------------------------------------
    def fold_constants(self) -> "Passes":
        """Evaluate every subgraph that depends only on constants (needs onnxruntime)."""
        before = len(self.graph.nodes)
        self.graph.fold_constants().cleanup()
        return self._done("fold_constants", before - len(self.graph.nodes))

    def strip_training(self) -> "Passes":
        """Remove Identity nodes and inference-mode Dropout (training-only) by rewiring around them."""
        removed = 0
        for node in list(self.graph.nodes):
            if node.op not in TRAINING_ONLY or not node.inputs:
                continue
            if node.op == "Dropout" and not _inference_dropout(node):
                continue
            if self._bypass(node):
                removed += 1
        self.graph.cleanup()
        return self._done("strip_training", removed)

    def cast_double(self) -> "Passes":
        """Cast to DOUBLE becomes Cast to FLOAT (TensorRT has no FP64; it would cast to FP32 anyway)."""
        from onnx import TensorProto

        changed = 0
        for node in self.graph.nodes:
            if node.op == "Cast" and node.attrs.get("to") == TensorProto.DOUBLE:
                node.attrs["to"] = TensorProto.FLOAT
                for out in node.outputs:
                    out.dtype = np.float32
                changed += 1
        return self._done("cast_double", changed)

    def replace_unsupported(self, supported: frozenset[str] | set[str]) -> "Passes":
        """Rewrite ops outside ``supported`` that have an equivalent made of common ops (see REPLACEMENTS)."""
        replaced = 0
        for node in list(self.graph.nodes):
            if node.op in REPLACEMENTS and node.op not in supported and node.domain in ("", None, "ai.onnx"):
                self.graph.nodes.extend(REPLACEMENTS[node.op](node))
                node.outputs.clear()
                replaced += 1
        self.graph.cleanup()
        return self._done("replace_unsupported", replaced)

    def clean(self, supported_ops) -> "Passes":
        """Export's cleaning: strip_training, cast_double, fold_constants, channels_first, fold_batchnorm,
        replace_unsupported."""
        return (self.strip_training().cast_double().fold_constants().channels_first().fold_batchnorm()
                .replace_unsupported(supported_ops))

    def finish(self, inputs: list[str], outputs: list[str], batch: int | str) -> "Passes":
        """Export's last steps: rename_io, set_batch, drop_noop_reshapes, cleanup, toposort."""
        return self.rename_io(inputs, outputs).set_batch(batch).drop_noop_reshapes().cleanup().toposort()

    def channels_first(self) -> "Passes":
        """Rewrite channel-last regions (Keras Dense on a feature map) in NCHW: Transposes removed
        (see :mod:`edgekit.graph.layout`)."""
        from edgekit.graph.layout import channels_first

        if not any(node.op == "Transpose" for node in self.graph.nodes):
            return self._done("channels_first", 0)
        self._infer_shapes()  # the pass reads channel counts from shapes, which tf2onnx leaves out
        return self._done("channels_first", channels_first(self.graph))

    def fold_batchnorm(self) -> "Passes":
        """Fold BatchNormalization, and per-channel Mul/Add left from one, into the Conv before it."""
        folded = 0
        progress = True
        while progress:
            progress = False
            for node in list(self.graph.nodes):
                conv = _conv_feeding(node)
                if conv is not None and conv.outputs[0] not in self.graph.outputs and self._fold_into(conv, node):
                    folded += 1
                    progress = True
        self.graph.cleanup()
        return self._done("fold_batchnorm", folded)

    def to_detection_contract(self, fmt, height: int, width: int) -> "Passes":
        """Convert a detector's raw (boxes, scores) outputs as ``fmt`` describes them (an
        :class:`edgekit.graph.detector_outputs.OutputFormat`) to edgekit's contract."""
        from edgekit.graph.detector_outputs import append_conversion

        return self._done("to_detection_contract", append_conversion(self.graph, fmt, height, width))

    def rename_io(self, inputs: list[str] | None = None, outputs: list[str] | None = None) -> "Passes":
        """Give the graph inputs and outputs stable names (``input``, ``probs`` …)."""
        changed = 0
        for tensors, names in ((self.graph.inputs, inputs), (self.graph.outputs, outputs)):
            for tensor, name in zip(tensors, names or (), strict=False):  # unnamed ones keep theirs
                if tensor.name != name:
                    tensor.name = name
                    changed += 1
        return self._done("rename_io", changed)

    def set_batch(self, batch: int | str = "batch") -> "Passes":
        """Name (or fix) the first dimension of every input and output; re-derive inner shapes."""
        for tensor in (*self.graph.inputs, *self.graph.outputs):
            if tensor.shape:
                tensor.shape = [batch, *tensor.shape[1:]]
        io = {id(t) for t in (*self.graph.inputs, *self.graph.outputs)}
        for tensor in self.graph.tensors().values():
            if id(tensor) not in io and not isinstance(tensor, _gs().Constant):
                tensor.shape = None
        return self._done("set_batch", 1)

    def drop_noop_reshapes(self) -> "Passes":
        """Bypass Reshapes whose constant target is their input's own shape (left where ``channels_first``
        rewrote a channel-last region: a Reshape that moved a singleton channel is a no-op in NCHW)."""
        if not any(node.op == "Reshape" for node in self.graph.nodes):
            return self._done("drop_noop_reshapes", 0)
        dropped, progress = 0, True
        while progress:  # shape inference stops at a Reshape it cannot see through: again after each round
            self._infer_shapes(data_prop=True)
            progress = sum(self._bypass(n) for n in list(self.graph.nodes) if _noop_reshape(n))
            self.graph.cleanup(remove_unused_graph_inputs=False)
            dropped += progress
        return self._done("drop_noop_reshapes", dropped)

    def cleanup(self) -> "Passes":
        """Drop nodes and tensors that do not contribute to an output."""
        before = len(self.graph.nodes)
        self.graph.cleanup(remove_unused_graph_inputs=False)
        return self._done("cleanup", before - len(self.graph.nodes))

    def toposort(self) -> "Passes":
        """Order nodes so that every node follows its producers."""
        self.graph.toposort()
        return self._done("toposort", 0)

    # ---- result --------------------------------------------------------------------------------
    def model(self):
        """The graph as an ``onnx.ModelProto`` with the lowest IR version its opsets allow, shapes inferred."""
        import onnx
        from onnx import helper

        model = _gs().export_onnx(self.graph)
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
        return onnx.shape_inference.infer_shapes(model)

    # ---- helpers -------------------------------------------------------------------------------
    def _infer_shapes(self, data_prop: bool = False) -> None:
        """Replace the graph with itself, every tensor's shape inferred by ONNX."""
        import onnx

        gs = _gs()
        self.graph = gs.import_onnx(onnx.shape_inference.infer_shapes(gs.export_onnx(self.graph), data_prop=data_prop))

    def _bypass(self, node) -> bool:
        """Connect ``node``'s first input straight to the consumers of its first output."""
        src, dst = node.inputs[0], node.outputs[0]
        if any(out.outputs for out in node.outputs[1:]) or any(o in self.graph.outputs for o in node.outputs[1:]):
            return False
        if dst in self.graph.outputs:
            if src in self.graph.inputs or isinstance(src, _gs().Constant) or src in self.graph.outputs:
                return False
            self.graph.outputs[self.graph.outputs.index(dst)] = src
            src.name, src.dtype, src.shape = dst.name, dst.dtype or src.dtype, dst.shape or src.shape
        for consumer in list(dst.outputs):
            for i, tensor in enumerate(consumer.inputs):
                if tensor is dst:
                    consumer.inputs[i] = src
        node.outputs.clear()
        return True

    def _fold_into(self, conv, node) -> bool:
        gs = _gs()
        weight = conv.inputs[1]
        out_ch = weight.values.shape[0]
        bias = conv.inputs[2].values if len(conv.inputs) > 2 else np.zeros(out_ch, weight.values.dtype)
        if node.op == "BatchNormalization":
            if len(node.outputs) > 1 or not all(isinstance(t, gs.Constant) for t in node.inputs[1:5]):
                return False
            gamma, beta, mean, var = (t.values.astype(np.float64) for t in node.inputs[1:5])
            scale = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
            shift = beta - mean * scale
        else:
            const = next((t for t in node.inputs if isinstance(t, gs.Constant)), None)
            vec = _per_channel(const.values, out_ch) if const is not None else None
            if vec is None:
                return False
            scale, shift = (vec, np.zeros(out_ch)) if node.op == "Mul" else (np.ones(out_ch), vec)
        dtype = weight.values.dtype
        new_w = weight.values * scale.reshape(-1, *([1] * (weight.values.ndim - 1))).astype(dtype)
        new_b = (bias * scale + shift).astype(dtype)
        conv.inputs[1] = gs.Constant(f"{weight.name}_folded", new_w.astype(dtype))
        b = gs.Constant(f"{conv.name}_bias_folded", new_b)
        if len(conv.inputs) > 2:
            conv.inputs[2] = b
        else:
            conv.inputs.append(b)
        out = node.outputs[0]  # conv now computes what node did: it takes over node's output
        node.outputs.clear()
        conv.outputs[0] = out
        return True


def _reciprocal(node) -> list:
    """Reciprocal(x) = Div(1, x) (TensorRT 8.2 lacks Reciprocal; Keras LayerNormalization exports one)."""
    gs = _gs()
    x, y = node.inputs[0], node.outputs[0]
    one = gs.Constant(f"{node.name}_one", np.array(1, dtype=x.dtype or np.float32))
    return [gs.Node("Div", f"{node.name}_div", inputs=[one, x], outputs=[y])]


REPLACEMENTS = {"Reciprocal": _reciprocal}


def _noop_reshape(node) -> bool:
    """A Reshape to a constant shape equal to its input's (0 copies a dimension; one -1 takes what is left,
    which is the input's own dimension when every other one is equal)."""
    if node.op != "Reshape" or node.attrs.get("allowzero", 0) or not isinstance(node.inputs[1], _gs().Constant):
        return False
    target, shape = [int(v) for v in node.inputs[1].values.ravel()], node.inputs[0].shape
    if shape is None or len(target) != len(shape) or target.count(-1) > 1:
        return False
    return all(t in (0, -1) or (isinstance(d, (int, np.integer)) and t == d) for t, d in zip(target, shape))


def _inference_dropout(node) -> bool:
    gs = _gs()
    if len(node.inputs) < 3 or node.inputs[2].name == "":
        return True
    mode = node.inputs[2]
    return isinstance(mode, gs.Constant) and not bool(np.asarray(mode.values).any())


def _conv_feeding(node):
    """The Conv whose only consumer is ``node`` (a foldable BatchNormalization/Mul/Add), else None."""
    gs = _gs()
    if node.op not in ("BatchNormalization", "Mul", "Add") or not node.inputs:
        return None
    for tensor in node.inputs:
        if isinstance(tensor, gs.Constant) or not tensor.inputs:
            continue
        conv = tensor.inputs[0]
        if (
            conv.op == "Conv"
            and len(tensor.outputs) == 1
            and (node.op != "BatchNormalization" or node.inputs[0] is tensor)
            and isinstance(conv.inputs[1], gs.Constant)
            and (len(conv.inputs) < 3 or isinstance(conv.inputs[2], gs.Constant))
            and conv.inputs[1].values.dtype == np.float32
        ):
            return conv
    return None


def _per_channel(values: np.ndarray, channels: int) -> np.ndarray | None:
    """``values`` as a per-channel vector when it broadcasts to an NCHW tensor along C only."""
    v = np.asarray(values)
    if v.dtype != np.float32 or v.ndim > 4 or v.ndim == 1 and v.size != 1:
        return None  # a 1-D vector broadcasts along W, not C
    v = v.reshape((1,) * (4 - v.ndim) + v.shape) if v.ndim else v.reshape(1, 1, 1, 1)
    if v.shape[0] != 1 or v.shape[2] != 1 or v.shape[3] != 1 or v.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(v[0, :, 0, 0].astype(np.float64), (channels,)).copy()
