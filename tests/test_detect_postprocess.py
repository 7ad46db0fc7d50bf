"""Detection results: the NMS outputs -> objects in source-frame pixels, drawn, counted per label in /metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.preprocess import Preprocess


def nms_outputs(rows, k=5):
    """Plugin-format outputs for one frame from ``rows`` of (x1, y1, x2, y2, score, class), padded to ``k``."""
    boxes = np.zeros((1, k, 4), np.float32)
    scores = np.zeros((1, k), np.float32)
    classes = np.zeros((1, k), np.int32)
    for i, (*box, score, cls) in enumerate(rows):
        boxes[0, i], scores[0, i], classes[0, i] = box, score, cls
    return {"num_detections": np.array([[len(rows)]], np.int32), "detection_boxes": boxes,
            "detection_scores": scores, "detection_classes": classes}


@pytest.fixture
def post():
    from edgekit.stream.postprocess import Detection

    return Detection(["cat", "dog"], Preprocess(size=(128, 128), resize="letterbox"))


def test_boxes_come_back_in_source_pixels_letterbox_undone(post):
    # a 320x240 frame letterboxed to 128x128: scale 0.4, 16 rows of padding above and below
    out = nms_outputs([(0.3125, 0.375, 0.5625, 0.5, 0.9, 1)])
    (r,) = post(out, (240, 320))
    assert r == {"label": "dog", "class": 1, "score": pytest.approx(0.9), "box": [100.0, 80.0, 180.0, 120.0]}


def test_stretch_is_undone_and_boxes_clipped_to_the_frame():
    from edgekit.stream.postprocess import Detection

    post = Detection(["a"], Preprocess(size=(100, 100), resize="stretch"))
    (r,) = post(nms_outputs([(0.1, 0.5, 1.2, 1.0, 0.5, 0)]), (50, 200))
    assert r["box"] == [20.0, 25.0, 200.0, 50.0]


def test_padding_rows_are_dropped_best_first(post):
    out = nms_outputs([(0.1, 0.1, 0.2, 0.2, 0.5, 0), (0.3, 0.3, 0.4, 0.4, 0.95, 1), (0.5, 0.5, 0.6, 0.6, 0.1, 0)])
    out["detection_scores"][0, 3:] = 0.99  # padding past num_detections, whatever it holds
    results = post(out, (128, 128))
    assert [(r["label"], r["score"]) for r in results] == [("dog", pytest.approx(0.95)), ("cat", pytest.approx(0.5)),
                                                           ("cat", pytest.approx(0.1))]
    assert post(nms_outputs([]), (128, 128)) == []


def test_runner_without_nms_outputs_is_a_clear_error(post):
    from edgekit.errors import BundleError

    with pytest.raises(BundleError, match="num_detections"):
        post({"boxes": np.zeros((1, 4, 4)), "scores": np.zeros((1, 4, 2))}, (128, 128))


def test_draw_puts_each_box_in_its_class_colour(post):
    from edgekit.stream.postprocess import class_colour

    image = np.zeros((240, 320, 3), np.uint8)
    results = post(nms_outputs([(0.3125, 0.375, 0.5625, 0.5, 0.9, 1)]), (240, 320))
    post.draw(image, results)
    colour = class_colour(1)
    assert tuple(image[100, 100]) == colour and tuple(image[119, 180]) == colour  # left and right edges
    assert not image[95:105, 120:160].any()  # inside the box untouched
    assert (image[60:80, 100:140] == colour).all(axis=2).any()  # the label tag above the box
    assert class_colour(0) != class_colour(1)


def test_metrics_count_objects_per_label():
    from edgekit.stream.metrics import Metrics

    m = Metrics()
    m.count([{"label": "cat"}, {"label": "cat"}, {"label": 'd"og'}])
    m.count([{"label": "cat"}])
    assert m.label_counts() == {"total": {"cat": 3, 'd"og': 1}, "latest": {"cat": 1, 'd"og': 0}}
    text = m.prometheus()
    assert 'edgekit_results_total{label="cat"} 3' in text
    assert 'edgekit_frame_results{label="d\\"og"} 0' in text
    assert m.snapshot()["results"]["total"]["cat"] == 3


class SquareFinder:
    """A stand-in detection model (numpy, not TensorRT): reports the bright square of each preprocessed
    frame in the NMS output format, so the loop's letterbox undo is checked against where it was drawn."""

    def activate(self):
        pass

    def deactivate(self):
        pass

    def infer(self, batch):
        plane = batch[0, 0]
        ys, xs = np.nonzero(plane > 0.9)
        h, w = plane.shape
        box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
        return nms_outputs([(*box, 0.8, 1)])


