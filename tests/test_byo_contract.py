"""Bring your own detector: raw outputs in another format (centre-size pixel boxes, yxyx corners, logits,
a background column) described at export (options or sidecar) and converted inside the ONNX graph. The
bundle's detections on ONNX Runtime equal TensorFlow's raw outputs converted here by hand, then
edgekit's NMS, box for box."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_one_line_error

pytest.importorskip("tensorflow")
pytest.importorskip("onnx_graphsurgeon")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 64
NMS = ("--score-threshold", "0.4", "--iou-threshold", "0.5", "--max-detections", "20")


def _detector(path, box_format: str, classes: int, seed: int):
    """A few convs to an 8x8 grid; per cell a box in ``box_format`` (``cxcywh`` in pixels, ``yxyx``
    normalised) and ``classes`` score logits, as outputs ``raw_boxes`` and ``raw_scores``."""
    from edgekit.host import import_tf

    _, keras = import_tf()
    L = keras.layers
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZE, SIZE, 3))
    x = L.Rescaling(1 / 255)(inp)
    for filters in (8, 16, 16):
        x = L.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    cells = L.Reshape((64, 16))(x)
    spread = keras.initializers.RandomNormal(0, 2)  # heads that tell the cells apart (as trained ones do)
    if box_format == "cxcywh":  # centres anywhere on the 64x64 input, sizes 6..30 pixels
        centre = L.Rescaling(SIZE)(L.Dense(2, activation="sigmoid", kernel_initializer=spread)(cells))
        size = L.Rescaling(24, offset=6)(L.Dense(2, activation="sigmoid", kernel_initializer=spread)(cells))
        boxes = L.Concatenate(name="raw_boxes")([centre, size])
    else:  # corners y1, x1, y2, x2 in 0..1
        a, b = (L.Dense(2, activation="sigmoid", kernel_initializer=spread)(cells) for _ in range(2))
        boxes = L.Concatenate(name="raw_boxes")([L.Minimum()([a, b]), L.Maximum()([a, b])])
    scores = L.Dense(classes, name="raw_scores", kernel_initializer=spread)(cells)
    model = keras.Model(inp, [boxes, scores])
    model.save(path)
    return model


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _by_hand(raw_boxes, raw_scores, kind: str):
    """TensorFlow's raw outputs as edgekit's contract, written out per format (not the export's code)."""
    if kind == "cxcywh-pixels-softmax-first":
        cx, cy, w, h = (raw_boxes[..., i] for i in range(4))
        boxes = np.stack([(cx - w / 2) / SIZE, (cy - h / 2) / SIZE, (cx + w / 2) / SIZE, (cy + h / 2) / SIZE], -1)
        return boxes, _softmax(raw_scores)[..., 1:]
    y1, x1, y2, x2 = (raw_boxes[..., i] for i in range(4))
    return np.stack([x1, y1, x2, y2], -1), (1 / (1 + np.exp(-raw_scores)))[..., :-1]


def _detections(bundle_dir, model, kind, frames):
    """(bundle's detections on ONNX Runtime, the hand reference) for ``frames``."""
    from edgekit.backends.select import open_runner
    from edgekit.bundle import Bundle
    from edgekit.nms import efficient_nms

    bundle = Bundle.load(bundle_dir)
    prep, p = bundle.preprocess, bundle.manifest["nms"]
    with open_runner(bundle, "onnxruntime", precision="fp32", score_threshold=p["score_threshold"]) as runner:
        got = runner.infer(prep.batch(frames))
    raw_boxes, raw_scores = (np.asarray(o, np.float64) for o in model(np.stack([prep.hwc(f) for f in frames])))
    boxes, scores = _by_hand(raw_boxes, raw_scores, kind)
    want = efficient_nms(boxes, scores, score_threshold=p["score_threshold"], iou_threshold=p["iou_threshold"],
                         max_output_boxes=p["max_detections"])
    return got, want


def _assert_same_detections(got, want):
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    for b, n in enumerate(want["num_detections"].ravel()):
        np.testing.assert_allclose(got["detection_boxes"][b, :n], want["detection_boxes"][b, :n], atol=1e-5)
        np.testing.assert_allclose(got["detection_scores"][b, :n], want["detection_scores"][b, :n], atol=1e-5)
        np.testing.assert_array_equal(got["detection_classes"][b, :n], want["detection_classes"][b, :n])


@pytest.fixture(scope="module")
def centre_size(tmp_path_factory):
    """Centre-size pixel boxes, softmax logits over background + 2 classes."""
    path = tmp_path_factory.mktemp("cxcywh") / "det.keras"
    return path, _detector(path, "cxcywh", 3, seed=0)


@pytest.fixture(scope="module")
def frames():
    from edgekit.host.probe import photo_frames

    return photo_frames((SIZE, SIZE), 6, seed=3)


def test_centre_size_pixels_softmax_background_by_options(cli, centre_size, frames, tmp_path):
    path, model = centre_size
    out = tmp_path / "b"
    r = cli("export", path, "-o", out, "--task", "detect", "--labels", "cat,dog", *NMS, "--box-format", "cxcywh",
            "--box-units", "pixels", "--score-activation", "softmax", "--background", "first")
    assert r.code == 0, r
    m = json.loads((out / "edgekit.json").read_text())
    assert m["detector_outputs"] == {"box_format": "cxcywh", "box_units": "pixels", "score_activation": "softmax",
                                     "background": "first"}
    assert m["parity"]["max_abs_error"] <= 1e-4 and m["labels"] == ["cat", "dog"]
    got, want = _detections(out, model, "cxcywh-pixels-softmax-first", frames)
    counts = want["num_detections"].ravel()
    assert counts.sum() >= len(frames) and (counts < 20).any()  # real detections, not every image at the cap
    _assert_same_detections(got, want)


def test_yxyx_logits_background_last_by_sidecar(tmp_path, frames):
    """Both outputs end in 4 (3 columns + background): the sidecar names them and describes them."""
    from edgekit.host.export import export_bundle

    path = tmp_path / "yx.keras"
    model = _detector(path, "yxyx", 4, seed=1)
    (tmp_path / "yx.keras.edgekit.json").write_text(json.dumps({
        "task": "detection", "labels": ["a", "b", "c"], "boxes_output": "raw_boxes", "scores_output": "raw_scores",
        "box_format": "yxyx", "score_activation": "sigmoid", "background": "last"}))
    export_bundle(path, tmp_path / "b", nms={"score_threshold": 0.55, "iou_threshold": 0.5, "max_detections": 20})
    got, want = _detections(tmp_path / "b", model, "yxyx-sigmoid-last", frames)
    assert want["num_detections"].sum() >= len(frames)
    _assert_same_detections(got, want)


def test_the_options_matter(cli, centre_size, frames, tmp_path):
    """Without them the same model is refused (its 3 score columns are not 2 labels) or, unlabelled, gives
    other detections."""
    path, model = centre_size
    assert_one_line_error(cli("export", path, "-o", tmp_path / "x", "--task", "detect", "--labels", "cat,dog"),
                          "3 classes but 2 labels")
    r = cli("export", path, "-o", tmp_path / "b", "--task", "detect", *NMS)
    assert r.code == 0, r
    got, want = _detections(tmp_path / "b", model, "cxcywh-pixels-softmax-first", frames)
    assert got["detection_boxes"].max() > 1.0 or not np.array_equal(got["num_detections"], want["num_detections"])


def test_output_format_refused_where_it_makes_no_sense(cli, tmp_path):
    """A classifier (one output; or said by --task classify, refused before loading)."""
    from edgekit.host import import_tf

    _, keras = import_tf()
    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inp)))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "cls.keras")
    assert_one_line_error(cli("export", tmp_path / "cls.keras", "-o", tmp_path / "b", "--box-format", "cxcywh"),
                          "--box-format describes a detector", "not a detector")
    assert_one_line_error(cli("export", tmp_path / "missing.keras", "-o", tmp_path / "b", "--task", "classify",
                              "--background", "first"), "--background describes a detector", "--task classify")
    assert not (tmp_path / "b").exists()


