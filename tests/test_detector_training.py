"""The pyramid detector's training parts on tiny synthetic cases: tf.data augmentation keeps boxes on
their objects; task-aligned assignment picks the expected positives; the losses give hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
tf = pytest.importorskip("tensorflow")


def _bright_box(image: np.ndarray, level: float) -> np.ndarray:
    ys, xs = np.nonzero(image[..., 0] > level)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def test_augmentation_moves_boxes_with_their_objects():
    """Zoom, shift, mirror and colour jitter: the drawn object's extent is where its box says, every draw."""
    from edgekit.host.augment import Augment, augment_image

    size = 96
    image = np.full((size, size, 3), 30.0, np.float32)
    image[20:44, 10:30] = 250.0  # left of centre: a wrong mirror of the box would miss it
    boxes = np.array([[10 / size, 20 / size, 30 / size, 44 / size], [0, 0, 0, 0]], np.float32)
    classes = np.array([2, -1], np.int32)
    config = Augment(zoom=(0.7, 1.4), brightness=0.0, contrast=(1.0, 1.0), saturation=(0.5, 1.5))
    kept = 0
    for i in range(24):
        out, moved, cls = (t.numpy() for t in augment_image(tf.constant(image), tf.constant(boxes),
                                                            tf.constant(classes), config, tf.constant([7, i], tf.int64)))
        assert cls[1] == -1 and (moved[1] == 0).all()  # padding stays padding
        if cls[0] < 0:
            continue
        kept += 1
        assert cls[0] == 2
        found = _bright_box(out, 150)
        np.testing.assert_allclose(found, moved[0] * size, atol=2.0)
    assert kept >= 12
    # the flip happens and is drawn where the box says: some draws put the object right of centre
    centres = []
    for i in range(24):
        out, moved, cls = (t.numpy() for t in augment_image(tf.constant(image), tf.constant(boxes),
                                                            tf.constant(classes), Augment(zoom=(1.0, 1.0), shift=0.0),
                                                            tf.constant([3, i], tf.int64)))
        centres.append((moved[0, 0] + moved[0, 2]) / 2)
        np.testing.assert_allclose(_bright_box(out, 150), moved[0] * size, atol=1.5)
    assert min(centres) < 0.3 and max(centres) > 0.7


def test_augmentation_drops_a_box_pushed_mostly_out_of_view():
    from edgekit.host.augment import Augment, augment_image

    image = np.zeros((64, 64, 3), np.float32)
    edge = np.array([[0.0, 0.4, 0.1, 0.6]], np.float32)  # at the left border: zooming in pushes it out
    dropped = 0
    for i in range(16):
        _, moved, cls = augment_image(tf.constant(image), tf.constant(edge), tf.constant([1], tf.int32),
                                      Augment(zoom=(1.8, 2.0), shift=0.0, flip=False), tf.constant([1, i], tf.int64))
        if cls.numpy()[0] < 0:
            dropped += 1
        else:
            assert moved.numpy()[0, 2] - moved.numpy()[0, 0] > 0
    assert dropped > 0


def test_batches_pad_the_truth_and_normalise_as_the_bundle_will():
    import dataclasses

    from edgekit.host.archs import get_arch
    from edgekit.host.augment import detection_batches

    prep = dataclasses.replace(get_arch("mobilenetv2").preprocess(32), resize="letterbox")  # RGB, x / 127.5 - 1
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    frames[..., 0] = 255  # blue in OpenCV's BGR
    boxes = [np.array([[0.1, 0.1, 0.5, 0.5]]), np.zeros((0, 4)), np.array([[0, 0, 1, 1], [0.2, 0.2, 0.4, 0.4]])]
    classes = [np.array([1]), np.zeros(0, int), np.array([0, 3])]
    (x, b, c), = list(detection_batches(frames, boxes, classes, prep, 3))
    np.testing.assert_allclose(x.numpy()[0, 0, 0], prep.hwc(frames[0])[0, 0], atol=1e-6)  # blue is last in RGB
    assert c.numpy().tolist() == [[1, -1], [-1, -1], [0, 3]]
    np.testing.assert_allclose(b.numpy()[2, 1], [0.2, 0.2, 0.4, 0.4])
    assert len(list(detection_batches(frames, boxes, classes, prep, 2, epochs=3))) == 6  # no batch spans two passes


