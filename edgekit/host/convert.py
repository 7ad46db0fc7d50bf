"""Load a Keras/TF model (``.keras``, ``.h5`` or a SavedModel folder) and convert it to ONNX with tf2onnx.

The network input becomes NCHW (``inputs_as_nchw``), so the device feeds a blob without a transpose.
"""

from __future__ import annotations

import logging
import os
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.errors import InputError, ModelError, first_line

log = logging.getLogger(__name__)

TF2ONNX_MAX_OPSET = 18
INPUT_NAME = "input"


@dataclass
class Source:
    """A loaded TF model: its file, format, NHWC input size and a TF function for conversion and parity."""

    path: Path
    format: str  # "keras", "h5" or "saved_model"
    height: int | None
    width: int | None
    fn: Callable  # NHWC float32 tf.Tensor -> output tf.Tensor (a list of them for a multi-output model)
    in_graph_preprocessing: list = field(default_factory=list)  # leading Rescaling/Normalization layers
    scopes: list = field(default_factory=list)  # model names (nested ones too): see edgekit.host.scaling
    detector_nms: dict | None = None  # an adapted anchor detector's own NMS parameters (edgekit.host.adapters)
    output_names: list = field(default_factory=list)  # in the order fn returns the outputs

    def select_outputs(self, names: list[str]) -> None:
        """Keep only the outputs called ``names``, in that order; ModelError naming the outputs there are."""
        missing = [n for n in names if n not in self.output_names]
        if missing:
            raise ModelError(f"{self.path.name} has no output {missing[0]!r}; its outputs are "
                             f"{', '.join(self.output_names) or 'unnamed'}")
        picks = [self.output_names.index(n) for n in names]
        inner = self.fn

        def fn(x):
            out = inner(x)
            out = out if isinstance(out, (list, tuple)) else [out]
            return [out[i] for i in picks]

        self.fn, self.output_names = fn, list(names)

    def run(self, x_nhwc: np.ndarray):
        """The model's output for an NHWC float32 batch, computed by TensorFlow (a list for several outputs)."""
        out = self.fn(x_nhwc)
        return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def source_format(path: str | os.PathLike) -> str:
    """``keras``, ``h5`` or ``saved_model``; InputError for anything else."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model {path} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise InputError(f"{path} is a folder but not a SavedModel (no saved_model.pb)")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    raise InputError(f"{path} is not a model: expected a .keras file, an .h5 file or a SavedModel folder")


H5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _check_container(path: Path, fmt: str) -> None:
    """ModelError when a .keras file is no zip archive or an .h5 file no HDF5 file (Keras says "File not found")."""
    if fmt == "keras" and not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a Keras model: a .keras file is a zip archive and this one is not (corrupt or renamed?)")
    if fmt == "h5":
        with open(path, "rb") as f:
            head = f.read(2056)
        if not any(head[at:at + 8] == H5_MAGIC for at in (0, 512, 1024, 2048)):  # where HDF5 puts its signature
            raise ModelError(f"{path} is not a Keras model: an .h5 file is an HDF5 file and this one is not (corrupt or renamed?)")


def load(path: str | os.PathLike, unsafe: bool = False) -> Source:
    """Load a model; ModelError (one line) if it is corrupt or not a single-input image model.

    Classifiers have one output; detectors several (``boxes``, ``scores``, or TensorFlow NMS's four).
    ``unsafe`` lets a ``.keras`` file with Lambda layers load (Keras' ``safe_mode=False``: the file's
    code runs), with a warning.
    """
    path = Path(path)
    fmt = source_format(path)
    _check_container(path, fmt)
    from edgekit.host import import_tf

    from edgekit.host import adapters
    from edgekit.host.scaling import graph_scopes, keras_scopes

    tf, keras = import_tf()
    prep_layers, detector_nms, output_names = [], None, []
    try:
        if fmt == "saved_model":
            loaded = tf.saved_model.load(str(path))
            sig = loaded.signatures.get("serving_default") if hasattr(loaded, "signatures") else None
            if sig is None:
                raise ModelError(f"SavedModel {path} has no serving_default signature")
            _, kwargs = sig.structured_input_signature
            if len(kwargs) != 1:
                raise ModelError(f"SavedModel {path}: edgekit exports models with one input")
            (in_key, spec), = kwargs.items()
            out_keys = sorted(sig.structured_outputs)
            shape = list(spec.shape)

            def fn(x, _sig=sig, _in=in_key, _out=out_keys):
                result = _sig(**{_in: tf.convert_to_tensor(x, tf.float32)})
                return result[_out[0]] if len(_out) == 1 else [result[k] for k in _out]

            fn.keep_alive = loaded  # the signature needs its object alive
            scopes, output_names = graph_scopes(sig), out_keys
        else:
            if unsafe and fmt == "keras":
                log.warning("--unsafe-load: loading %s with Keras' safe_mode off; its Lambda layers run code "
                            "stored in the file", path.name)
            if fmt == "keras" and adapters.needs_keras_hub(path):
                adapters.import_keras_hub()
            model = keras.models.load_model(path, compile=False, **({"safe_mode": False} if unsafe else {}))
            if len(model.inputs) != 1:
                raise ModelError(f"{path}: edgekit exports models with one input")
            shape = list(model.inputs[0].shape)
            prep_layers = leading_preprocessing(model)
            scopes, output_names = keras_scopes(model), list(getattr(model, "output_names", None) or [])
            keys = _output_keys(model)
            if keys:  # keras.Model(inputs, {name: tensor}): the model returns a dict; its keys name the outputs
                output_names = keys

            def fn(x, _model=model, _keys=keys):
                out = _model(tf.convert_to_tensor(x, tf.float32), training=False)
                return [out[k] for k in _keys] if _keys and isinstance(out, dict) else out

            if adapters.is_anchor_detector(model):  # decoding outside call: brought into the function
                decode = adapters.detector_function(model)
                detector_nms = adapters.detector_nms(model)

                def fn(x, _decode=decode):  # noqa: F811
                    return _decode(tf.convert_to_tensor(x, tf.float32))

    except ModelError:
        raise
    except Exception as exc:  # Keras/TF raise many types for a corrupt or foreign file
        if "safe_mode" in str(exc):
            raise ModelError(f"{path} has a Lambda layer, whose code Keras does not load by default; "
                             "if you trust the file, export with --unsafe-load") from exc
        raise ModelError(f"cannot load {path} as a {fmt} model: {first_line(exc)}") from exc
    if len(shape) != 4 or shape[-1] != 3:
        raise ModelError(f"{path}: input shape {shape} is not an NHWC 3-channel image batch")
    return Source(path, fmt, shape[1], shape[2], fn, prep_layers, scopes, detector_nms, output_names)


def _output_keys(model) -> list[str]:
    """The keys of a functional Keras model whose outputs are a dict (sorted, the order Keras flattens
    them in), else []."""
    try:
        struct = model.output
    except Exception:  # a subclassed model that was never called has no output (Keras raises several types)
        return []
    return sorted(struct) if isinstance(struct, dict) else []


TF_NMS_OPS = frozenset({"NonMaxSuppression", "NonMaxSuppressionV2", "NonMaxSuppressionV3", "NonMaxSuppressionV4",
                        "NonMaxSuppressionV5", "CombinedNonMaxSuppression"})


def ends_in_tf_nms(source: Source) -> bool:
    """True when the model's TensorFlow graph (its functions included) holds a TensorFlow NMS: traced, not
    converted, so export can tell before it picks a detector's outputs by name."""
    from edgekit.host import import_tf

    tf, _ = import_tf()
    spec = tf.TensorSpec((1, source.height, source.width, 3), tf.float32)
    try:
        function = tf.function(tf.autograph.experimental.do_not_convert(source.fn))
        graph_def = function.get_concrete_function(spec).graph.as_graph_def()
    except Exception as exc:  # TF raises many types for a graph it cannot trace
        raise ModelError(f"cannot trace {source.path}: {first_line(exc)}") from exc
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return any(node.op in TF_NMS_OPS for node in nodes)


PREPROCESSING_LAYERS = ("Rescaling", "Normalization")


def leading_preprocessing(model) -> list[str]:
    """Names of the Rescaling/Normalization layers a Keras model applies to its input first
    (``include_preprocessing`` in MobileNetV3, EfficientNet …), looking into a leading nested model."""
    found = []
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    while layers:
        layer = layers.pop(0)
        kind = type(layer).__name__
        if kind in PREPROCESSING_LAYERS:
            found.append(f"{kind} {layer.name}")
        elif hasattr(layer, "layers") and not found:
            layers = [sub for sub in layer.layers if type(sub).__name__ != "InputLayer"]
        else:
            break
    return found


def to_onnx(source: Source, height: int, width: int, batch: int | None, opset: int):
    """Convert with tf2onnx to an ``onnx.ModelProto`` whose input is NCHW ``[batch, 3, height, width]``."""
    from edgekit.host import import_tf

    tf, _ = import_tf()
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    spec = (tf.TensorSpec((batch, height, width, 3), tf.float32, name=INPUT_NAME),)
    function = tf.function(tf.autograph.experimental.do_not_convert(source.fn), input_signature=spec)
    try:
        with _transpose_optimizer_fixed(), _xla_functions_inlined():
            model, _ = tf2onnx.convert.from_function(
                function, input_signature=spec, opset=opset, inputs_as_nchw=[INPUT_NAME],
                custom_op_handlers={"Erfc": (_erfc_as_erf, [])},
            )
    except Exception as exc:  # tf2onnx raises bare exceptions for unconvertible graphs
        raise ModelError(f"tf2onnx cannot convert {source.path}: {first_line(exc)}") from exc
    _check_converted(model, source.path)
    _check_soft_nms(function.get_concrete_function().graph.as_graph_def(), tf)
    _freeze_captured_constants(model, function.get_concrete_function())
    return model


def _check_soft_nms(graph_def, tf) -> None:
    """ModelError when a TensorFlow NMS is Soft-NMS (``soft_nms_sigma`` not 0): tf2onnx drops the sigma,
    and neither EfficientNMS_TRT nor edgekit's NMS decays scores, so the cut could not reproduce it."""
    for nodes in [graph_def.node, *(f.node_def for f in graph_def.library.function)]:
        by_name = {n.name: n for n in nodes}
        for node in nodes:
            if node.op != "NonMaxSuppressionV5":
                continue
            sigma = by_name.get(node.input[5].split(":")[0].lstrip("^"))
            constant = sigma is not None and sigma.op == "Const"
            value = float(tf.make_ndarray(sigma.attr["value"].tensor)) if constant else None
            if value != 0.0:
                raise ModelError(f"cannot cut the NMS: {node.name} is Soft-NMS (soft_nms_sigma "
                                 f"{'not constant' if value is None else f'{value:g}'}), which EfficientNMS_TRT and "
                                 "edgekit's NMS do not reproduce; use soft_nms_sigma=0")


def _check_converted(model, path) -> None:
    """ModelError naming the TensorFlow ops tf2onnx left unconverted (it keeps them as foreign nodes)."""
    from collections import Counter

    import onnx

    domains = {o.domain for o in model.opset_import}
    left = Counter(n.op_type for n in model.graph.node
                   if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type) or n.domain not in domains)
    if left:
        ops = ", ".join(f"{op} x{n}" for op, n in left.most_common())
        hint = (" (StatefulPartitionedCall: a TensorFlow function call tf2onnx could not inline)"
                if "StatefulPartitionedCall" in left else "")
        raise ModelError(f"tf2onnx cannot convert {path}: TensorFlow ops without an ONNX equivalent: {ops}{hint}")


