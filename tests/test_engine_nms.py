"""The NMS TensorRT builds into a detector's engine, checked on the CPU: the loop's engine carries the run
threshold (at least 0.01), validate's the eval threshold, and the cache key tells them apart; a
class-agnostic plugin is refused on TensorRT < 8.6; the CPU NMS keeps the plugin's pre-NMS top-k and
suppresses at IoU >= threshold; IoU 0 and unknown TensorRT releases are refused.

No TensorRT here: TensorRTRunner.from_bundle is replaced by a FAKE that records its BuildOptions (the
real build is `edgekit run BUNDLE --backend tensorrt` on a Jetson).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_one_line_error

from edgekit.backends.tensorrt.gpus import plugin_top_k
from edgekit.errors import DeviceError, UsageError
from edgekit.nms import NmsParams, efficient_nms

NMS = {"score_threshold": 0.25, "eval_score_threshold": 0.001, "iou_threshold": 0.5, "max_detections": 4}


def _detector_bundle(path, class_agnostic: bool = False, score_threshold: float = 0.25):
    """A detection bundle whose TensorRT model is EfficientNMS_TRT over a sliced input [1, 8, 7]."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.bundle import Bundle

    path.mkdir(parents=True)
    attrs = dict(background_class=-1, box_coding=0, iou_threshold=0.5, max_output_boxes=4, plugin_version="1",
                 score_activation=0, score_threshold=0.001)
    if class_agnostic:
        attrs["class_agnostic"] = 1
    nodes = [helper.make_node("Slice", ["input", "s0", "s4", "ax"], ["boxes"]),
             helper.make_node("Slice", ["input", "s4", "s7", "ax"], ["scores"]),
             helper.make_node("EfficientNMS_TRT", ["boxes", "scores"],
                              ["num_detections", "detection_boxes", "detection_scores", "detection_classes"], **attrs)]
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s0", 0), ("s4", 4), ("s7", 7), ("ax", 2))]
    graph = helper.make_graph(nodes, "nms", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 7])],
                              [helper.make_tensor_value_info("num_detections", TensorProto.INT32, [1, 1])],
                              initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path / "model.trt.onnx")
    onnx.save(model, path / "model.onnx")  # stands in for the pre-NMS graph: only the TensorRT one is read
    nms = dict(NMS, score_threshold=score_threshold, class_agnostic=class_agnostic)
    return Bundle(path, {"task": "detection", "input": {"name": "input", "shape": [1, 8, 7]}, "nms": nms,
                         "models": {"fp32": {"path": "model.onnx", "usable": True,
                                             "tensorrt": {"path": "model.trt.onnx"}}}})


class FakeRunner:
    """FAKE TensorRT runner: records the BuildOptions a real one would build with; never runs."""

    name = "tensorrt"

    def __init__(self, options):
        self.options = options


@pytest.fixture
def fake_tensorrt(monkeypatch):
    from edgekit.backends import select
    from edgekit.backends.tensorrt import runner as trt_runner
    from edgekit.backends.tensorrt.recipe import BuildOptions

    monkeypatch.setattr(select, "tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_runner.TensorRTRunner, "from_bundle",
                        staticmethod(lambda bundle, precision="fp32", **o: FakeRunner(BuildOptions(precision=precision, **o))))


def test_loop_and_validate_engines_carry_their_own_nms_threshold(tmp_path, fake_tensorrt):
    from edgekit.backends.select import open_runner
    from edgekit.backends.tensorrt.builder import device_key
    from edgekit.graph.engine_nms import engine_model
    from edgekit.backends.tensorrt.recipe import BuildOptions

    bundle = _detector_bundle(tmp_path / "det")
    loop = open_runner(bundle, "tensorrt", "fp32")  # `edgekit run`: the manifest's run threshold
    low = open_runner(bundle, "tensorrt", "fp32", score_threshold=0.005)  # below the plugin's fast path: clamped
    validate = open_runner(bundle, "tensorrt", "fp32", score_threshold=0.001)  # as detection_gate opens it
    assert [r.inner.options.nms_score_threshold for r in (loop, low, validate)] == [0.25, 0.01, 0.001]
    assert (low.engine_threshold, low.score_threshold) == (0.01, 0.005)

    import onnx
    from onnx import helper

    settings = []
    for threshold in (0.25, 0.001):
        data, nms = engine_model(bundle.path / "model.trt.onnx", threshold, "10.3.0")
        plugin = next(n for n in onnx.load_from_string(data).graph.node if n.op_type == "EfficientNMS_TRT")
        attrs = {a.name: helper.get_attribute_value(a) for a in plugin.attribute}
        assert attrs["score_threshold"] == pytest.approx(threshold) and attrs["iou_threshold"] == pytest.approx(0.5)
        settings.append(nms)
    shapes = ((1, 8, 7),) * 3
    keys = [device_key(BuildOptions(), "ab" * 32, shapes, nms=s) for s in settings]
    assert settings == ["score_threshold=0.25", "score_threshold=0.001"]
    assert keys[0].choice_id() != keys[1].choice_id()  # two engines in the cache, not one overwriting the other
    assert "nms" not in device_key(BuildOptions(), "ab" * 32, shapes).to_dict()  # classifiers keep their keys


