"""Small detectors and labelled detection images for the detection tests (legit fixtures, random weights).

``native_detector``: a Keras model meeting edgekit's detection contract (boxes [B, N, 4] corners in
[0, 1], scores [B, N, C] sigmoid), decoded in the graph. ``tf_nms_detector``: the same heads ending in
``tf.image.combined_non_max_suppression`` (a bring-your-own TF detector). ``digit_scenes``: real
handwritten digits (scikit-learn's) pasted on noisy canvases, with a COCO annotation file (on a
flat background every empty grid cell would score the same, and NMS implementations break such
ties differently).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

SIZE = 64
GRID = 8
CLASSES = 3


@functools.lru_cache(maxsize=None)
def _layers():
    from edgekit.host import import_tf

    tf, keras = import_tf()

    @keras.saving.register_keras_serializable(package="edgekit_tests")
    class DecodeBoxes(keras.layers.Layer):
        """Per grid cell: centre offset and size (sigmoid) -> corners normalised to the input."""

        def call(self, raw, logits):
            n = tf.shape(raw)[0]
            raw = tf.reshape(tf.sigmoid(raw), (n, GRID * GRID, 4))
            ys, xs = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
            cells = tf.constant(np.stack([xs, ys], -1).reshape(1, -1, 2), tf.float32)
            centre = (cells + raw[..., :2]) / GRID
            half = raw[..., 2:] * 0.25
            boxes = tf.clip_by_value(tf.concat([centre - half, centre + half], -1), 0.0, 1.0)
            scores = tf.reshape(tf.sigmoid(logits), (n, GRID * GRID, CLASSES))
            return boxes, scores

    @keras.saving.register_keras_serializable(package="edgekit_tests")
    class CombinedNMS(keras.layers.Layer):
        """TensorFlow's combined NMS on [y1, x1, y2, x2] boxes, as TF detectors end."""

        def call(self, boxes, scores):
            yx = tf.gather(boxes, [1, 0, 3, 2], axis=-1)
            r = tf.image.combined_non_max_suppression(yx[:, :, None, :], scores, 20, 20, iou_threshold=0.5,
                                                      score_threshold=0.2)
            return r.nmsed_boxes, r.nmsed_scores, r.nmsed_classes, r.valid_detections

    @keras.saving.register_keras_serializable(package="edgekit_tests")
    class SingleImageNMS(keras.layers.Layer):
        """``non_max_suppression_with_scores`` (v5) on the first image's best class score, unpadded."""

        def call(self, boxes, scores):
            yx = tf.gather(boxes[0], [1, 0, 3, 2], axis=-1)
            best = tf.reduce_max(scores[0], -1)
            idx, kept = tf.image.non_max_suppression_with_scores(yx, best, 15, iou_threshold=0.4, score_threshold=0.25)
            return tf.gather(yx, idx)[None], kept[None]

    @keras.saving.register_keras_serializable(package="edgekit_tests")
    class PerImageNMS(keras.layers.Layer):
        """NMS v4 (padded) per image inside ``tf.map_fn``: tf2onnx puts it in a Loop, which the cut refuses."""

        def call(self, boxes, scores):
            def one(args):
                b, s = args
                idx = tf.raw_ops.NonMaxSuppressionV4(boxes=b, scores=tf.reduce_max(s, -1), max_output_size=10,
                                                     iou_threshold=0.4, score_threshold=0.2,
                                                     pad_to_max_output_size=True)[0]
                return tf.gather(b, idx)

            return tf.map_fn(one, (boxes, scores), fn_output_signature=tf.float32)

    return keras, DecodeBoxes, {"combined": CombinedNMS, "v5": SingleImageNMS, "map_fn": PerImageNMS}


