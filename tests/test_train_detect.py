"""The Keras detector: in-graph box decoding, targets, augmentation, and training on the sample set."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="session")
def trained_detector(detect_data, tmp_path_factory):
    """The original detector (small-v1: one stride-8 level, static targets) trained for a few epochs on the
    sample set's YOLO layout at 96 px; the pyramid detector needs more epochs than a quick test affords
    (its parts are tested in test_detector_training.py)."""
    pytest.importorskip("tensorflow")
    from edgekit.host.train_detect import train_detector

    out = tmp_path_factory.mktemp("detector") / "digits.keras"
    result = train_detector(detect_data / "yolo", out, arch="small-v1", image_size=96, epochs=6, batch_size=16,
                            verbose=0)
    return out, result


def _load(path):
    from edgekit.host import import_tf
    from edgekit.host.detector import decode_boxes_layer

    _, keras = import_tf()
    decode_boxes_layer()
    return keras.models.load_model(path, compile=False)


def test_assign_targets_centre_cells_and_smallest_box_wins():
    from edgekit.host.detector import Grid, assign_targets

    grid = Grid((64, 64), 8)  # 8x8 cells, centres at 4, 12, ... px
    big = [0.0, 0.0, 0.75, 0.75]  # centre (24, 24) px: cells 2 and 3 in x and y are within 1.5 strides (12 px)
    small = [0.40, 0.40, 0.60, 0.60]  # centre (32, 32) px: cells 3 and 4
    scores, boxes = assign_targets(np.array([big, small], np.float32), np.array([0, 1]), grid, 2, radius=1.5)
    owner = scores.argmax(1).reshape(8, 8)
    positive = scores.max(1).reshape(8, 8) > 0
    assert (owner[3:5, 3:5] == 1).all()  # the small box takes the shared centre cells
    assert positive.sum() == 7 and owner[positive].sum() == 4  # the big one keeps its other 3 central cells
    assert (owner[2:4, 2:4][positive[2:4, 2:4]] == [0, 0, 0, 1]).all()
    np.testing.assert_allclose(boxes[3 * 8 + 3], [*small, 1.0])
    tiny = np.array([[0.9, 0.05, 0.92, 0.07]], np.float32)  # smaller than a cell: its centre cell is positive
    scores, _ = assign_targets(tiny, np.array([0]), grid, 1)
    assert np.flatnonzero(scores[:, 0]).tolist() == [0 * 8 + 7]


def test_augment_moves_boxes_with_the_pixels():
    from edgekit.host.train_detect import augment_detection

    frame = np.full((96, 96, 3), 40, np.uint8)
    frame[30:50, 20:60] = 255
    boxes = np.array([[20 / 96, 30 / 96, 60 / 96, 50 / 96]], np.float32)
    rng = np.random.default_rng(3)
    for _ in range(10):
        out, moved, classes = augment_detection(frame, boxes, np.array([4]), rng)
        if not len(moved):
            continue
        ys, xs = np.nonzero(out[..., 0] > 200)
        x1, y1, x2, y2 = moved[0] * 96
        assert classes.tolist() == [4]
        assert abs(xs.min() - x1) <= 1.5 and abs(ys.min() - y1) <= 1.5
        assert abs(xs.max() + 1 - x2) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5


def test_sidecar_names_task_labels_and_letterbox(trained_detector):
    from edgekit.host.train import sidecar_path
    from edgekit.preprocess import Preprocess

    path, result = trained_detector
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["task"] == "detection" and meta["labels"] == [str(d) for d in range(10)]
    prep = Preprocess.from_dict(meta["preprocess"])
    assert prep.size == (96, 96) and prep.resize == "letterbox"
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores"]
    assert meta["training"]["images"] == {"train": 480, "val": 120} and meta["training"]["format"] == "yolo"
    assert 0.0 <= result["val_recall"] <= 1.0 and 0.0 <= result["val_precision"] <= 1.0


def test_outputs_follow_the_contract_with_decoding_in_the_graph(trained_detector):
    from edgekit.host import import_tf
    from edgekit.host.detector import Grid

    _, keras = import_tf()
    model = _load(trained_detector[0])
    assert model.output_names == ["boxes", "scores"]
    raw_model = keras.Model(model.inputs[0], [model.get_layer("box_raw").output, *model.outputs])
    x = np.random.default_rng(0).uniform(0, 1, (2, 96, 96, 3)).astype(np.float32)
    raw, boxes, scores = (np.asarray(a) for a in raw_model(x))
    assert boxes.shape == (2, 144, 4) and scores.shape == (2, 144, 10)
    assert ((scores >= 0) & (scores <= 1)).all()
    centres = np.tile(Grid((96, 96), 8).centers(), (1, 2))
    dist = np.log1p(np.exp(raw.reshape(2, 144, 4).astype(np.float64))) * 8 / 96
    np.testing.assert_allclose(boxes, centres + dist * [-1, -1, 1, 1], atol=1e-5)
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()


def test_trained_detector_finds_the_held_out_digits(trained_detector, detect_data):
    """Training progress (not the mAP gate): val objects are located, and their cells outscore the background."""
    from edgekit.host.archs import get_arch
    from edgekit.data.detection import read_detection_set
    from edgekit.host.detector import Grid, assign_targets
    from edgekit.host.train_detect import _load as load_frames
    from edgekit.host.train_detect import recall_precision
    from edgekit.nms import NmsParams

    import dataclasses

    prep = dataclasses.replace(get_arch("small").preprocess(96), resize="letterbox")
    frames, boxes, classes = load_frames(read_detection_set(detect_data / "coco").splits["val"], prep)
    pred_boxes, pred_scores = _load(trained_detector[0]).predict(np.stack([prep.hwc(f) for f in frames]), verbose=0)
    params = NmsParams(score_threshold=0.1)
    agnostic, _ = recall_precision(pred_boxes, pred_scores.max(2, keepdims=True), boxes,
                                   [np.zeros_like(c) for c in classes], params)
    assert agnostic > 0.5, agnostic
    grid = Grid((96, 96), 8)
    mask = np.stack([assign_targets(b, c, grid, 10)[1][:, 4] for b, c in zip(boxes, classes)]) > 0
    best = pred_scores.max(2)
    ranks = np.argsort(np.argsort(np.concatenate([best[mask], best[~mask]]))) + 1
    n_obj, n_bg = mask.sum(), (~mask).sum()
    auc = (ranks[:n_obj].sum() - n_obj * (n_obj + 1) / 2) / (n_obj * n_bg)  # P(object cell > background cell)
    assert auc > 0.9, auc


def test_cli_trains_a_detector_on_the_coco_layout(cli, detect_data, tmp_path):
    pytest.importorskip("tensorflow")
    from edgekit.host.train import sidecar_path

    out = tmp_path / "coco.keras"
    result = cli("train", detect_data / "coco", "--task", "detect", "-o", out, "--epochs", "1", "--image-size", "64",
                 "--batch-size", "32")
    assert result.code == 0, result
    assert "trained a small detector on 480 images" in result.out and "val recall" in result.out
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["task"] == "detection" and meta["training"]["format"] == "coco"
    assert _load(out).outputs[1].shape[1:] == (8 * 8 + 4 * 4, 10)  # the default pyramid: strides 8 and 16 on 64 px


def test_loop_on_the_exported_detector_reports_boxes_in_video_pixels(trained_detector, detect_data, tmp_path):
    """train -> export -> run on val.mp4: objects in 320x240 frame pixels that overlap the true boxes."""
    from edgekit.host.export import export_bundle
    from edgekit.host.train_detect import box_iou
    from edgekit.stream.loop import run_loop

    bundle = export_bundle(trained_detector[0], tmp_path / "bundle", target="jetpack-6.1")
    assert bundle.task == "detection" and bundle.preprocess.resize == "letterbox"
    out = tmp_path / "dets.jsonl"
    summary = run_loop(bundle, str(detect_data / "val.mp4"), json_path=str(out), max_frames=40, score_threshold=0.1)
    frames = [json.loads(line)["results"] for line in out.read_text().splitlines()]
    truth = json.loads((detect_data / "val.boxes.json").read_text())
    assert summary["frames"] == len(frames) == 40
    found = total = 0
    for dets, objects in zip(frames, truth):
        for d in dets:
            assert set(d) == {"label", "class", "score", "box"} and d["score"] >= 0.1
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 240
        total += len(objects)
        if dets and objects:
            ious = box_iou(np.array([o["box"] for o in objects]), np.array([d["box"] for d in dets]))
            found += int((ious.max(1) >= 0.5).sum())
    assert found / total > 0.4, (found, total)  # located (any class), through letterbox and back


def test_keras_application_backbone_gives_a_stride_16_detector():
    pytest.importorskip("tensorflow")
    from edgekit.errors import UsageError
    from edgekit.host.archs import get_arch
    from edgekit.host.detector import build_detector, grid_of

    model = build_detector(get_arch("mobilenetv2"), 64, 3)
    assert grid_of(model).stride == 16 and [tuple(o.shape[1:]) for o in model.outputs] == [(16, 4), (16, 3)]
    with pytest.raises(UsageError, match="multiple of 16"):
        build_detector(get_arch("mobilenetv2"), 72, 3)
    with pytest.raises(UsageError, match="no pretrained weights"):
        build_detector(get_arch("small"), 64, 3, weights="imagenet")