def test_class_agnostic_plugin_is_refused_on_tensorrt_8_5(tmp_path):
    from edgekit.graph.engine_nms import engine_model

    bundle = _detector_bundle(tmp_path / "det", class_agnostic=True)
    with pytest.raises(DeviceError) as err:
        engine_model(bundle.path / "model.trt.onnx", 0.25, "8.5.2.2")  # JetPack 5.1
    message = str(err.value)
    assert "TensorRT 8.5.2.2" in message and "--nms native" in message and "\n" not in message
    assert engine_model(bundle.path / "model.trt.onnx", 0.25, "8.6.2")[1] == "score_threshold=0.25"
    plain = _detector_bundle(tmp_path / "plain")
    assert engine_model(plain.path / "model.trt.onnx", None, "8.5.2.2") == (None, None)  # per-class: fine on 8.5


def test_cpu_nms_suppresses_at_iou_equal_to_the_threshold():
    boxes = np.array([[[0, 0, 3, 1], [1, 0, 4, 1], [10, 10, 11, 11]]], np.float32)  # IoU(0, 1) = 2 / 4 exactly
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    tie = efficient_nms(boxes, scores, score_threshold=0.1, iou_threshold=0.5, max_output_boxes=3)
    assert tie["num_detections"][0, 0] == 2 and tie["detection_scores"][0, :2].tolist() == pytest.approx([0.9, 0.7])
    above = efficient_nms(boxes, scores, score_threshold=0.1, iou_threshold=0.51, max_output_boxes=3)
    assert above["num_detections"][0, 0] == 3


def test_cpu_nms_keeps_the_plugins_pre_nms_top_k(monkeypatch):
    import inspect

    from edgekit.backends.detection import DetectionRunner
    from edgekit.backends.tensorrt import probe

    assert [plugin_top_k(cc) for cc in ("5.3", "6.2", "7.2", "8.7", "12.0", None)] == [2000, 2000, 5000, 5000, 5000, 5000]
    assert inspect.signature(efficient_nms).parameters["pre_nms_top_k"].default == 5000
    n = 300  # disjoint boxes, one class, distinct scores: only the top-k limits what is kept
    x = np.arange(n, dtype=np.float32)
    boxes = np.stack([x * 2, np.zeros(n), x * 2 + 1, np.ones(n)], -1)[None].astype(np.float32)
    scores = np.linspace(1.0, 0.5, n, dtype=np.float32)[None, :, None]
    kept = [efficient_nms(boxes, scores, score_threshold=0.1, iou_threshold=0.5, max_output_boxes=n,
                          pre_nms_top_k=k)["num_detections"][0, 0] for k in (5000, 120)]
    assert kept == [n, 120]
    # the CPU path imitates the plugin of the GPU present (a FAKE Jetson Nano answer here)
    monkeypatch.setattr(probe, "gpu_info", lambda device=0: {"compute_capability": "5.3"})
    assert DetectionRunner(FakeRunner(None), NmsParams()).pre_nms_top_k == 2000
    assert NmsParams(max_detections=5000).max_detections == 5000  # the old 4096 limit had no basis
    with pytest.raises(UsageError, match="1-5000"):
        NmsParams(max_detections=5001)


def test_iou_threshold_zero_is_refused(cli, tmp_path):
    with pytest.raises(UsageError, match="above 0"):
        NmsParams(iou_threshold=0.0)
    result = cli("export", tmp_path / "det.keras", "-o", tmp_path / "out", "--iou-threshold", "0")
    assert_one_line_error(result, "--iou-threshold must be above 0")
    assert not (tmp_path / "out").exists()


def test_unknown_tensorrt_minor_release_is_refused(cli, tmp_path):
    from edgekit.graph.targets import get_target

    assert get_target("tensorrt-10.16").tensorrt == "10.16" and get_target("trt-11.4").tensorrt == "11.4"
    with pytest.raises(UsageError, match="unknown TensorRT release 10.99"):
        get_target("tensorrt-10.99")
    result = cli("export", tmp_path / "m.keras", "-o", tmp_path / "out", "--target", "tensorrt-10.99")
    assert_one_line_error(result, "unknown TensorRT release 10.99", "--target tensorrt-10")