class Annotated:
    """A sink keeping the annotated frames."""

    def __init__(self):
        self.images = []

    def open(self, info):
        pass

    def write(self, result):
        self.images.append(result.annotated())

    def close(self):
        pass


@pytest.fixture
def detection_bundle(tiny_bundle, tmp_path):
    """A bundle whose manifest is a detection bundle's (labels, letterbox, nms); its model is unused here."""
    import shutil

    from edgekit.bundle import Bundle

    path = tmp_path / "det"
    shutil.copytree(tiny_bundle.path, path)
    bundle = Bundle.load(path)
    bundle.manifest.update({
        "task": "detection", "labels": ["cat", "dog"],
        "preprocess": Preprocess(size=(64, 64), resize="letterbox").to_dict(),
        "outputs": [{"name": "boxes", "meaning": "boxes"}, {"name": "scores", "meaning": "scores"}],
        "nms": {"score_threshold": 0.5, "eval_score_threshold": 0.001, "iou_threshold": 0.5,
                "max_detections": 5, "class_agnostic": False},
    })
    bundle.save()
    return Bundle.load(path)


def test_loop_reports_source_pixel_boxes_and_counts(detection_bundle, tmp_path):
    import cv2

    from edgekit.stream import postprocess
    from edgekit.stream.pipeline import Pipeline
    from edgekit.stream.sinks import JsonSink, VideoSink
    from edgekit.stream.capture import Capture
    from edgekit.stream.sources import open_source

    folder = tmp_path / "frames"
    folder.mkdir()
    squares = [(40, 20, 120, 100), (200, 100, 280, 180), (0, 0, 80, 80)]  # x1, y1, x2, y2 on 320x240
    for i, (x1, y1, x2, y2) in enumerate(squares):
        frame = np.zeros((240, 320, 3), np.uint8)
        frame[y1:y2, x1:x2] = 255
        cv2.imwrite(str(folder / f"{i}.png"), frame)
    post = postprocess.for_bundle(detection_bundle)
    drawn = Annotated()
    sinks = [JsonSink(str(tmp_path / "out.jsonl")), VideoSink(str(tmp_path / "out.avi")), drawn]
    pipe = Pipeline(detection_bundle, Capture(open_source(folder)), SquareFinder(), post, sinks)
    pipe.run()
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line, square in zip(lines, squares):
        (r,) = line["results"]
        assert r["label"] == "dog" and r["score"] == pytest.approx(0.8)
        np.testing.assert_allclose(r["box"], square, atol=5)  # 64-px model input: one input pixel is 5 frame pixels
    assert pipe.metrics.label_counts() == {"total": {"dog": 3}, "latest": {"dog": 1}}
    from edgekit.stream.postprocess import class_colour

    x1, y1, x2, y2 = (int(round(v)) for v in lines[0]["results"][0]["box"])
    assert tuple(drawn.images[0][(y1 + y2) // 2, x1]) == class_colour(1)  # the box edge, on the source frame
    assert drawn.images[0].shape == (240, 320, 3) and (tmp_path / "out.avi").stat().st_size > 0