def test_the_last_plain_epochs_are_shuffled_but_not_augmented():
    import dataclasses

    from edgekit.host.archs import get_arch
    from edgekit.host.augment import Augment, detection_batches

    prep = dataclasses.replace(get_arch("small").preprocess(32), resize="letterbox")
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    boxes = [np.array([[0.1 * i, 0.2, 0.1 * i + 0.5, 0.7]]) for i in range(4)]
    classes = [np.array([i]) for i in range(4)]
    plain = np.stack([prep.hwc(f) for f in frames])

    def passes(plain_epochs):
        return [(x.numpy(), b.numpy(), c.numpy()) for x, b, c in detection_batches(
            frames, boxes, classes, prep, 4, Augment(zoom=(1.3, 1.5)), epochs=3, seed=0, plain_epochs=plain_epochs)]

    for x, b, c in passes(0):
        assert not any(np.allclose(row, plain[c[k, 0]], atol=1e-5) for k, row in enumerate(x))
    *augmented, (x, b, c) = passes(1)
    order = c[:, 0]
    assert sorted(order) == [0, 1, 2, 3]
    np.testing.assert_allclose(x, plain[order], atol=1e-5)  # the image and its boxes as they are
    np.testing.assert_allclose(b[:, 0], np.stack(boxes)[order, 0], atol=1e-6)
    assert all(not np.allclose(a[0], plain[a[2][:, 0].clip(0)], atol=1e-5) for a in augmented)


def _tiny_case():
    """A 32x32 input, strides 8 and 16: 16 + 4 cells. One 16x16 box in the top-left quarter."""
    from edgekit.host.detector import Grid

    grid = Grid((32, 32), 8, levels=2)
    centers = grid.centers()
    gt = np.array([[[0.0, 0.0, 0.5, 0.5]]], np.float32)
    boxes = np.tile(np.array([0.9, 0.9, 1.0, 1.0], np.float32), (1, grid.n, 1))  # far away by default
    boxes[0, 0] = [0.0, 0.0, 0.5, 0.5]  # cell (4, 4) px at stride 8: exact
    boxes[0, 5] = [0.0, 0.0, 0.5, 0.25]  # cell (12, 12) px: IoU 0.5
    boxes[0, 16] = [0.0, 0.0, 0.25, 0.25]  # stride-16 cell (8, 8) px: IoU 0.25
    boxes[0, 1] = [0.25, 0.0, 0.5, 0.5]  # cell (12, 4): IoU 0.5, but its class score is low
    scores = np.full((1, grid.n, 2), 0.5, np.float32)
    scores[0, 1, 1] = 0.01
    return grid, centers, gt, boxes, scores


def test_task_aligned_assignment_picks_the_best_aligned_cells_inside_the_box():
    from edgekit.host.det_loss import LossConfig, assign

    grid, centers, gt, boxes, scores = _tiny_case()
    t_boxes, t_scores, fg = (a.numpy() for a in assign(
        tf.constant(scores), tf.constant(boxes), tf.constant(gt), tf.constant([[1]], tf.int32),
        tf.constant(centers), LossConfig(topk=2, alpha=1.0, beta=6.0, quality_power=1.0)))
    assert np.flatnonzero(fg[0]).tolist() == [0, 5]  # top-2 of the 5 candidates by score * IoU**6
    np.testing.assert_allclose(t_boxes[0, [0, 5]], gt[0, [0, 0]])
    # class target: alignment / best alignment * best IoU -> 1 at the exact box, 0.5**6 at the half box
    np.testing.assert_allclose(t_scores[0, 0], [0, 1.0], atol=1e-5)
    np.testing.assert_allclose(t_scores[0, 5], [0, 0.5**6], atol=1e-5)
    assert t_scores[0, fg[0] == 0].max() == 0
    # quality_power lifts a partial target (0.5**6 -> 0.5**3) and leaves a perfect one at 1
    _, lifted, _ = assign(tf.constant(scores), tf.constant(boxes), tf.constant(gt), tf.constant([[1]], tf.int32),
                          tf.constant(centers), LossConfig(topk=2, quality_power=0.5))
    np.testing.assert_allclose(lifted.numpy()[0, [0, 5], 1], [1.0, 0.5**3], atol=1e-5)
    # with room for all candidates, each of the 5 cells whose centre is inside the box is positive
    _, _, fg = assign(tf.constant(scores), tf.constant(boxes), tf.constant(gt), tf.constant([[1]], tf.int32),
                      tf.constant(centers), LossConfig(topk=10))
    assert np.flatnonzero(fg.numpy()[0]).tolist() == [0, 1, 4, 5, 16]