def build_detector(path: Path, tf_nms: str | None = None, seed: int = 0) -> Path:
    """Write a random-weight detector (.keras) and, for a native one, its sidecar saying ``task: detection``.

    ``tf_nms``: ``combined`` ends it in ``combined_non_max_suppression``; ``v5`` in
    ``non_max_suppression_with_scores`` on one image (a batch-1 model); ``map_fn`` in NMS v4 per image
    inside ``tf.map_fn`` (not cuttable).
    """
    keras, DecodeBoxes, nms_layers = _layers()
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3), batch_size=1 if tf_nms == "v5" else None)
    x = inp
    for filters in (8, 16, 16):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    raw = keras.layers.Conv2D(4, 1)(x)
    logits = keras.layers.Conv2D(CLASSES, 1, bias_initializer=keras.initializers.Constant(-1.0))(x)
    boxes, scores = DecodeBoxes()(raw, logits)
    outputs = nms_layers[tf_nms]()(boxes, scores) if tf_nms else [boxes, scores]
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    keras.Model(inp, outputs).save(path)
    sidecar = {"labels": ["digit"] if tf_nms == "v5" else ["zero", "one", "two"],
               "preprocess": {"size": [SIZE, SIZE], "resize": "stretch", "color": "RGB", "scale": 1 / 255}}
    if not tf_nms:
        sidecar["task"] = "detection"
    Path(f"{path}.edgekit.json").write_text(json.dumps(sidecar))
    return path


def digit_scenes(out: Path, n: int = 24, seed: int = 0) -> Path:
    """``out/images/*.png`` (SIZE x SIZE scenes of 1-3 real digits 0-2) and ``out/annotations.json`` (COCO)."""
    import cv2

    from edgekit.sample_data import load_digits_images

    rng = np.random.default_rng(seed)
    digits, labels = load_digits_images(24)
    pick = np.flatnonzero(labels < CLASSES)
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": str(i)} for i in range(CLASSES)]}
    for i in range(n):
        canvas = rng.integers(0, 40, (SIZE, SIZE, 3), dtype=np.uint8)  # sensor noise: no tied scores
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.choice(pick))
            s = int(rng.integers(14, 26))
            x, y = (int(v) for v in rng.integers(0, SIZE - s, 2))
            patch = cv2.resize(digits[j], (s, s))
            patch = patch if patch.ndim == 3 else np.repeat(patch[..., None], 3, -1)
            canvas[y:y + s, x:x + s] = np.maximum(canvas[y:y + s, x:x + s], patch)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "iscrowd": 0,
                                        "category_id": int(labels[j]), "bbox": [x, y, s, s], "area": s * s})
        name = f"scene_{i:03d}.png"
        cv2.imwrite(str(out / "images" / name), canvas)
        coco["images"].append({"id": i, "file_name": name, "width": SIZE, "height": SIZE})
    (out / "annotations.json").write_text(json.dumps(coco))
    return out


def labels_from_fp32(bundle, images: Path, out: Path) -> Path:
    """``out/images`` + ``out/annotations.json``: ``images`` labelled (COCO) with the bundle's FP32 detections
    at its run threshold, so FP32 scores ~100 % mAP@0.5 on them and a model that detects differently
    scores less: a labelled set on which a random-weight detector's INT8 gate has something to lose."""
    import shutil

    import cv2

    from edgekit.backends.select import open_runner

    (out / "images").mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(bundle.labels)]}
    with open_runner(bundle, "onnxruntime", "fp32") as runner:
        for i, file in enumerate(sorted(images.glob("*.png"))):
            image = cv2.imread(str(file))
            shutil.copy(file, out / "images" / file.name)
            dets = runner.infer(bundle.preprocess.batch([image]))
            h, w = image.shape[:2]
            coco["images"].append({"id": i, "file_name": file.name, "width": w, "height": h})
            n = int(dets["num_detections"][0, 0])
            for (x1, y1, x2, y2), c in zip(dets["detection_boxes"][0, :n] * [w, h, w, h], dets["detection_classes"][0, :n]):
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "iscrowd": 0,
                                            "category_id": int(c), "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                            "area": float((x2 - x1) * (y2 - y1))})
    (out / "annotations.json").write_text(json.dumps(coco))
    return out


def onnx_nms(boxes, scores, iou, score, per_class=10000):
    """ONNX NonMaxSuppression on ``boxes`` [B, N, 4] and ``scores`` [B, N, C]: selected [K, 3] (b, c, n)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["scores"], ["scores_bcn"], perm=[0, 2, 1]),
         helper.make_node("NonMaxSuppression", ["boxes", "scores_bcn", "max", "iou", "thr"], ["selected"])],
        "reference",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, None)],
        [helper.make_tensor("max", TensorProto.INT64, [1], [per_class]),
         helper.make_tensor("iou", TensorProto.FLOAT, [1], [iou]),
         helper.make_tensor("thr", TensorProto.FLOAT, [1], [score])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"boxes": boxes, "scores": scores})[0]