def test_output_format_refused_after_tensorflow_nms(cli, tmp_path):
    from detection_fixtures import build_detector

    model = build_detector(tmp_path / "nms.keras", tf_nms="combined")
    assert_one_line_error(cli("export", model, "-o", tmp_path / "b", "--score-activation", "sigmoid"),
                          "--score-activation describes", "TensorFlow NMS")


def test_bad_sidecar_value_and_wrong_shapes_are_named(cli, centre_size, tmp_path):
    import shutil

    path, _ = centre_size
    copy = tmp_path / "det.keras"
    shutil.copy(path, copy)
    side = tmp_path / "det.keras.edgekit.json"
    side.write_text(json.dumps({"task": "detection", "box_format": "xywh"}))
    assert_one_line_error(cli("export", copy, "-o", tmp_path / "b"), '"box_format" in det.keras.edgekit.json',
                          "xyxy, yxyx, cxcywh", "'xywh'")
    side.write_text(json.dumps({"task": "detection", "boxes_output": "raw_boxes"}))
    assert_one_line_error(cli("export", copy, "-o", tmp_path / "b"), '"boxes_output" and "scores_output" go together')
    side.write_text(json.dumps({"task": "detection"}))  # scores as boxes: named with both shapes
    assert_one_line_error(cli("export", copy, "-o", tmp_path / "b", "--boxes-output", "raw_scores",
                              "--scores-output", "raw_boxes", "--box-format", "yxyx"),
                          "boxes [1, 64, 3] and scores [1, 64, 4]")


