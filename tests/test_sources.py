"""Sources: the URI grammar, its errors, file/folder/MJPEG reading, latest-frame drops, reconnects."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from edgekit.errors import DeviceError, InputError, UsageError
from edgekit.stream.server import StreamServer
from edgekit.stream.capture import Capture
from edgekit.stream.mjpeg import MjpegHttpSource
from edgekit.stream.opencv_sources import ImageFolderSource, VideoCaptureSource
from edgekit.stream.sources import csi_pipeline, has_gstreamer, open_source


def colour_of(image):
    return ("blue", "green", "red")[int(np.argmax(image.reshape(-1, 3).mean(0)))]


def read_all(capture, limit=1000, pause=0.0):
    frames = []
    while len(frames) < limit:
        frame = capture.get(0.5)
        if frame is None:
            if capture.ended:
                break
            continue
        frames.append(frame)
        time.sleep(pause)
    return frames


# ---- grammar --------------------------------------------------------------------------------
def test_grammar_picks_the_source_kind(tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", ["red"] * 3)
    folder = colour_media.folder(tmp_path / "imgs", ["green"] * 2)
    assert isinstance(open_source(str(video)), VideoCaptureSource) and not open_source(video).live
    assert isinstance(open_source(f"file://{video}"), VideoCaptureSource)
    assert isinstance(open_source(folder), ImageFolderSource)
    assert isinstance(open_source(folder / "0000.png"), ImageFolderSource)
    http = open_source("http://127.0.0.1:9/stream.mjpg")
    assert isinstance(http, MjpegHttpSource) and http.live
    rtsp = open_source("rtsp://127.0.0.1:9/cam")
    assert isinstance(rtsp, VideoCaptureSource) and rtsp.live


@pytest.mark.parametrize("uri", ["7", "/dev/video7", "v4l2:///dev/video7"])
def test_missing_camera_is_a_clear_error(uri):
    with pytest.raises(DeviceError, match="no camera at index 7"):
        open_source(uri)


def test_unknown_scheme_and_missing_path(tmp_path):
    with pytest.raises(UsageError, match="unknown source"):
        open_source("ftp://example/x")
    with pytest.raises(InputError, match="does not exist"):
        open_source(tmp_path / "nothing.mp4")


def test_a_file_that_is_not_a_video(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video at all\n")
    with pytest.raises(InputError, match="is not a video"):
        open_source(bad).open()


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer; the error path is not reachable")
@pytest.mark.parametrize("uri", ["csi://0", "gst:videotestsrc ! appsink"])
def test_gstreamer_sources_say_how_to_get_it(uri):
    with pytest.raises(DeviceError, match="JetPack's system OpenCV"):
        open_source(uri)


def test_csi_pipeline_uses_argus_and_the_requested_mode():
    text = csi_pipeline(1, 1920, 1080, 60)
    assert text.startswith("nvarguscamerasrc sensor-id=1 ")
    assert "width=1920,height=1080,framerate=60/1" in text and text.endswith("appsink drop=true max-buffers=1 sync=false")


def test_rtsp_that_does_not_answer_times_out(tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts the TCP connection, never says a word
    try:
        source = open_source(f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam", timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="does not answer"):
            source.open()
        assert time.monotonic() - t0 < 30  # bounded by the open timeout, not hanging forever
    finally:
        silent.close()


def test_http_that_refuses_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeviceError, match="cannot open http://127.0.0.1"):
        open_source(f"http://127.0.0.1:{port}/stream.mjpg", timeout=1.0).open()


# ---- reading files and folders --------------------------------------------------------------
def test_video_file_is_read_in_order_without_drops(tmp_path, colour_media):
    labels = colour_media.labels(24, run=2)
    capture = Capture(open_source(colour_media.video(tmp_path / "v.mp4", labels))).start()
    frames = read_all(capture)
    capture.close()
    assert [f.number for f in frames] == list(range(24))
    assert [colour_of(f.image) for f in frames] == labels
    assert capture.drops == 0 and capture.ended


def test_image_folder_skips_unreadable_files(tmp_path, colour_media, caplog):
    folder = colour_media.folder(tmp_path / "imgs", ["red", "green", "blue"])
    (folder / "0001b.png").write_bytes(b"broken")
    capture = Capture(open_source(folder)).start()
    frames = read_all(capture)
    assert [colour_of(f.image) for f in frames] == ["red", "green", "blue"]
    assert "skipping" in caplog.text


def test_loop_replays_a_file(tmp_path, colour_media):
    capture = Capture(open_source(colour_media.video(tmp_path / "v.mp4", ["red", "green"])), loop=True).start()
    frames = [capture.get() for _ in range(5)]
    assert [colour_of(f.image) for f in frames] == ["red", "green", "red", "green", "red"]


def test_realtime_keeps_only_the_newest_frame(tmp_path, colour_media):
    """A slow consumer of a paced file gets fresh frames; the ones it missed are counted as drops."""
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(60), fps=200)
    capture = Capture(open_source(video), realtime=True).start()
    assert capture.fps == pytest.approx(200)
    taken = read_all(capture, pause=0.03)  # ~6 frames arrive meanwhile
    capture.close()
    numbers = [f.number for f in taken]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert capture.drops > 0
    assert len(taken) + capture.drops == 60



def test_a_paced_frame_is_stamped_when_it_is_due_not_a_period_earlier(tmp_path, colour_media):
    """At 5 fps a frame handed over must not carry the 200 ms pacing wait as its age."""
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(4), fps=5)
    capture = Capture(open_source(video), realtime=True).start()
    ages = []
    for _ in range(3):
        frame = capture.get(1.0)
        ages.append(time.monotonic() - frame.captured)
    capture.close()
    assert max(ages) < 0.1, ages  # the period is 0.2 s; stamping before the wait made every age >= 0.2 s

# ---- MJPEG over HTTP, and a source that vanishes --------------------------------------------
class Camera:
    """An MJPEG 'camera' on 127.0.0.1: edgekit's own StreamServer publishing one colour."""

    def __init__(self, colour_media, label, port=0):
        self.server = StreamServer(f"127.0.0.1:{port}").open()
        self.frame = colour_media.frame(label)
        self.running = True
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self):
        while self.running:
            self.server.publish(self.frame)
            time.sleep(0.01)

    def stop(self):
        self.running = False
        self.thread.join()
        self.server.close()


