"""Find the input scaling a model expects, rather than guess it.

In order: what the user gave (``--preprocess``) or the sidecar recorded; scaling the model does itself
(the affine ops - Mul/Div/Add/Sub by constants - between the graph's input and its first other op:
Keras' Rescaling and Normalization layers, in a ``.keras`` file or a SavedModel's graph alike), which
means it takes raw RGB pixels 0..255; a stock ``keras.applications`` network recognised by its model
name, whose ``preprocess_input`` mode is known. Nothing found: export refuses (:func:`resolve`).
"""

from __future__ import annotations

import logging
import re

import numpy as np

from edgekit.errors import UsageError
from edgekit.preprocess import FAMILIES, SPEC_HELP, named

log = logging.getLogger(__name__)

# Default model names of the keras.applications networks that do NOT scale their own input; the others
# (EfficientNet, ConvNeXt, MobileNetV3, RegNet, ResNetRS) are found by their in-graph scaling.
APPLICATION_NAMES = {
    r"mobilenet_\d\.\d\d_\d+": "mobilenet",
    r"mobilenetv2_\d\.\d\d_\d+": "mobilenet_v2",
    r"resnet(50|101|152)": "resnet",
    r"resnet(50|101|152)v2": "resnet_v2",
    r"vgg1[69]": "vgg16",
    r"densenet(121|169|201)": "densenet",
    r"xception": "xception",
    r"inception_v3": "inception_v3",
    r"inception_resnet_v2": "inception_resnet_v2",
    r"nasnet_(mobile|large)": "nasnet",
}
AFFINE_OPS = ("Mul", "Div", "Add", "Sub")
LAYOUT_OPS = ("Transpose", "Identity")
MAX_SCOPES = 100_000  # node names read from a SavedModel's graph


def resolve(given, source, affine: str | None) -> tuple[dict, str]:
    """Preprocess fields and where they came from ("given", else a sentence), for ``source`` whose
    converted graph scales its input by ``affine`` (:func:`leading_affine`; None: it does not).

    ``given`` is what the user or sidecar said (a dict, or a ``--preprocess`` string), or None.
    UsageError naming ``--preprocess`` when nothing says how the model expects its input.
    """
    if given is not None:
        return (named(given) if isinstance(given, str) else dict(given)), "given"
    if affine is not None:
        layers = ", ".join(source.in_graph_preprocessing)
        return named("raw"), f"the model scales its own input ({layers + ': ' if layers else ''}{affine})"
    family = application_family(source.scopes)
    if family is not None:
        app, fam = family
        return named(fam), f"keras.applications.{fam} network {app!r}: its preprocess_input ({FAMILIES[fam]})"
    raise UsageError(
        f"cannot tell how {source.path.name} expects its input scaled (no sidecar, no scaling in its graph, "
        f"not a known keras.applications network); give --preprocess {SPEC_HELP}"
    )


def application_family(scopes) -> tuple[str, str] | None:
    """``(model name, keras.applications family)`` for the first scope named like a stock network."""
    for scope in scopes:
        for pattern, family in APPLICATION_NAMES.items():
            if re.fullmatch(pattern + r"(_\d+)*", scope):  # TensorFlow appends _1, _2 … to reused scopes
                return scope, family
    return None


def keras_scopes(model) -> list[str]:
    """The names of a Keras model and of the models nested in it, outermost first."""
    names, stack = [], [model]
    while stack:
        m = stack.pop(0)
        names.append(m.name)
        stack.extend(layer for layer in getattr(m, "layers", ()) if hasattr(layer, "layers"))
    return names


def graph_scopes(concrete) -> list[str]:
    """The first two name-scope parts of the ops in a SavedModel signature's functions (model names)."""
    seen: dict[str, None] = {}
    count = 0
    for function in concrete.graph.as_graph_def().library.function:
        for node in function.node_def:
            count += 1
            if count > MAX_SCOPES:
                return list(seen)
            for part in node.name.split("/")[:2]:
                seen.setdefault(part)
    return list(seen)


def leading_affine(model) -> str | None:
    """The per-channel ``x * a + b`` that the Mul/Div/Add/Sub-by-constant ops right after the input
    compute, as text; None when the input goes straight into another op."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    tensor, axes, last, arithmetic = graph.inputs[0], [0, 1, 2, 3], None, 0
    while len(tensor.outputs) == 1 and tensor not in graph.outputs:
        node = tensor.outputs[0]
        if node.op in LAYOUT_OPS:
            axes = [axes[p] for p in node.attrs.get("perm", range(4))]
        elif node.op in AFFINE_OPS:
            other = [t for t in node.inputs if t is not tensor]
            if len(other) != 1 or not isinstance(other[0], gs.Constant):
                break
            if node.op in ("Sub", "Div") and node.inputs[0] is not tensor:  # c - x, c / x: not x * a + b
                break
            arithmetic += 1
        else:
            break
        tensor = last = node.outputs[0]
    if not arithmetic:
        return None
    a, b = _evaluate(graph, last, axes.index(1))
    same = np.allclose(a, a[0]) and np.allclose(b, b[0])
    fmt = (lambda v: f"{v[0]:.6g}") if same else (lambda v: "[" + ", ".join(f"{x:.6g}" for x in v) + "]")
    return f"x * {fmt(a)} + {fmt(b)}"


def _evaluate(graph, tensor, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel gain and offset of ``tensor`` as a function of the (NCHW) input, with ONNX Runtime."""
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    sub = graph.copy()
    out = sub.tensors()[tensor.name]
    sub.outputs = [out.to_variable(dtype=np.float32, shape=None) if isinstance(out, gs.Variable) else out]
    sub.cleanup()
    shape = [d if isinstance(d, int) else 1 for d in sub.inputs[0].shape]
    session = ort.InferenceSession(gs.export_onnx(sub).SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    zero, full = (session.run(None, {name: np.full(shape, v, np.float32)})[0] for v in (0.0, 255.0))
    per_channel = lambda v: np.moveaxis(v, channel_axis, 0).reshape(v.shape[channel_axis], -1)[:, 0]  # noqa: E731
    return per_channel((full - zero) / 255.0), per_channel(zero)