def test_int8_keeps_the_conversion_float(cli, centre_size, tmp_path):
    """The appended ops (the corners' Add of two activations among them, which the INT8 recipe would
    quantize as a residual Add) stay float in the TensorRT Q/DQ model and in the CPU variant."""
    import cv2
    import onnx

    from edgekit.bundle import Bundle
    from edgekit.host.probe import photo_frames

    path, _ = centre_size
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, frame in enumerate(photo_frames((SIZE, SIZE), 24, seed=5)):
        cv2.imwrite(str(calib / f"{i:02d}.png"), frame)
    out = tmp_path / "b"
    r = cli("export", path, "-o", out, "--task", "detect", "--labels", "cat,dog", *NMS, "--box-format", "cxcywh",
            "--box-units", "pixels", "--score-activation", "softmax", "--background", "first",
            "--int8", "--calib-images", calib, "--method", "minmax", "--max-drop", 100, "--cpu-variant", "--no-fp16")
    assert r.code == 0, r
    bundle = Bundle.load(out)
    for key in ("int8", "int8_cpu"):
        graph = onnx.load(str(bundle.model_path(key))).graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        added = [n for n in graph.node if n.name.startswith("contract/")]
        assert {n.op_type for n in added} >= {"Slice", "Mul", "Sub", "Add", "Concat", "Div", "Softmax"}, key
        quantized = [n.name for n in added if any(producers.get(i) == "DequantizeLinear" for i in n.input)]
        assert not quantized, (key, quantized)
        assert "QuantizeLinear" in producers.values(), key  # the convs are quantized


def test_outputs_both_ending_in_4_need_names(cli, tmp_path):
    """Boxes [B, N, 4] and 4 class scores: unnamed, export cannot tell them apart and says so; outputs
    called ``boxes`` and ``scores`` are taken by name, in either order."""
    from edgekit.host import import_tf

    _, keras = import_tf()
    L = keras.layers
    inp = keras.Input((32, 32, 3))
    cells = L.Reshape((16, 8))(L.Conv2D(8, 8, strides=8)(L.Rescaling(1 / 255)(inp)))
    a, b = (L.Dense(2, activation="sigmoid")(cells) for _ in range(2))
    corners = [L.Minimum()([a, b]), L.Maximum()([a, b])]
    for name, box_name, score_name in (("plain", "box_head", "cls_head"), ("named", "boxes", "scores")):
        boxes = L.Concatenate(name=box_name)(corners)
        scores = L.Dense(4, activation="sigmoid", name=score_name)(cells)
        keras.Model(inp, [scores, boxes]).save(tmp_path / f"{name}.keras")
    assert_one_line_error(cli("export", tmp_path / "plain.keras", "-o", tmp_path / "p", "--task", "detect"),
                          "both detector outputs end in 4", "--boxes-output NAME --scores-output NAME")
    r = cli("export", tmp_path / "named.keras", "-o", tmp_path / "n", "--task", "detect")
    assert r.code == 0, r
    assert json.loads((tmp_path / "n" / "edgekit.json").read_text())["parity"]["max_abs_error"] <= 1e-4


def test_a_background_column_needs_a_class_beside_it():
    from edgekit.errors import ModelError
    from edgekit.graph.detector_outputs import OutputFormat, check_raw_shapes

    fmt = OutputFormat.from_sources(({"background": "last"}, "--{option}"))
    check_raw_shapes((1, 9, 4), (1, 9, 2), fmt)
    with pytest.raises(ModelError, match=r"--background last\) needs scores \[B, N, C \+ 1\].*\[1, 9, 1\]"):
        check_raw_shapes((1, 9, 4), (1, 9, 1), fmt)


@pytest.mark.parametrize("opset", [9, 17])  # Slice takes attributes before opset 10, inputs after
def test_graph_conversion_equals_numpys_for_every_format(opset):
    """Every combination of the four fields: ONNX Runtime on the appended ops equals export's numpy
    conversion (the one parity uses) on random raw outputs, at an old and a current opset."""
    import itertools

    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    from edgekit.graph.detector_outputs import CHOICES, OutputFormat, append_conversion, convert

    rng = np.random.default_rng(0)
    raw_boxes = rng.uniform(0, 50, (2, 7, 4)).astype(np.float32)
    raw_scores = rng.normal(0, 3, (2, 7, 5)).astype(np.float32)
    for values in itertools.product(*CHOICES.values()):
        fmt = OutputFormat(**dict(zip(CHOICES, values)))
        b_in, s_in = (gs.Variable(n, np.float32, [2, 7, c]) for n, c in (("b", 4), ("s", 5)))
        b_out, s_out = (gs.Variable(n, np.float32) for n in ("b_raw", "s_raw"))
        nodes = [gs.Node("Identity", inputs=[i], outputs=[o]) for i, o in ((b_in, b_out), (s_in, s_out))]
        graph = gs.Graph(nodes, [b_in, s_in], [b_out, s_out], opset=opset)
        append_conversion(graph, fmt, 48, 40)
        model = gs.export_onnx(graph)
        model.ir_version = 7
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {"b": raw_boxes, "s": raw_scores})
        want = convert(raw_boxes, raw_scores, fmt, 48, 40)
        for g, w in zip(got, want):
            assert g.shape == w.shape, fmt
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, err_msg=str(fmt))