def test_mjpeg_http_source_reads_frames(colour_media):
    cam = Camera(colour_media, "blue")
    try:
        capture = Capture(open_source(f"{cam.server.url}/stream.mjpg", timeout=2)).start()
        frames = [f for f in (capture.get(1.0) for _ in range(5)) if f is not None]
        capture.close()
        assert len(frames) >= 3
        assert all(colour_of(f.image) == "blue" and f.image.shape == (48, 64, 3) for f in frames)
    finally:
        cam.stop()


def test_snapshot_url_is_polled(colour_media):
    cam = Camera(colour_media, "green")
    try:
        source = open_source(f"{cam.server.url}/snapshot.jpg", timeout=2)
        source.open()
        assert [colour_of(source.read()) for _ in range(3)] == ["green"] * 3
        source.close()
    finally:
        cam.stop()


def test_a_vanished_live_source_is_reopened(colour_media):
    cam = Camera(colour_media, "red")
    port = cam.server.port
    capture = Capture(open_source(f"http://127.0.0.1:{port}/stream.mjpg", timeout=1)).start()
    try:
        assert colour_of(capture.get(2.0).image) == "red"
        cam.stop()  # the camera goes away...
        time.sleep(1.0)
        while capture.get(0.05) is not None:
            pass
        assert capture.reconnects == 0
        cam = Camera(colour_media, "green", port)  # ...and comes back on the same port
        deadline = time.monotonic() + 15
        seen = None
        while time.monotonic() < deadline and seen != "green":
            frame = capture.get(0.5)
            seen = colour_of(frame.image) if frame is not None else seen
        assert seen == "green"
        assert capture.reconnects == 1
    finally:
        capture.close()
        cam.stop()
