"""A tiny colour classifier made of plain ONNX ops, needing no TensorFlow.

It is ``doctor --selftest``'s model and the test suite's fast bundle: a 1x1 Conv, ReLU, global
average pooling, a Gemm and Softmax, labelled ``red``/``green``/``blue``. A frame of one saturated
colour is classified as that colour with a probability near 1, so results are checkable. Its FP16
and Q/DQ INT8 twins (built with ``onnx.helper``) let the self-test prove every TensorRT precision.
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


def _weights():
    conv_w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1) * 2.0
    fc_w = np.eye(3, dtype=np.float32) * 5.0
    return conv_w, np.zeros(3, np.float32), fc_w, np.zeros(3, np.float32)


def _model(nodes, initializers, batch, size, name):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, len(LABELS)])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgekit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _head(src: str, conv_w: str, dtype_suffix: str = "") -> list:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax, from tensor ``src``."""
    from onnx import helper

    s = dtype_suffix
    return [
        helper.make_node("Conv", [src, conv_w, f"conv_b{s}"], ["conv"], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", f"fc_w{s}", f"fc_b{s}"], ["logits"], name="fc", transB=1),
    ]


def tiny_classifier(size: int = SIZE, batch: int | str = "batch"):
    """The colour classifier as an ``onnx.ModelProto`` (input NCHW float32 RGB in [0, 1])."""
    from onnx import helper, numpy_helper

    nodes = _head("input", "conv_w") + [helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1)]
    inits = [numpy_helper.from_array(a, n) for a, n in zip(_weights(), ("conv_w", "conv_b", "fc_w", "fc_b"))]
    return _model(nodes, inits, batch, size, "edgekit_tiny")


def tiny_classifier_fp16(size: int = SIZE, batch: int | str = "batch"):
    """The classifier computing in FP16 with FP32 input and output (what TensorRT 11 builds as FP16)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(a.astype(np.float16), n + "_h") for a, n in zip(_weights(), ("conv_w", "conv_b", "fc_w", "fc_b"))]
    nodes = (
        [helper.make_node("Cast", ["input"], ["input_h"], name="to_fp16", to=TensorProto.FLOAT16)]
        + _head("input_h", "conv_w_h", "_h")
        + [
            helper.make_node("Softmax", ["logits"], ["probs_h"], name="softmax", axis=1),
            helper.make_node("Cast", ["probs_h"], ["probs"], name="to_fp32", to=TensorProto.FLOAT),
        ]
    )
    return _model(nodes, inits, batch, size, "edgekit_tiny_fp16")


def tiny_classifier_qdq(size: int = SIZE, batch: int | str = "batch"):
    """The classifier with TensorRT-legal Q/DQ: symmetric INT8, zero-point 0, per-channel weights on axis 0.

    The input (in [0, 1]) and the Conv weights are quantized; the classifier Gemm and Softmax stay float.
    """
    from onnx import helper, numpy_helper

    conv_w, conv_b, fc_w, fc_b = _weights()
    w_scale = np.abs(conv_w).reshape(3, -1).max(axis=1) / 127.0
    w_q = np.round(conv_w / w_scale.reshape(3, 1, 1, 1)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.float32(1.0 / 127.0), "x_scale"),
        numpy_helper.from_array(np.int8(0), "x_zero"),
        numpy_helper.from_array(w_q, "conv_w_q"),
        numpy_helper.from_array(w_scale.astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(3, np.int8), "w_zero"),
        numpy_helper.from_array(conv_b, "conv_b"),
        numpy_helper.from_array(fc_w, "fc_w"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    nodes = (
        [
            helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["input_q"], name="input_q"),
            helper.make_node("DequantizeLinear", ["input_q", "x_scale", "x_zero"], ["input_dq"], name="input_dq"),
            helper.make_node("DequantizeLinear", ["conv_w_q", "w_scale", "w_zero"], ["conv_w"], name="conv_w_dq", axis=0),
        ]
        + _head("input_dq", "conv_w")
        + [helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1)]
    )
    return _model(nodes, inits, batch, size, "edgekit_tiny_int8")


def colour_frames(size: int = SIZE) -> np.ndarray:
    """Frames (uint8 BGR) of pure red, green and blue and two mixes: the self-test's inputs."""
    bgr = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (40, 200, 90), (180, 60, 30)]
    return np.stack([np.full((size, size, 3), c, np.uint8) for c in bgr])


def write_tiny_bundle(
    path: str | os.PathLike, size: int = SIZE, force: bool = False, variants: bool = False
) -> Bundle:
    """Write the colour classifier as a complete fp32 bundle at ``path``.

    With ``variants`` the bundle also holds the fp16 model and the Q/DQ int8 model (doctor's self-test).
    """
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
        if variants:
            onnx.save(tiny_classifier_fp16(size), tmp / "model.fp16.onnx")
            bundle.add_model("fp16", tmp / "model.fp16.onnx", "model.fp16.onnx")
            onnx.save(tiny_classifier_qdq(size), tmp / "model.int8.onnx")
            bundle.add_model("int8", tmp / "model.int8.onnx", "model.int8.onnx", quantization="qdq-s8s8")
        bundle.save()
    return Bundle.load(Path(path))


def natural_frames(size: int = SIZE, count: int = 12, seed: int = 0) -> np.ndarray:
    """Frames (uint8 BGR) like a camera's: smooth mixed-colour shading plus sensor noise. The self-test's inputs.

    Unlike :func:`colour_frames`, where every probability but the top one is below 0.015, these give
    the classifier spread probabilities (top class 0.38-0.79 at the default seed), so an engine that
    returns the wrong vectors (one-hot, uniform, permuted, badly quantized) errs by far more than
    a correct INT8 engine does.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    frames = np.empty((count, size, size, 3))
    for frame in frames:
        for c in range(3):
            fx, fy = rng.uniform(0.5, 3, 2)
            px, py = rng.uniform(0, 2 * np.pi, 2)
            shade = np.sin(2 * np.pi * fx * xx + px) * np.cos(2 * np.pi * fy * yy + py)
            frame[..., c] = rng.uniform(60, 170) + rng.uniform(20, 80) * shade
        frame += rng.normal(0, 10, frame.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)
