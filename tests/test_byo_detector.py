"""Bring your own detector: keras-hub's RetinaNetObjectDetector, whose anchor decoding and NMS live
outside ``call``, exported with the decoding inside the ONNX graph; ONNX Runtime + edgekit's NMS give
keras-hub's own ``predict`` detections on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_one_line_error

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 64


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory):
    """A small RetinaNet (ResNet basic blocks, levels 3-5, random weights), its NMS keeping 20 boxes."""
    pytest.importorskip("keras_hub", reason="keras-hub is not installed (pip install 'edgekit[keras-hub]')")
    from keras_hub.layers import NonMaxSuppression
    from keras_hub.models import ResNetBackbone, RetinaNetBackbone, RetinaNetObjectDetector

    import keras

    keras.utils.set_random_seed(0)
    encoder = ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                             stackwise_num_filters=[64, 64, 64, 64], stackwise_num_blocks=[1, 1, 1, 1],
                             stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
                             image_shape=(SIZE, SIZE, 3))
    backbone = RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=5, use_p5=False,
                                 image_shape=(SIZE, SIZE, 3))
    decoder = NonMaxSuppression(bounding_box_format="yxyx", from_logits=True, iou_threshold=0.5,
                                confidence_threshold=0.3, max_detections=20)
    model = RetinaNetObjectDetector(backbone, num_classes=3, pre_logits_num_conv_layers=1, prediction_decoder=decoder)
    for v in model.get_layer("box_head").trainable_variables:  # random deltas put every box off the image,
        v.assign(v * 0.1)  # where keras-hub's padded NMS keeps none: keep them near their anchors, as trained ones are
    path = tmp_path_factory.mktemp("retinanet") / "retinanet.keras"
    model.save(path)
    return model, path


def test_retinanet_exports_with_its_decoding_and_matches_predict(retinanet, tmp_path):
    import onnx

    from edgekit.backends.select import open_runner
    from edgekit.graph.support import op_histogram
    from edgekit.host.export import export_bundle
    from edgekit.host.probe import photo_frames

    model, path = retinanet
    bundle = export_bundle(path, tmp_path / "b", preprocess="unit", labels=["a", "b", "c"])
    m = bundle.manifest
    assert m["task"] == "detection" and m["parity"]["max_abs_error"] <= 1e-4
    assert m["nms"]["class_agnostic"] is True and m["nms"]["iou_threshold"] == 0.5 and m["nms"]["max_detections"] == 20
    plugin_graph = onnx.load(str(bundle.path / bundle.models["fp32"]["tensorrt"]["path"]))
    assert op_histogram(plugin_graph)["EfficientNMS_TRT"] == 1 and "NonMaxSuppression" not in op_histogram(plugin_graph)

    frames = photo_frames((SIZE, SIZE), 6, seed=2)
    prep = bundle.preprocess
    want = model.predict(np.stack([prep.hwc(f) for f in frames]), verbose=0)
    with open_runner(bundle, "onnxruntime", score_threshold=m["nms"]["score_threshold"]) as runner:
        got = runner.infer(prep.batch(frames))
    counts = np.asarray(want["num_detections"]).reshape(-1, 1)
    np.testing.assert_array_equal(got["num_detections"], counts)
    assert counts.sum() >= len(frames)
    for b, n in enumerate(counts.ravel()):
        yx = np.asarray(want["boxes"])[b, :n] / SIZE  # keras-hub: [y1, x1, y2, x2] in pixels
        np.testing.assert_allclose(got["detection_boxes"][b, :n], yx[:, [1, 0, 3, 2]], atol=1e-4)
        np.testing.assert_allclose(got["detection_scores"][b, :n], np.asarray(want["confidence"])[b, :n], atol=1e-5)
        np.testing.assert_array_equal(got["detection_classes"][b, :n], np.asarray(want["labels"])[b, :n])


def test_output_format_options_refused_for_the_adapted_detector(cli, retinanet, tmp_path):
    """export decodes keras-hub's outputs itself: describing them is a mistake, said in one line."""
    assert_one_line_error(cli("export", retinanet[1], "-o", tmp_path / "b", "--box-format", "cxcywh"),
                          "--box-format describes", "keras-hub")
    assert not (tmp_path / "b").exists()


def test_detector_outputs_chosen_by_name(cli, tmp_path):
    """A model with a third output: --boxes-output/--scores-output pick the two; a wrong name lists the
    outputs there are; boxes and scores swapped is named with both shapes."""
    from edgekit.host import import_tf

    _, keras = import_tf()
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 4, strides=4)(keras.layers.Rescaling(1 / 255)(inp))
    cells = keras.layers.Reshape((64, 8))(x)
    a = keras.layers.Dense(2, activation="sigmoid")(cells)
    b = keras.layers.Dense(2, activation="sigmoid")(cells)
    boxes = keras.layers.Concatenate(name="boxes_out")([keras.ops.minimum(a, b), keras.ops.maximum(a, b)])
    scores = keras.layers.Dense(3, activation="sigmoid", name="scores_out")(cells)
    aux = keras.layers.GlobalAveragePooling2D(name="aux")(x)
    keras.Model(inp, [scores, aux, boxes]).save(tmp_path / "three.keras")

    r = cli("export", tmp_path / "three.keras", "-o", tmp_path / "b", "--labels", "a,b,c",
            "--boxes-output", "boxes_out", "--scores-output", "scores_out")
    assert r.code == 0, r
    import json

    m = json.loads((tmp_path / "b" / "edgekit.json").read_text())
    assert m["task"] == "detection" and m["parity"]["max_abs_error"] <= 1e-4
    assert_one_line_error(cli("export", tmp_path / "three.keras", "-o", tmp_path / "c", "--boxes-output", "box",
                              "--scores-output", "scores_out"), "has no output 'box'", "scores_out, aux, boxes_out")
    assert_one_line_error(cli("export", tmp_path / "three.keras", "-o", tmp_path / "c", "--labels", "a,b,c",
                              "--boxes-output", "scores_out", "--scores-output", "boxes_out"),
                          "boxes [1, 64, 3] and scores [1, 64, 4]")
