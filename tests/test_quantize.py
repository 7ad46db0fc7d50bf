"""Explicit INT8 (Q/DQ) and FP16 on the trained digits model, and the gate that guards them."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from conftest import assert_one_line_error
from edgekit.bundle import Bundle
from edgekit.quant.gate import evaluate, labelled_tensors
from edgekit.quant.qdq import entropy_threshold, score_head_nodes, tensorrt_qdq_problems

pytestmark = pytest.mark.slow


def _copy(bundle, tmp_path, name="b"):
    out = tmp_path / name
    shutil.copytree(bundle.path, out)
    return out


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.parent.rglob("*")) if p.is_file()}


def test_qdq_is_symmetric_int8_with_per_channel_weights(int8_bundle):
    model = onnx.load(int8_bundle.model_path("int8"))
    inits = {i.name: i for i in model.graph.initializer}
    quants = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quants, "no Q/DQ nodes"
    for q in quants:
        zp = inits[q.input[2]]
        assert zp.data_type == TensorProto.INT8, q.name
        assert not numpy_helper.to_array(zp).any(), q.name
    producers = {o: n for n in model.graph.node for o in n.output}
    image = model.graph.input[0].name
    first = [n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == image]
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[0] != image]
    assert len(first) == 1 and first[0].name in int8_bundle.models["int8"]["float_nodes"]  # reads [0, 1] pixels
    assert len(convs) >= 2
    for conv in convs:
        dq = producers[conv.input[0]]
        assert dq.op_type == "DequantizeLinear", f"{conv.name}: activation input not quantized"
        wdq = producers[conv.input[1]]
        assert wdq.op_type == "DequantizeLinear", f"{conv.name}: weight not quantized"
        out_channels = numpy_helper.to_array(inits[producers[wdq.input[0]].input[0]]).shape[0]
        assert numpy_helper.to_array(inits[wdq.input[1]]).shape == (out_channels,)
        assert next(a.i for a in wdq.attribute if a.name == "axis") == 0
    assert tensorrt_qdq_problems(model) == []


def test_score_head_stays_float(int8_bundle):
    model = onnx.load(int8_bundle.model_path("int8"))
    producers = {o: n for n in model.graph.node for o in n.output}
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert producers[softmax.input[0]].op_type not in ("DequantizeLinear", "QuantizeLinear")
    consumers = [n for n in model.graph.node if softmax.output[0] in n.input]
    assert not consumers  # the probabilities go straight out, unquantized
    head = score_head_nodes(onnx.load(int8_bundle.model_path("fp32")))
    assert {"Softmax", "MatMul"} <= {n.op_type for n in onnx.load(int8_bundle.model_path("fp32")).graph.node
                                      if n.name in head}
    assert set(int8_bundle.models["int8"]["float_nodes"]) >= {softmax.name}


def test_int8_agrees_with_fp32_on_unseen_images(int8_bundle, digits):
    x, y = labelled_tensors(int8_bundle, digits / "val")
    report = evaluate(int8_bundle, x, y, tensorrt=False)
    fp32, int8, fp16 = (report.result(k) for k in ("fp32", "int8", "fp16"))
    assert len(x) > 300
    assert fp32.accuracy > 50  # a trained model: INT8 quality means something only then
    assert int8.agreement >= 99.0, report.summary()
    assert abs(int8.drop) <= 1.0 and fp16.agreement >= 99.0
    assert int8.max_abs_error < 0.1 and fp16.max_abs_error < 0.01


def test_manifest_ranges_and_fp16(int8_bundle):
    entry = int8_bundle.models["int8"]
    assert entry["usable"] is True and entry["gate"]["drop"] <= 1.0
    assert entry["calibration"]["images"] == 500
    assert entry["calibration"]["method"] in ("entropy", "percentile", "minmax")
    ranges = json.loads((int8_bundle.path / entry["ranges"]).read_text())
    fp32 = onnx.load(int8_bundle.model_path("fp32"))
    names = {t for n in fp32.graph.node for t in n.output} | {fp32.graph.input[0].name}
    assert ranges["amax"] and set(ranges["amax"]) <= names
    assert ranges["amax"][fp32.graph.input[0].name] == pytest.approx(1.0, abs=0.01)  # pixels / 255
    assert all(v > 0 for v in ranges["amax"].values())
    half = onnx.load(int8_bundle.model_path("fp16"))
    io = [*half.graph.input, *half.graph.output]
    assert all(t.type.tensor_type.elem_type == TensorProto.FLOAT for t in io)
    assert any(i.data_type == TensorProto.FLOAT16 for i in half.graph.initializer)
    assert "int8_cpu" not in int8_bundle.models  # opt-in only
    Bundle.load(int8_bundle.path)  # hashes match


def test_entropy_is_not_minmax():
    """The histogram trap: entropy must clip a long tail that min-max keeps."""
    rng = np.random.default_rng(0)
    values = np.abs(np.concatenate([rng.normal(0, 1, 200_000), [40.0]]))
    hist, edges = np.histogram(values, bins=2048)
    t = entropy_threshold(hist, edges)
    assert 2.0 < t < 10.0 and edges[-1] == pytest.approx(40.0)


def test_gate_fails_on_constant_calibration_and_passes_on_a_good_one(fp32_bundle, digits, tmp_path, cli):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(40):
        cv2.imwrite(str(flat / f"{i}.png"), np.zeros((32, 32, 3), np.uint8))
    bad = _copy(fp32_bundle, tmp_path, "bad")
    result = cli("quantize", bad, "--images", flat, "--gate-images", digits / "val", "--no-fp16")
    assert_one_line_error(result, "failed the accuracy gate", "dropped", "marked unusable", "Try")
    assert result.code == 3
    saved = Bundle.load(bad)
    assert saved.models["int8"]["usable"] is False and saved.models["int8"]["gate"]["drop"] > 1.0
    assert json.loads((bad / "validation.json").read_text())["passed"] is False
    # The verdict sticks: --precision int8 is refused by run, bench, build and service install, and
    # auto (the default) skips it.
    video = digits / "val.mp4"
    for args in (("run", bad, "--source", video, "--precision", "int8", "--max-frames", 2),
                 ("bench", bad, "--precision", "int8", "--iterations", 2),
                 ("build", bad, "--precision", "int8"),
                 ("service", "install", bad, "--root", tmp_path / "root", "--source", video, "--precision", "int8")):
        refused = cli(*args)
        assert_one_line_error(refused, "int8 failed the quantize accuracy gate", "--allow-failed-gate")
        assert refused.code == 3
    auto = cli("bench", bad, "--iterations", 2, "--json", "--backend", "onnxruntime")
    assert auto.code == 0 and json.loads(auto.out)["precision"] == "fp32", auto

    good = _copy(fp32_bundle, tmp_path, "good")
    result = cli("quantize", good, "--images", digits / "train", "--gate-images", digits / "val", "--no-fp16")
    assert result.code == 0, result
    saved = Bundle.load(good)
    assert saved.models["int8"]["usable"] is True and saved.models["int8"]["gate"]["labelled"] is True
    assert set(saved.models["int8"]["calibration"]["candidates"]) == {"entropy", "percentile", "minmax"}
    assert tensorrt_qdq_problems(onnx.load(saved.model_path("int8"))) == []


def test_quantize_from_video_with_cpu_variant(fp32_bundle, digits, tmp_path, cli):
    from edgekit.backends.select import onnxruntime_model_key

    out = _copy(fp32_bundle, tmp_path)
    result = cli("quantize", out, "--images", digits / "val.mp4", "--every", 1, "--no-fp16", "--method", "minmax",
                 "--max-drop", 10, "--cpu-variant")
    assert result.code == 0, result
    saved = Bundle.load(out)
    entry = saved.models["int8"]
    assert entry["calibration"]["images"] + entry["calibration"]["held_out"] == len(
        (digits / "val.labels.txt").read_text().split())
    assert entry["gate"]["labelled"] is False  # a video has no labels: agreement with FP32 gates it
    assert saved.models["int8_cpu"]["for_backends"] == ["onnxruntime"]
    assert onnxruntime_model_key(saved, "int8") == "int8_cpu"
    # The CPU variant: uint8 activations (TensorRT must never get it), ReLUs fused into the ranges,
    # every layer but the score head quantized, so ONNX Runtime forms a QLinearConv chain.
    fp32_ops = [n.op_type for n in onnx.load(saved.model_path("fp32")).graph.node]
    cpu = onnx.load(saved.model_path("int8_cpu"))
    inits = {i.name: i for i in cpu.graph.initializer}
    activation_zps = [inits[n.input[2]] for n in cpu.graph.node if n.op_type == "QuantizeLinear"]
    assert activation_zps and all(zp.data_type == TensorProto.UINT8 for zp in activation_zps)
    assert "Relu" in fp32_ops and not any(n.op_type == "Relu" for n in cpu.graph.node)
    head = score_head_nodes(cpu)
    dq_outputs = {n.output[0] for n in cpu.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in cpu.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[0] in dq_outputs and n.input[1] in dq_outputs for n in convs)  # first one too
    head_layers = [n for n in cpu.graph.node if n.name in head and n.op_type in ("Gemm", "MatMul")]
    assert head_layers and all(n.input[1] in inits for n in head_layers)  # float weights in the score head
    # The TensorRT model is untouched by the variant: zero-point-0 INT8, per-channel weights, ReLUs kept.
    trt = onnx.load(saved.model_path("int8"))
    assert tensorrt_qdq_problems(trt) == []
    assert [n.op_type for n in trt.graph.node].count("Relu") == fp32_ops.count("Relu")


@pytest.mark.parametrize("case", ["empty", "tiny", "not-video", "no-fp32", "bad-method", "keep-float"])
def test_bad_inputs_leave_the_bundle_untouched(case, fp32_bundle, tmp_path, cli):
    bundle = _copy(fp32_bundle, tmp_path / "work")
    images = tmp_path / "imgs"
    images.mkdir()
    args = []
    if case == "tiny":
        for i in range(5):
            cv2.imwrite(str(images / f"{i}.png"), np.full((32, 32, 3), i * 40, np.uint8))
    elif case == "not-video":
        images = tmp_path / "clip.avi"
        images.write_bytes(os.urandom(2000))
    elif case == "no-fp32":
        manifest = json.loads((bundle / "edgekit.json").read_text())
        del manifest["models"]["fp32"]
        (bundle / "edgekit.json").write_text(json.dumps(manifest))
    elif case == "bad-method":
        args = ["--method", "kl"]
    elif case == "keep-float":
        for i in range(40):
            cv2.imwrite(str(images / f"{i}.png"), np.full((32, 32, 3), i * 6, np.uint8))
        args = ["--keep-float", "no_such_node"]
    before = _snapshot(bundle)
    result = cli("quantize", bundle, "--images", images, *args)
    fragment = {"empty": "holds no calibration images", "tiny": "at least 16", "not-video": "not a readable video",
                "no-fp32": "no fp32 model", "bad-method": "", "keep-float": "no node named no_such_node"}[case]
    if case == "bad-method":
        assert result.code == 2 and "Traceback" not in result.err
    else:
        assert_one_line_error(result, fragment)
    assert _snapshot(bundle) == before  # nothing written, nothing left behind
