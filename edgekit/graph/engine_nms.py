"""A detector's TensorRT model, edited for the engine being built: the NMS score threshold it runs at,
and the EfficientNMS_TRT attributes this device's TensorRT reads. Uses ``onnx`` only (no TensorRT).

The bundle's ``.trt.onnx`` ends in EfficientNMS_TRT (attribute ``score_threshold``) or in ONNX
``NonMaxSuppression`` (the initializer :data:`edgekit.nms.NATIVE_SCORE_THRESHOLD`); the builder sets
either to the threshold of the engine it builds, so the camera loop's engine and validate's differ.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import DeviceError, ModelError
from edgekit.nms import NATIVE_SCORE_THRESHOLD

PLUGIN = "EfficientNMS_TRT"


def version_tuple(version: str | None) -> tuple[int, int]:
    """``"8.5.2.2"`` -> (8, 5); an unknown version counts as new."""
    try:
        major, minor = (int(v) for v in str(version).split(".")[:2])
    except ValueError:
        return (99, 0)
    return major, minor


def check_class_agnostic(attrs: dict, tensorrt_version: str | None) -> None:
    """Refuse a class-agnostic EfficientNMS_TRT on TensorRT < 8.6, whose parser drops the attribute
    silently (per-class NMS on TensorRT, class-agnostic on ONNX Runtime)."""
    if attrs.get("class_agnostic") and version_tuple(tensorrt_version) < (8, 6):
        raise DeviceError(
            f"this bundle's NMS is class-agnostic, which TensorRT's NMS plugin reads only from TensorRT 8.6; this "
            f"device has TensorRT {tensorrt_version}, which would run per-class NMS: re-export the detector with "
            "`edgekit export --nms native` (ONNX NonMaxSuppression), or run it with --backend onnxruntime"
        )


def edit_for_engine(model, score_threshold: float | None, tensorrt_version: str | None) -> list[str]:
    """Set the NMS score threshold of ``model`` (an onnx ModelProto, edited in place) and check its plugin
    against ``tensorrt_version``; returns the settings written (``["score_threshold=0.25"]``), [] for none."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    plugins = [n for n in graph.node if n.op_type == PLUGIN]
    natives = [t for t in graph.initializer if t.name == NATIVE_SCORE_THRESHOLD]
    if not plugins and not natives:
        return []
    for node in plugins:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        check_class_agnostic(attrs, tensorrt_version)
    if score_threshold is None:
        return []
    value = float(score_threshold)
    for node in plugins:
        kept = [a for a in node.attribute if a.name != "score_threshold"]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("score_threshold", value)])
    for tensor in natives:
        shape = tuple(numpy_helper.to_array(tensor).shape)
        tensor.CopyFrom(numpy_helper.from_array(np.full(shape, value, np.float32), NATIVE_SCORE_THRESHOLD))
    return [f"score_threshold={value:g}"]


def engine_model(path: Path, score_threshold: float | None, tensorrt_version: str | None) -> tuple[bytes | None, str | None]:
    """``(edited ONNX bytes, settings for the cache key)`` for the detector model at ``path``; ``(None, None)``
    when the model has no NMS to set (TensorRT then parses the file itself)."""
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # a truncated or foreign file: one line, not a protobuf traceback
        raise ModelError(f"cannot read {path.name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from exc
    settings = edit_for_engine(model, score_threshold, tensorrt_version)
    if not settings:
        return None, None
    return model.SerializeToString(), ",".join(settings)
