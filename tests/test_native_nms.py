"""Native NMS (ONNX NonMaxSuppression, TensorRT's INMSLayer) for TensorRT 10.12+ targets: the four
fixed-size outputs of EfficientNMS_TRT, equal to edgekit's NMS box for box.

The graph is what TensorRT parses; ONNX Runtime runs the same graph on the CPU here. The detector is a
tiny random-weight Keras model (tests/detection_fixtures.py) on the sample detection set's real images.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.nms import NmsParams, efficient_nms

pytest.importorskip("onnx_graphsurgeon")


def _run(model, feeds: dict) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _assert_same(native: dict, ref: dict) -> None:
    assert native["num_detections"].ravel().tolist() == ref["num_detections"].ravel().tolist()
    for name in ("detection_classes", "detection_boxes", "detection_scores"):
        assert native[name].dtype == ref[name].dtype and native[name].shape == ref[name].shape, name
        np.testing.assert_allclose(native[name], ref[name], atol=1e-6, err_msg=name)


def _slicing_graph(batch: int, boxes: int, classes: int):
    """A graph whose input [B, N, 4 + C] is split into ``boxes`` and ``scores`` (SYNTHETIC detections)."""
    import onnx_graphsurgeon as gs

    inp = gs.Variable("input", np.float32, [batch, boxes, 4 + classes])
    out_boxes = gs.Variable("boxes", np.float32, [batch, boxes, 4])
    out_scores = gs.Variable("scores", np.float32, [batch, boxes, classes])
    graph = gs.Graph(inputs=[inp], outputs=[out_boxes, out_scores], opset=17)
    for name, out, lo, hi in (("b", out_boxes, 0, 4), ("s", out_scores, 4, 4 + classes)):
        graph.layer(op="Slice", inputs=[inp, gs.Constant(f"{name}0", np.array([lo])), gs.Constant(f"{name}1", np.array([hi])),
                                        gs.Constant(f"{name}2", np.array([2]))], outputs=[out])
    return graph


@pytest.mark.parametrize("class_agnostic", [False, True])
@pytest.mark.parametrize("max_detections", [10, 200])  # 200: more than the (class, box) pairs: padded
@pytest.mark.parametrize("boxes_dim", [50, "boxes"])  # a fixed or a named (dynamic) number of boxes
def test_native_nms_equals_edgekit_nms_on_synthetic_boxes(class_agnostic, max_detections, boxes_dim):
    import onnx_graphsurgeon as gs

    from edgekit.graph.nms import append_nms

    graph = _slicing_graph(2, boxes_dim, 3)
    params = NmsParams(score_threshold=0.3, eval_score_threshold=0.2, iou_threshold=0.5,
                       max_detections=max_detections, class_agnostic=class_agnostic, tensorrt_nms="native")
    append_nms(graph, params, (8, 6))
    model = gs.export_onnx(graph)
    model.ir_version = 9
    rng = np.random.default_rng(0)
    corner = rng.random((2, 50, 2))
    x = np.concatenate([corner, corner + rng.random((2, 50, 2)) * 0.3, rng.random((2, 50, 3))], -1).astype(np.float32)
    ref = efficient_nms(x[..., :4], x[..., 4:], score_threshold=0.2, iou_threshold=0.5,
                        max_output_boxes=max_detections, class_agnostic=class_agnostic)
    assert ref["num_detections"].min() > 0
    _assert_same(_run(model, {"input": x}), ref)


def test_native_nms_refusals():
    from edgekit.errors import UsageError
    from edgekit.graph.nms import append_nms

    with pytest.raises(UsageError, match="fewer than 3840"):
        append_nms(_slicing_graph(1, 5000, 1), NmsParams(max_detections=4000), (10, 13))
    with pytest.raises(UsageError, match="--nms must be plugin or native"):
        NmsParams(tensorrt_nms="onnx")


@pytest.fixture(scope="module")
def tensorrt11_bundle(tmp_path_factory):
    """A detector exported for TensorRT 11 (the default NMS there is native)."""
    pytest.importorskip("tensorflow")
    from detection_fixtures import build_detector

    from edgekit.bundle import Bundle
    from edgekit.host.export import export_bundle

    root = tmp_path_factory.mktemp("trt11")
    export_bundle(build_detector(root / "det.keras"), root / "bundle", target="tensorrt-11",
                  nms={"score_threshold": 0.3, "max_detections": 50})
    return Bundle.load(root / "bundle")


@pytest.mark.slow  # converts a Keras detector (TensorFlow)
def test_tensorrt11_bundle_uses_nonmaxsuppression_and_matches_edgekit_nms(tensorrt11_bundle, detect_data):
    import cv2
    import onnx

    from edgekit.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.graph.engine_nms import edit_for_engine
    from edgekit.graph.support import check, op_histogram

    bundle = tensorrt11_bundle
    assert bundle.manifest["nms"]["tensorrt_nms"] == "native"
    trt_model = onnx.load(str(bundle.path / bundle.models["fp32"]["tensorrt"]["path"]))
    ops = op_histogram(trt_model)
    assert ops["NonMaxSuppression"] == 1 and "EfficientNMS_TRT" not in ops
    report = check(trt_model, "tensorrt-11")  # the op table of the target TensorRT
    assert report.errors == [], report.summary()

    files = sorted((detect_data / "yolo" / "images" / "val").glob("*"))[:16]
    x = bundle.preprocess.batch([cv2.imread(str(f)) for f in files]).astype(np.float32)
    with OnnxRuntimeRunner(bundle.model_path("fp32")) as runner:  # the pre-NMS graph
        raw = runner.infer(x)
    params = NmsParams.from_dict(bundle.manifest["nms"])
    for threshold in (params.eval_score_threshold, params.score_threshold):  # validate's engine, the loop's
        model = onnx.ModelProto()
        model.CopyFrom(trt_model)
        assert edit_for_engine(model, threshold, "11.4.0") == [f"score_threshold={threshold:g}"]
        ref = efficient_nms(raw["boxes"], raw["scores"], score_threshold=threshold, iou_threshold=params.iou_threshold,
                            max_output_boxes=params.max_detections)
        assert ref["num_detections"].sum() > 0
        _assert_same(_run(model, {bundle.input["name"]: x}), ref)


def test_plugin_deprecation_is_a_warning_of_the_op_check():
    import onnx_graphsurgeon as gs

    from edgekit.graph.nms import append_nms, nms_mode
    from edgekit.graph.support import check

    params = NmsParams(tensorrt_nms="plugin")
    graph = _slicing_graph(1, 8, 2)
    append_nms(graph, params, (10, 13))
    model = gs.export_onnx(graph)
    deprecated = [p for p in check(model, "jetpack-7.0").warnings if "deprecated from TensorRT 10.12" in p.message]
    assert len(deprecated) == 1 and "--nms native" in deprecated[0].message
    assert not [p for p in check(model, "jetpack-6.1").warnings if "deprecated" in p.message]
    assert [nms_mode(NmsParams(), v) for v in ((8, 6), (10, 3), (10, 13), (11, 4))] == ["plugin", "plugin", "native", "native"]


@pytest.mark.slow  # shares the exported detector above
def test_build_makes_the_engine_run_uses(tensorrt11_bundle, cli, monkeypatch):
    """`edgekit build` on a detector builds the loop's engine (NMS at the run threshold, at least 0.01).

    The builder is a FAKE recording its BuildOptions (no TensorRT here)."""
    from edgekit.backends.tensorrt import builder

    seen = []
    monkeypatch.setattr(builder, "build", lambda bundle, options: (seen.append(options), ("FAKE.plan", True))[1])
    assert cli("build", tensorrt11_bundle.path, "--precision", "fp32").code == 0
    assert cli("build", tensorrt11_bundle.path, "--precision", "fp32", "--score-threshold", "0.005").code == 0
    assert [o.nms_score_threshold for o in seen] == [0.3, 0.01]
