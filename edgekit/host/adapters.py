"""Adapters for detectors whose decoding lives outside their ``call``.

keras-hub's object detectors (``RetinaNetObjectDetector``) return anchor deltas and class logits from
``call``; their anchors (``anchor_generator``), the delta decoding and the NMS (``prediction_decoder``)
run only in ``predict``. :func:`detector_function` wraps such a model so that one TensorFlow function
does the anchor decoding too and returns edgekit's detection contract - ``boxes`` [B, N, 4] corners
``[x1, y1, x2, y2]`` normalised to the input and ``scores`` [B, N, C] probabilities - which export then
converts whole (TensorRT runs all of it and EfficientNMS_TRT is appended). :func:`detector_nms` gives
the NMS parameters that reproduce the model's own ``prediction_decoder``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from edgekit.errors import ModelError

MAX_CONFIG = 64 * 1024 * 1024  # bytes of a .keras file's config.json read to see which packages it needs


def needs_keras_hub(path: Path) -> bool:
    """Whether a ``.keras`` file's config names keras-hub classes (which must be imported to load)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open("config.json") as f:
            return b'"keras_hub' in f.read(MAX_CONFIG)
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def import_keras_hub() -> None:
    """Import keras-hub (it registers its classes with Keras); ModelError saying how to install it."""
    try:
        import keras_hub  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"this model is made of keras-hub layers: pip install 'edgekit[keras-hub]' ({exc})") from exc


def is_anchor_detector(model) -> bool:
    """A keras-hub object detector: anchors and NMS outside ``call``."""
    return all(hasattr(model, a) for a in ("anchor_generator", "prediction_decoder", "decode_predictions"))


def detector_function(model):
    """``fn(images NHWC float32) -> [boxes, scores]`` with ``model``'s anchor decoding inside."""
    import keras
    from keras import ops

    decoder = model.prediction_decoder
    generator = model.anchor_generator

    def fn(images):
        raw = model(images, training=False)
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ModelError("an anchor detector needs a fixed input size (its anchors depend on it)")
        anchors = ops.concatenate(list(generator(images).values()), axis=0)
        boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
            anchors=anchors, boxes_delta=raw["bbox_regression"], encoded_format="center_xywh",
            anchor_format=generator.bounding_box_format, box_format="xyxy", image_shape=(height, width, 3))
        boxes = keras.utils.bounding_boxes.convert_format(boxes, source="xyxy", target="rel_xyxy",
                                                          height=height, width=width)
        logits = raw["cls_logits"]
        return [boxes, ops.sigmoid(logits) if decoder.from_logits else logits]

    return fn


def detector_nms(model) -> dict:
    """NMS parameters equal to the model's ``prediction_decoder`` (keras-hub's is class-agnostic: it
    keeps each box's best class)."""
    d = model.prediction_decoder
    return {"iou_threshold": float(d.iou_threshold), "score_threshold": float(d.confidence_threshold),
            "max_detections": int(d.max_detections), "class_agnostic": True}