@contextmanager
def _transpose_optimizer_fixed():
    """tf2onnx 1.16-1.17's transpose optimizer, able to push a Transpose through an Add of a scalar constant.

    Its Add handler takes ``max()`` of the constant's shape, which fails for a scalar (the ``x + 3`` of
    MobileNetV3's hard-swish after a Conv); the failure aborts the whole optimizer, leaving a Transpose
    pair around every Conv (107 in MobileNetV3Small). A scalar goes the handler's general way instead.
    """
    from tf2onnx.optimizer import transpose_optimizer

    cls = transpose_optimizer.TransposeOptimizer
    original = cls._add_handler

    def add_handler(self, trans, node):
        const = node.inputs[1]
        if const.is_const() and np.ndim(const.get_tensor_value(as_list=False)) == 0:
            return self._handle_node_having_branches(trans, node)
        return original(self, trans, node)

    cls._add_handler = add_handler
    try:
        yield
    finally:
        cls._add_handler = original


@contextmanager
def _xla_functions_inlined():
    """tf2onnx able to look into functions TensorFlow must compile with XLA.

    Keras 3 (TensorFlow backend) runs a grouped convolution (ConvNeXt's depthwise ``Conv2D`` with
    ``groups``) as a ``jit_compile=True`` function: the traced graph, and a SavedModel's saved graph
    alike, call it through a ``StatefulPartitionedCall`` marked ``_XlaMustCompile``, and the function
    itself is marked ``_noinline``. Grappler, which tf2onnx runs to inline function calls, leaves such
    calls alone, and tf2onnx has no ONNX op for them. The marks only say how TensorFlow should run the
    function (the body is a plain ``Conv2D``), so they are dropped from the frozen graph before Grappler.
    """
    from tf2onnx import tf_loader

    original = tf_loader.tf_optimize

    def tf_optimize(input_names, output_names, graph_def):
        functions = graph_def.library.function
        marked = set()
        for node in [*graph_def.node, *(n for f in functions for n in f.node_def)]:
            if node.attr.pop("_XlaMustCompile", None) is not None and "f" in node.attr:
                marked.add(node.attr["f"].func.name)
        for function in functions:
            function.attr.pop("_XlaMustCompile", None)
            if function.signature.name in marked:
                function.attr.pop("_noinline", None)
        return original(input_names, output_names, graph_def)

    tf_loader.tf_optimize = tf_optimize
    try:
        yield
    finally:
        tf_loader.tf_optimize = original


def _erfc_as_erf(ctx, node, name, args):
    """tf2onnx handler: TensorFlow's Erfc (exact GELU) as ``1 - Erf(x)``."""
    node.type = "Erf"
    one = ctx.make_const(f"{name}_one", np.array(1, np.float32))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]], name=f"{name}_erfc")
    return node


def _freeze_captured_constants(model, concrete) -> None:
    """Turn graph inputs that are captured TF constants into initializers.

    tf2onnx treats every non-resource input of the concrete function as a model input, including
    tensors the function captured by value (e.g. the mean/variance of Keras 3's Normalization
    layer inside EfficientNet); they belong in the graph as constants.
    """
    from onnx import numpy_helper

    captured = {inner.name: outer for outer, inner in concrete.graph.captures if outer.dtype.name != "resource"}
    for value in list(model.graph.input):
        if value.name in captured:
            model.graph.initializer.append(numpy_helper.from_array(captured[value.name].numpy(), value.name))
            model.graph.input.remove(value)