def test_assignment_gives_a_tiny_box_its_nearest_cell_and_a_shared_cell_to_the_closer_fit():
    from edgekit.host.det_loss import assign

    grid, centers, _, boxes, scores = _tiny_case()
    tiny = [0.80, 0.05, 0.84, 0.09]  # 1.3 px, between centres: no cell centre inside
    pair = [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.375]]  # both contain cell 0 and 1; cell 0 predicts the first
    gt = np.array([[tiny, *pair]], np.float32)
    boxes[0, 1] = [0.0, 0.0, 0.5, 0.375]  # cell 1 predicts the second exactly
    t_boxes, _, fg = (a.numpy() for a in assign(tf.constant(scores), tf.constant(boxes), tf.constant(gt),
                                                 tf.constant([[0, 1, 1]], tf.int32), tf.constant(centers)))
    nearest = int(np.argmin(((centers - [0.82, 0.07]) ** 2).sum(1)))
    assert fg[0, nearest] and nearest == 3  # (28, 4) px at stride 8
    np.testing.assert_allclose(t_boxes[0, 0], pair[0])
    np.testing.assert_allclose(t_boxes[0, 1], pair[1])
    padded = np.array([[pair[0], [0, 0, 0, 0]]], np.float32)  # class -1: padding claims nothing
    _, t_scores, fg2 = assign(tf.constant(scores), tf.constant(boxes), tf.constant(padded),
                              tf.constant([[1, -1]], tf.int32), tf.constant(centers))
    assert fg2.numpy().sum() == 5 and t_scores.numpy()[..., 0].max() == 0


def test_ciou_matches_its_definition_on_a_hand_worked_pair():
    from edgekit.host.det_loss import ciou

    got = float(ciou(tf.constant([0.0, 0.0, 0.5, 0.25]), tf.constant([0.0, 0.0, 0.5, 0.5])))
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    expected = 0.5 - (0.125**2) / 0.5 - v / (0.5 + v) * v  # IoU - rho^2 / c^2 - alpha * v
    assert got == pytest.approx(expected, abs=1e-5)
    assert float(ciou(tf.constant([0.1, 0.1, 0.3, 0.4]), tf.constant([0.1, 0.1, 0.3, 0.4]))) == pytest.approx(1, abs=1e-5)


def test_losses_on_the_tiny_case_equal_the_formulas():
    from edgekit.host.det_loss import LossConfig, ciou, detection_loss

    _, centers, gt, boxes, scores = _tiny_case()
    logits = np.log(scores / (1 - scores))
    config = LossConfig(topk=2)
    for kind in ("varifocal", "quality_focal"):
        cfg = LossConfig(topk=2, classification=kind)
        total, parts = detection_loss(tf.constant(logits), tf.constant(boxes), tf.constant(gt),
                                      tf.constant([[1]], tf.int32), tf.constant(centers), cfg)
        t = np.zeros_like(scores)
        t[0, 0, 1], t[0, 5, 1] = 1.0, 0.5 ** (6 * config.quality_power)
        p = scores.astype(np.float64)
        bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        if kind == "varifocal":
            weight = np.where(t > 0, t, config.negative_weight * p**config.gamma)
        else:
            weight = np.abs(t - p) ** config.gamma
        weight[0, [0, 5], 0] = 1.0  # the other class at a positive cell: plain cross-entropy
        norm = t.sum()
        assert float(parts["cls"]) == pytest.approx((bce * weight).sum() / norm, rel=1e-4)
        half = float(ciou(tf.constant(boxes[0, 5]), tf.constant(gt[0, 0])))
        assert float(parts["box"]) == pytest.approx((1 - half) * t[0, 5, 1] / norm, rel=1e-4)  # the exact box costs 0
        assert float(total) == pytest.approx(cfg.cls_weight * float(parts["cls"]) + cfg.box_weight * float(parts["box"]))


