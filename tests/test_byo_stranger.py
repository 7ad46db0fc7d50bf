"""Bring your own detector, as a stranger tried it: a Keras model with dict outputs, outputs both ending
in 4 named by the model's own names, a sidecar with values of the wrong type, and a graph ending in
TensorFlow NMS whose outputs happen to be called ``boxes`` and ``scores``."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error

pytest.importorskip("tensorflow")
pytest.importorskip("onnx_graphsurgeon")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RAW = ("--box-format", "cxcywh", "--box-units", "pixels", "--score-activation", "softmax", "--background", "first")


def _cells(keras, size=32):
    L = keras.layers
    inp = keras.Input((size, size, 3))
    x = L.Conv2D(8, 8, strides=8)(L.Rescaling(1 / 255)(inp))
    return inp, L.Reshape(((size // 8) ** 2, 8))(x)


@pytest.fixture(scope="module")
def keras():
    from edgekit.host import import_tf

    _, keras = import_tf()
    keras.utils.set_random_seed(0)
    return keras


def test_dict_outputs_export_and_go_by_their_keys(cli, keras, tmp_path):
    """keras.Model(inp, {"bbox": ..., "cls": ...}): TensorFlow gives a dict; export reads it as the
    outputs it names (its keys), with or without --boxes-output/--scores-output."""
    L = keras.layers
    inp, cells = _cells(keras)
    boxes = L.Rescaling(32.0)(L.Dense(4, activation="sigmoid")(cells))
    scores = L.Dense(3)(cells)
    keras.Model(inp, {"bbox": boxes, "cls": scores}).save(tmp_path / "d.keras")
    r = cli("export", tmp_path / "d.keras", "-o", tmp_path / "a", "--task", "detect", "--labels", "x,y", *RAW)
    assert r.code == 0, r
    r = cli("export", tmp_path / "d.keras", "-o", tmp_path / "b", "--task", "detect", "--labels", "x,y", *RAW,
            "--boxes-output", "bbox", "--scores-output", "cls")
    assert r.code == 0, r
    assert json.loads((tmp_path / "b" / "edgekit.json").read_text())["parity"]["max_abs_error"] <= 1e-4


def test_outputs_both_ending_in_4_are_named_as_the_options_take_them(cli, keras, tmp_path):
    L = keras.layers
    inp, cells = _cells(keras)
    boxes = L.Dense(4, activation="sigmoid", name="box_head")(cells)
    scores = L.Dense(4, activation="sigmoid", name="cls_head")(cells)
    keras.Model(inp, [boxes, scores]).save(tmp_path / "m.keras")
    r = cli("export", tmp_path / "m.keras", "-o", tmp_path / "b", "--task", "detect")
    assert_one_line_error(r, "both detector outputs end in 4", "box_head", "cls_head")
    assert "Identity" not in r.err and "unk__" not in r.err, r
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("labels", [10, "0,1", [0, 1], ["a", None]])
def test_sidecar_labels_of_the_wrong_type_are_named(cli, keras, tmp_path, labels):
    L = keras.layers
    inp, cells = _cells(keras)
    keras.Model(inp, [L.Dense(4)(cells), L.Dense(3)(cells)]).save(tmp_path / "m.keras")
    (tmp_path / "m.keras.edgekit.json").write_text(json.dumps({"task": "detection", "labels": labels}))
    assert_one_line_error(cli("export", tmp_path / "m.keras", "-o", tmp_path / "b", *RAW),
                          '"labels" in m.keras.edgekit.json', "list of strings")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("task", ["detect", 5])
def test_sidecar_task_of_another_value_is_named(cli, keras, tmp_path, task):
    L = keras.layers
    inp, cells = _cells(keras)
    keras.Model(inp, [L.Dense(4)(cells), L.Dense(3)(cells)]).save(tmp_path / "m.keras")
    (tmp_path / "m.keras.edgekit.json").write_text(json.dumps({"task": task, "labels": ["a", "b"]}))
    assert_one_line_error(cli("export", tmp_path / "m.keras", "-o", tmp_path / "b", *RAW),
                          '"task" in m.keras.edgekit.json', "detection", "classification")


def _nms_savedmodel(path):
    """A SavedModel ending in combined_non_max_suppression whose outputs are called boxes, scores, classes
    and num (as many hand-written ones are)."""
    import tensorflow as tf

    class Det(tf.Module):
        def __init__(self):
            super().__init__()
            self.k = tf.Variable(tf.random.stateless_normal([8, 8, 3, 7], seed=[1, 2], stddev=0.3))

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, x):
            y = tf.reshape(tf.nn.conv2d(x / 255.0, self.k, 8, "VALID"), [-1, 16, 7])
            centre, size = tf.sigmoid(y[..., :2]), tf.sigmoid(y[..., 2:4]) * 0.5
            boxes = tf.concat([centre - size / 2, centre + size / 2], -1)
            out = tf.image.combined_non_max_suppression(boxes[:, :, None, :], tf.sigmoid(y[..., 4:]), 10, 10,
                                                        iou_threshold=0.5, score_threshold=0.05)
            return {"boxes": out.nmsed_boxes, "scores": out.nmsed_scores, "classes": out.nmsed_classes,
                    "num": out.valid_detections}

    module = Det()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_tensorflow_nms_outputs_called_boxes_and_scores(cli, tmp_path):
    """--task detect (or a sidecar saying detection) must not take the NMS's own ``boxes``/``scores`` outputs
    for a raw detector's and drop its classes and counts; naming outputs of a cut NMS is refused."""
    model = _nms_savedmodel(tmp_path / "nms")
    r = cli("export", model, "-o", tmp_path / "a", "--task", "detect", "--labels", "x,y,z")
    assert r.code == 0, r
    assert json.loads((tmp_path / "a" / "edgekit.json").read_text())["nms_cut"]
    assert_one_line_error(cli("export", model, "-o", tmp_path / "b", "--labels", "x,y,z",
                              "--boxes-output", "boxes", "--scores-output", "scores"),
                          "--boxes-output", "TensorFlow NMS")
    assert not (tmp_path / "b").exists()



def test_a_misspelt_sidecar_field_is_named_and_labels_one_short_hint_at_the_background(cli, keras, tmp_path):
    """A sidecar field export does not read is warned of with the field it resembles; labels one short
    of the score columns suggest --background."""
    L = keras.layers
    inp, cells = _cells(keras)
    boxes = L.Rescaling(32.0)(L.Dense(4, activation="sigmoid")(cells))
    keras.Model(inp, [boxes, L.Dense(3)(cells)]).save(tmp_path / "d.keras")
    no_background = [a for a in RAW if a not in ("--background", "first")]
    r = cli("export", tmp_path / "d.keras", "-o", tmp_path / "a", "--task", "detect", "--labels", "x,y", *no_background)
    assert_one_line_error(r, "3 classes but 2 labels", "--background first|last")
    sidecar = {"task": "detection", "labels": ["x", "y"], "box_fromat": "cxcywh", "box_units": "pixels",
               "score_activation": "softmax", "background": "first"}
    (tmp_path / "d.keras.edgekit.json").write_text(json.dumps(sidecar))
    r = cli("export", tmp_path / "d.keras", "-o", tmp_path / "b", "--preprocess", "raw")
    assert "'box_fromat'" in r.err and 'did you mean "box_format"' in r.err, r
