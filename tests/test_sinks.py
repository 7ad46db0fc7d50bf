"""Sinks: JSON lines, recorded video, display; bad paths fail before the source opens."""

from __future__ import annotations

import json
import os

import cv2
import pytest

from edgekit.errors import DeviceError, InputError, UsageError
from edgekit.stream.loop import run_loop
from edgekit.stream.sinks import DisplaySink, VideoSink, gui_available


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return frames
        frames.append(frame)


def test_json_lines_hold_every_frame(tiny_bundle, tmp_path, colour_media):
    labels = colour_media.labels(20, run=3)
    out = tmp_path / "out.jsonl"
    run_loop(tiny_bundle, colour_media.video(tmp_path / "v.mp4", labels), backend="onnxruntime", json_path=str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(20))
    assert [x["results"][0]["label"] for x in lines] == labels
    first = lines[0]
    assert set(first["latency_ms"]) == {"capture", "preprocess", "infer", "postprocess", "end_to_end"}
    assert set(first["timestamps"]) == {"captured", "preprocessed", "inferred", "postprocessed"}
    assert abs(first["timestamps"]["captured"] - os.path.getmtime(out)) < 60  # wall-clock epoch seconds


def test_recorded_video_has_every_frame_annotated(tiny_bundle, tmp_path, colour_media):
    labels = colour_media.labels(17, run=2)
    out = tmp_path / "rec.mp4"
    run_loop(tiny_bundle, colour_media.video(tmp_path / "v.mp4", labels, size=(120, 160)), backend="onnxruntime",
             record=str(out))
    frames = count_frames(out)
    assert len(frames) == 17 and frames[0].shape == (120, 160, 3)
    assert not list(tmp_path.glob(".rec*"))  # no partial file left
    # the label box is drawn in the top-left corner; the rest keeps the frame's colour
    corner, middle = frames[0][2:10, 2:10].mean(), frames[0][40:60, 100:150].mean(axis=(0, 1))
    assert corner < 120 and middle[2] > 200


def test_avi_records_mjpg(tiny_bundle, tmp_path, colour_media):
    out = tmp_path / "rec.avi"
    run_loop(tiny_bundle, colour_media.video(tmp_path / "v.mp4", ["red"] * 6), backend="onnxruntime", record=str(out))
    assert len(count_frames(out)) == 6


def test_unwritable_paths_fail_before_the_source_opens(tiny_bundle, tmp_path):
    missing = tmp_path / "nowhere" / "out.jsonl"
    with pytest.raises(InputError, match="does not exist"):
        run_loop(tiny_bundle, "rtsp://127.0.0.1:9/never-opened", json_path=str(missing))
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        run_loop(tiny_bundle, "rtsp://127.0.0.1:9/never-opened", record=str(tmp_path / "dir.mp4"))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="permission denied"):
            run_loop(tiny_bundle, "rtsp://127.0.0.1:9/never-opened", json_path=str(locked / "out.jsonl"))


def test_record_needs_a_known_container(tmp_path):
    with pytest.raises(UsageError, match="--record needs"):
        VideoSink(str(tmp_path / "out.gif"))


@pytest.mark.skipif(gui_available() is None, reason="a GUI is available here")
def test_display_without_a_gui_is_a_clear_error():
    with pytest.raises(DeviceError, match="--display needs a GUI"):
        DisplaySink().open(None)