def test_pyramid_detector_decodes_each_level_at_its_stride():
    from edgekit.host import import_tf
    from edgekit.host.archs import get_arch
    from edgekit.host.detector import Grid, build_detector, detector_arch, grid_of

    _, keras = import_tf()
    model = build_detector(detector_arch("small"), 64, 3)
    grid = grid_of(model)
    assert grid == Grid((64, 64), 8, 2) and grid.n == 64 + 16
    assert [tuple(o.shape[1:]) for o in model.outputs] == [(80, 4), (80, 3)]
    raw_model = keras.Model(model.inputs[0], [model.get_layer("box_levels").output, model.outputs[0]])
    raw, boxes = (np.asarray(a) for a in raw_model(np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3))))
    dist = np.log1p(np.exp(raw[0].astype(np.float64))) * grid.cell_strides()[:, None] / 64
    np.testing.assert_allclose(boxes[0], np.tile(grid.centers(), (1, 2)) + dist * [-1, -1, 1, 1], atol=1e-5)
    assert grid_of(build_detector(detector_arch("small-v1"), 64, 3)) == Grid((64, 64), 8, 1)
    assert grid_of(build_detector(detector_arch("medium"), 64, 3)).strides == (8, 16, 32)
    assert detector_arch("mobilenetv2") == get_arch("mobilenetv2")


def test_pyramid_detector_exports_with_the_contract(tmp_path):
    """export converts the pyramid (ConvTranspose, Add, Concat), passes its own TF/ONNX parity check, and
    quantizes to INT8 (ONNX Runtime's shape inference accepts the graph)."""
    import json

    pytest.importorskip("tf2onnx")
    import onnx

    from edgekit.host.detector import build_detector, detector_arch
    from edgekit.host.export import export_bundle

    path = tmp_path / "det.keras"
    model = build_detector(detector_arch("small"), 64, 3)
    for level in (0, 1):  # scores near 0.5, not the 0.01 prior: FP32 detects something for the INT8 gate
        layer = model.get_layer(f"cls_logits_p{level}")
        layer.set_weights([layer.get_weights()[0], np.zeros(3, np.float32)])
    model.save(path)
    path.with_name("det.keras.edgekit.json").write_text(json.dumps({
        "task": "detection", "labels": ["a", "b", "c"],
        "preprocess": {"size": [64, 64], "resize": "letterbox", "color": "RGB", "scale": 1 / 255}}))
    bundle = export_bundle(path, tmp_path / "bundle", target="jetpack-6.1")
    assert bundle.task == "detection"
    graph = onnx.load(bundle.model_path("fp32")).graph
    dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim][1:] for o in graph.output}
    assert dims == {"boxes": [80, 4], "scores": [80, 3]}
    ops = {n.op_type for n in graph.node}
    assert {"ConvTranspose", "Concat"} <= ops and not ops & {"Tile", "Resize"}, sorted(ops)  # static upsampling
    import cv2

    from edgekit.bench import scene_frames
    from edgekit.quant.quantize import quantize_bundle

    (tmp_path / "calib").mkdir()
    for i, frame in enumerate(scene_frames(16, (64, 64))):
        cv2.imwrite(str(tmp_path / "calib" / f"{i}.png"), frame)
    from edgekit.bundle import Bundle

    quantize_bundle(tmp_path / "bundle", tmp_path / "calib", num_images=16, holdout=0, fp16=False, cpu_variant=True,
                    progress=False)
    quantized = Bundle.load(tmp_path / "bundle")
    assert quantized.has_model("int8") and quantized.has_model("int8_cpu")
