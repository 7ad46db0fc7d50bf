"""The TensorFlow-NMS cut keeps what the NMS did: clip_boxes, soft-NMS sigma 0, box for box on real photos.

The detector is a random-weight tf.Module SavedModel whose boxes reach past the image edges, so that
clipping them (combined_non_max_suppression's default) shows in its output.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_one_line_error

pytest.importorskip("tensorflow")
pytest.importorskip("onnx_graphsurgeon")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE, GRID, CLASSES = 64, 8, 3


def _detector(path, nms: str, clip_boxes: bool = True, sigma: float = 0.0, pad_per_class: bool = False,
              per_class: int = GRID * GRID):
    """A SavedModel: two random convolutions -> per-cell boxes [y1, x1, y2, x2] (past the edges at the
    border cells) and sigmoid scores -> ``nms`` ("combined" or "v5")."""
    from edgekit.host import import_tf

    tf, _ = import_tf()
    rng = np.random.default_rng(7)
    ys, xs = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    cells = np.stack([ys, xs], -1).reshape(1, -1, 2).astype(np.float32)

    class Detector(tf.Module):
        def __init__(self):
            super().__init__()
            self.k1 = tf.Variable(rng.normal(0, 0.05, (3, 3, 3, 8)).astype(np.float32))
            self.k2 = tf.Variable(rng.normal(0, 0.5, (1, 1, 8, 4 + CLASSES)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
        def __call__(self, x):
            h = tf.tanh(tf.nn.conv2d(x - 0.5, self.k1, 4, "SAME") + 0.1)  # no dead cells: no tied scores
            h = tf.nn.conv2d(h, self.k2, 2, "SAME")
            raw = tf.reshape(h, (tf.shape(x)[0], GRID * GRID, 4 + CLASSES))
            centre = (cells + 0.5 + 0.5 * tf.tanh(raw[..., :2])) / GRID
            half = 0.05 + 0.15 * tf.sigmoid(raw[..., 2:4])
            boxes = tf.concat([centre - half, centre + half], -1)
            scores = tf.sigmoid(raw[..., 4:])
            if nms == "combined":
                total = 400 if pad_per_class else 20  # padded per class: min(total, 64 per class x 3) rows
                r = tf.image.combined_non_max_suppression(boxes[:, :, None, :], scores, per_class, total,
                                                          iou_threshold=0.5, score_threshold=0.3,
                                                          clip_boxes=clip_boxes, pad_per_class=pad_per_class)
                return {"a": r.nmsed_boxes, "b": r.nmsed_scores, "c": r.nmsed_classes, "d": r.valid_detections}
            best = tf.reduce_max(scores[0], -1)
            idx, kept = tf.image.non_max_suppression_with_scores(boxes[0], best, 15, iou_threshold=0.4,
                                                                 score_threshold=0.3, soft_nms_sigma=sigma)
            return {"a": tf.gather(boxes[0], idx)[None], "b": kept[None]}

    module = Detector()
    tf.saved_model.save(module, str(path), signatures=module.__call__.get_concrete_function())
    return path


def _tf_vs_bundle(src, out, frames, batch=None):
    from edgekit.backends.select import open_runner
    from edgekit.host import convert
    from edgekit.host.export import export_bundle
    from edgekit.host.export_detection import tf_nms_outputs

    bundle = export_bundle(src, out, preprocess="unit", batch=batch)
    prep = bundle.preprocess
    source = convert.load(src)
    with open_runner(bundle, "onnxruntime") as runner:
        for chunk in ([frames] if batch is None else [[f] for f in frames]):
            want = tf_nms_outputs(source.run(np.stack([prep.hwc(f) for f in chunk]).astype(np.float32)))
            got = runner.infer(prep.batch(chunk))
            yield bundle, got, want


def _assert_same(got, want):
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    for b, n in enumerate(want["num_detections"].ravel()):
        np.testing.assert_array_equal(got["detection_classes"][b, :n], want["detection_classes"][b, :n])
        np.testing.assert_allclose(got["detection_boxes"][b, :n], want["detection_boxes"][b, :n], atol=1e-5)
        np.testing.assert_allclose(got["detection_scores"][b, :n], want["detection_scores"][b, :n], atol=1e-5)


@pytest.fixture(scope="module")
def frames():
    from edgekit.host.probe import photo_frames

    return photo_frames((SIZE, SIZE), 12, seed=5)


@pytest.mark.parametrize("clip, pad", [(True, False), (False, False), (True, True)])
def test_combined_nms_clip_boxes_kept_box_for_box(tmp_path, frames, clip, pad):
    src = _detector(tmp_path / "det", "combined", clip_boxes=clip, pad_per_class=pad)
    for bundle, got, want in _tf_vs_bundle(src, tmp_path / "b", frames):
        assert bundle.manifest["nms_cut"]["clip_boxes"] is clip
        assert bundle.manifest["nms_cut"]["per_class_cap"] is None  # 64 per class: as many as there are boxes
        assert bundle.manifest["nms"]["max_detections"] == (GRID * GRID * CLASSES if pad else 20)
        _assert_same(got, want)
        valid = np.concatenate([want["detection_boxes"][b, :n] for b, n in enumerate(want["num_detections"].ravel())])
        assert len(valid) >= len(frames)
        outside = (valid < 0).any() or (valid > 1).any()
        assert outside is not clip  # the model's boxes do cross the edges: clipping is seen, or not done


@pytest.mark.parametrize("sigma", [None, 0.0])
def test_nms_v5_with_and_without_soft_nms_sigma_zero(tmp_path, frames, sigma):
    kwargs = {} if sigma is None else {"sigma": sigma}
    src = _detector(tmp_path / "det", "v5", **kwargs)
    total = 0
    for bundle, got, want in _tf_vs_bundle(src, tmp_path / "b", frames[:6], batch=1):
        _assert_same(got, want)
        total += int(want["num_detections"].sum())
    assert total >= 6


def test_soft_nms_is_named_when_it_cannot_be_cut(cli, tmp_path):
    src = _detector(tmp_path / "det", "v5", sigma=0.5)
    assert_one_line_error(cli("export", src, "-o", tmp_path / "b", "--preprocess", "unit", "--batch", "1"),
                          "soft_nms_sigma")


def test_a_per_class_cap_the_cut_cannot_keep_is_named(cli, tmp_path):
    src = _detector(tmp_path / "det", "combined", per_class=2)  # 2 per class of 20: reached on these photos
    assert_one_line_error(cli("export", src, "-o", tmp_path / "b", "--preprocess", "unit"),
                          "max_output_size_per_class")


def test_task_classify_on_a_graph_ending_in_nms_is_refused(cli, tmp_path):
    src = _detector(tmp_path / "det", "combined")
    assert_one_line_error(cli("export", src, "-o", tmp_path / "b", "--preprocess", "unit", "--task", "classify"),
                          "--task classify", "TensorFlow NMS", "--task detect")
    assert not (tmp_path / "b").exists()
