"""A tiny colour classifier made of plain ONNX ops, needing no TensorFlow.

It is ``doctor --selftest``'s model and the test suite's fast bundle: a 1x1 Conv, ReLU, global
average pooling, a Gemm and Softmax, labelled ``red``/``green``/``blue``. A frame of one saturated
colour is classified as that colour with a probability near 1, so results are checkable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekit import __version__
from edgekit.atomic import atomic_dir
from edgekit.bundle import SCHEMA_VERSION, Bundle
from edgekit.preprocess import Preprocess

LABELS = ["red", "green", "blue"]
SIZE = 32
OPSET = 17


def tiny_classifier(size: int = SIZE, batch: int | str = "batch"):
    """The colour classifier as an ``onnx.ModelProto`` (input NCHW float32 RGB in [0, 1])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    conv_w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1) * 2.0
    conv_b = np.zeros(3, np.float32)
    fc_w = np.eye(3, dtype=np.float32) * 5.0
    fc_b = np.zeros(3, np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "edgekit_tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, len(LABELS)])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(conv_b, "conv_b"),
            numpy_helper.from_array(fc_w, "fc_w"),
            numpy_helper.from_array(fc_b, "fc_b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgekit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_tiny_bundle(path: str | os.PathLike, size: int = SIZE, force: bool = False) -> Bundle:
    """Write the colour classifier as a complete fp32 bundle at ``path``."""
    import onnx

    prep = Preprocess(size=(size, size), resize="stretch", color="RGB", scale=1 / 255)
    with atomic_dir(path, force=force) as tmp:
        onnx.save(tiny_classifier(size), tmp / "model.onnx")
        bundle = Bundle(
            tmp,
            {
                "schema_version": SCHEMA_VERSION,
                "task": "classification",
                "labels": LABELS,
                "input": {"name": "input", "shape": ["batch", 3, size, size], "layout": "NCHW", "dtype": "float32"},
                "preprocess": prep.to_dict(),
                "outputs": [{"name": "probs", "meaning": "probabilities"}],
                "models": {},
                "source": {"format": "onnx", "path": "edgekit.tiny"},
                "opset": OPSET,
                "target": {},
                "tools": {"edgekit": __version__},
            },
        )
        bundle.add_model("fp32", tmp / "model.onnx", "model.onnx")
        bundle.save()
    return Bundle.load(Path(path))
