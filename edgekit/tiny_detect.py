"""A tiny detector of coloured cards made of plain ONNX ops, needing no TensorFlow or training.

It finds solid red, green and blue cards of one size (``CARD`` pixels, width x height) on grey
scenes: a colour mask per class (the channel above the other two), averaged over a card-sized window
every 2 pixels; the average (the part of the window the card covers) is the score and the window the
box. With edgekit's NMS it reports each card once. It is the detector of the tracking sample
(``edgekit sample-data --task track``): what it sees is exactly known, so the tracker and the line
counts are what a test of them measures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekit import __version__
from edgekit.atomic import atomic_dir
from edgekit.bundle import SCHEMA_VERSION, Bundle
from edgekit.nms import NmsParams
from edgekit.preprocess import Preprocess

LABELS = ["red", "green", "blue"]
CARD = (24, 32)  # width, height in pixels
STRIDE = 2
OPSET = 17


def card_detector(size=(240, 320)):
    """The detector as an ``onnx.ModelProto``: input [1, 3, H, W] RGB in [0, 1]; ``boxes`` [1, N, 4]
    (x1, y1, x2, y2 normalised) and ``scores`` [1, N, 3]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = size
    cw, ch = CARD
    ys, xs = np.arange(0, h - ch + 1, STRIDE), np.arange(0, w - cw + 1, STRIDE)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.stack([gx / w, gy / h, (gx + cw) / w, (gy + ch) / h], -1).reshape(1, -1, 4).astype(np.float32)
    n = boxes.shape[1]
    consts = {"boxes_c": boxes, "margin": np.float32(0.25), "gain": np.float32(4.0), "zero": np.float32(0.0),
              "one": np.float32(1.0), "shape": np.array([1, 3, n], np.int64)}
    nodes = [helper.make_node("Split", ["input"], ["r", "g", "b"], axis=1)]
    for c, others in (("r", "gb"), ("g", "rb"), ("b", "rg")):
        nodes += [
            helper.make_node("Max", [others[0], others[1]], [f"{c}_rest"]),
            helper.make_node("Sub", [c, f"{c}_rest"], [f"{c}_d"]),
            helper.make_node("Sub", [f"{c}_d", "margin"], [f"{c}_m"]),
            helper.make_node("Mul", [f"{c}_m", "gain"], [f"{c}_g"]),
            helper.make_node("Clip", [f"{c}_g", "zero", "one"], [f"{c}_mask"]),
        ]
    nodes += [
        helper.make_node("Concat", ["r_mask", "g_mask", "b_mask"], ["masks"], axis=1),
        helper.make_node("AveragePool", ["masks"], ["cover"], kernel_shape=[ch, cw], strides=[STRIDE, STRIDE]),
        helper.make_node("Reshape", ["cover", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["scores"], perm=[0, 2, 1]),
        helper.make_node("Identity", ["boxes_c"], ["boxes"]),
    ]
    graph = helper.make_graph(
        nodes, "edgekit_cards",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, n, len(LABELS)])],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgekit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_card_detector(path: str | os.PathLike, size=(240, 320), force: bool = False) -> Bundle:
    """Write the card detector as an fp32 detection bundle at ``path`` (ONNX Runtime runs it; NMS in edgekit)."""
    import onnx

    h, w = size
    prep = Preprocess(size=(h, w), resize="stretch", color="RGB", scale=1 / 255)
    nms = NmsParams(score_threshold=0.6, eval_score_threshold=0.3, iou_threshold=0.3, max_detections=20)
    with atomic_dir(path, force=force) as tmp:
        onnx.save(card_detector(size), tmp / "model.onnx")
        bundle = Bundle(tmp, {
            "schema_version": SCHEMA_VERSION,
            "task": "detection",
            "labels": LABELS,
            "input": {"name": "input", "shape": [1, 3, h, w], "layout": "NCHW", "dtype": "float32"},
            "preprocess": prep.to_dict(),
            "outputs": [{"name": "boxes", "meaning": "boxes"}, {"name": "scores", "meaning": "scores"}],
            "nms": nms.to_dict(),
            "models": {},
            "source": {"format": "onnx", "path": "edgekit.tiny_detect"},
            "opset": OPSET,
            "target": {},
            "tools": {"edgekit": __version__},
        })
        bundle.add_model("fp32", tmp / "model.onnx", "model.onnx")
        bundle.save()
    return Bundle.load(Path(path))
