"""Frame sources: one URI grammar (the shape of jetson-utils' videoSource) and the capture reader.

=====================  ====================================================================
``0``, ``/dev/video0``  V4L2 camera N (``--width --height --fps``; MJPG when the camera offers it)
``csi://0``             MIPI CSI camera through GStreamer ``nvarguscamerasrc`` (JetPack's OpenCV)
``rtsp://host/path``    RTSP stream (FFmpeg; TCP transport unless OPENCV_FFMPEG_CAPTURE_OPTIONS says)
``http(s)://…``         MJPEG over HTTP (multipart/x-mixed-replace), or a single JPEG polled
``gst:PIPELINE``        any GStreamer pipeline ending in ``appsink``
``video.mp4``           a video file (``file://`` optional)
``folder/``, ``a.jpg``  a folder of images (sorted) or one image
=====================  ====================================================================

A :class:`Source` opens, reads uint8 BGR frames and closes. :class:`Capture` reads it: live
sources (cameras, streams) and ``realtime`` files on their own thread into a latest-frame slot
(the oldest frame is dropped and counted, so latency never grows), other files in order with
no drops. A live source that fails is reopened with backoff while the loop runs; a video file is read past
damaged stretches (skipped frames are counted and logged) and ends after MAX_BAD_READS failed
reads in a row.
The *first* open of any source must succeed (network sources within ``timeout``): otherwise a
clear error, and under systemd ``Restart=`` tries again.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import DeviceError, InputError, UsageError
from edgekit.images import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image, to_bgr8

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
BACKOFF = (0.5, 8.0)  # first and longest wait between reopen attempts, seconds
MAX_BAD_READS = 250  # failed reads in a row that end a video file (a damaged stretch is read past)


class SourceLost(Exception):
    """A live source stopped giving frames (internal: the capture reopens it)."""


@dataclass
class Frame:
    """One captured frame: ``number`` counts every frame the source gave (gaps are drops)."""

    image: np.ndarray
    number: int
    captured: float  # time.monotonic() when the read returned
    read_ms: float
    file: str | None = None  # the image or video file it came from (None for cameras and streams)
    file_frame: int | None = None  # its frame number in that file (0 for an image)


# ---- sources ---------------------------------------------------------------------------------
class Source:
    """Base: ``open()`` raises a clear EdgekitError, ``read()`` gives a frame, None at the end."""

    live = True
    fps: float | None = None

    def __init__(self, name: str):
        self.name = name
        self.file: str | None = None  # the file the last frame read came from, if any
        self.position: int | None = None  # and its frame number there

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class VideoCaptureSource(Source):
    """Anything ``cv2.VideoCapture`` opens: V4L2 cameras, GStreamer pipelines, RTSP, video files."""

    def __init__(self, name, target, api=0, params=(), props=(), live=True, fail=None):
        super().__init__(name)
        self.target, self.api, self.params, self.props = target, api, list(params), list(props)
        self.live = live
        self.fail = fail or (lambda: DeviceError(f"cannot open {name}"))
        self.cap = None
        self._first = None
        self.skipped = 0  # unreadable frames of a file read past

    def open(self) -> None:
        import cv2

        cap = cv2.VideoCapture(self.target, self.api, self.params)
        for prop, value in self.props:
            cap.set(prop, value)
        ok, first = cap.read() if cap.isOpened() else (False, None)
        if not ok or first is None:
            cap.release()
            raise self.fail()
        self.cap, self._first = cap, first
        if not self.live:
            self.file, self.position = self.name, -1
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None
        h, w = first.shape[:2]
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace").strip("\0")
        log.info("opened %s: %dx%d%s%s", self.name, w, h, f" at {self.fps:g} fps" if self.fps else "",
                 f" ({fourcc})" if fourcc.isprintable() and fourcc.strip() and self.live else "")

    def read(self) -> np.ndarray | None:
        if self._first is not None:
            frame, self._first = self._first, None
        else:
            ok, frame = self.cap.read()
            if not ok or frame is None:
                if self.live:
                    raise SourceLost(f"{self.name} gave no frame")
                frame = self._read_past_damage()
                if frame is None:
                    return None
        if self.position is not None:
            self.position += 1
        return frame if frame.ndim == 3 and frame.shape[2] == 3 else to_bgr8(frame)

    def _read_past_damage(self) -> np.ndarray | None:
        """A file's read failed: read on (a damaged stretch), giving up after MAX_BAD_READS in a row."""
        import cv2

        at = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES))
        for failed in range(1, MAX_BAD_READS + 1):
            ok, frame = self.cap.read()
            if ok and frame is not None:
                self.skipped += failed
                if self.position is not None:
                    self.position += failed
                log.warning("%s: skipped %d unreadable frame(s) after frame %d", self.name, failed, at)
                return frame
        total = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if total > 0 and at + MAX_BAD_READS < total:
            log.warning("%s: gave up after %d failed reads in a row at frame %d of %d (%d skipped before)",
                        self.name, MAX_BAD_READS, at, int(total), self.skipped)
        elif self.skipped:
            log.warning("%s: %d unreadable frame(s) skipped in all", self.name, self.skipped)
        return None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageFolderSource(Source):
    """Images read in sorted order; unreadable ones are skipped with a warning."""

    live = False

    def __init__(self, name: str, paths: list[Path]):
        super().__init__(name)
        self.paths = paths
        self._next = 0

    def open(self) -> None:
        if not self.paths:
            raise InputError(f"{self.name} holds no images (jpg, png, bmp)")
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            try:
                image = read_image(path)
                self.file, self.position = str(path), 0
                return image
            except ImageReadError as exc:
                log.warning("skipping %s", exc)
        return None


class MjpegHttpSource(Source):
    """MJPEG over HTTP (``multipart/x-mixed-replace``), or a snapshot URL (one JPEG per GET)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(url)
        self.url, self.timeout = url, timeout
        self._resp = None
        self._boundary = None

    def _get(self):
        request = urllib.request.Request(self.url, headers={"User-Agent": "edgekit"})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise DeviceError(f"cannot open {self.url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            reason = getattr(reason, "strerror", None) or str(reason) or "timed out"
            raise DeviceError(f"cannot open {self.url}: {reason}") from exc

    def open(self) -> None:
        resp = self._get()
        ctype = resp.headers.get_content_type()
        if ctype.startswith("multipart/"):
            boundary = resp.headers.get_param("boundary")
            if not boundary:
                resp.close()
                raise InputError(f"{self.url} sends {ctype} without a boundary")
            self._boundary = b"--" + re.sub(rb"^--", b"", boundary.encode())
        elif ctype == "image/jpeg":
            self._boundary = None
        else:
            resp.close()
            raise InputError(f"{self.url} is not an MJPEG stream (Content-Type {ctype})")
        self._resp = resp
        log.info("opened %s (%s)", self.url, ctype)

    def read(self) -> np.ndarray | None:
        import cv2

        try:
            data = self._next_part() if self._boundary else self._snapshot()
        except (OSError, ValueError, AttributeError) as exc:  # timeouts, resets, a closed response
            raise SourceLost(f"{self.url}: {exc or 'connection lost'}") from exc
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceLost(f"{self.url} sent a part that is not a JPEG")
        return image

    def _snapshot(self) -> bytes:
        if self._resp is None:
            self._resp = self._get()
        resp, self._resp = self._resp, None
        with resp:
            return resp.read()

    def _next_part(self) -> bytes:
        resp = self._resp
        line = b""
        while line.rstrip(b"\r\n") != self._boundary:
            line = resp.readline()
            if not line:
                raise ConnectionError("stream ended")
        headers = {}
        while line := resp.readline().strip():
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        if not line and not headers:
            raise ConnectionError("stream ended")
        if b"content-length" in headers:
            size = int(headers[b"content-length"])
            data = resp.read(size)
            if len(data) != size:
                raise ConnectionError("stream ended inside a frame")
            return data
        parts = []  # no length: read up to the next boundary, which stays unread for next time
        while True:
            peek = resp.peek(len(self._boundary))[: len(self._boundary)] if hasattr(resp, "peek") else b""
            if peek == self._boundary:
                return b"".join(parts).rstrip(b"\r\n")
            line = resp.readline()
            if not line:
                raise ConnectionError("stream ended inside a frame")
            parts.append(line)

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None


# ---- the grammar -----------------------------------------------------------------------------
def has_gstreamer() -> bool:
    from edgekit.opencv_build import opencv_build

    return opencv_build()["GStreamer"]


def _need_gstreamer(uri: str) -> None:
    if not has_gstreamer():
        raise DeviceError(
            f"{uri} needs OpenCV built with GStreamer and this one (pip opencv-python) has none: on a "
            "Jetson use JetPack's system OpenCV (apt python3-opencv; `pip uninstall opencv-python`, "
            "or make the virtualenv with --system-site-packages)"
        )


def csi_pipeline(sensor: int, width: int | None, height: int | None, fps: float | None) -> str:
    """The nvarguscamerasrc pipeline for CSI camera ``sensor`` (BGR frames, newest only)."""
    w, h, f = width or 1280, height or 720, int(fps or 30)
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={w},height={h},"
        f"framerate={f}/1,format=NV12 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def open_source(
    uri: str | int,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Source:
    """The (not yet opened) :class:`Source` for ``uri`` in the grammar above."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # edgekit says what failed, once
    if not log.isEnabledFor(logging.DEBUG):  # FFmpeg's own decoder messages ("header damaged") with -vv only
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    text = str(uri).strip()
    ms = int(timeout * 1000)
    if m := re.fullmatch(r"(?:v4l2://)?(?:/dev/video)?(\d+)", text):
        index = int(m.group(1))
        device = Path(f"/dev/video{index}")
        if not device.exists():
            raise DeviceError(f"no camera at index {index} ({device} does not exist)")
        props = [(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG")), (cv2.CAP_PROP_BUFFERSIZE, 1)]
        props += [(p, v) for p, v in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                                      (cv2.CAP_PROP_FPS, fps)) if v]
        return VideoCaptureSource(
            str(device), index, cv2.CAP_V4L2, props=props,
            fail=lambda: DeviceError(f"camera {device} does not open or gives no frame (busy, or not a capture device)"),
        )
    if m := re.fullmatch(r"csi://(\d+)", text):
        _need_gstreamer(text)
        pipeline = csi_pipeline(int(m.group(1)), width, height, fps)
        return VideoCaptureSource(text, pipeline, cv2.CAP_GSTREAMER,
                                  fail=lambda: DeviceError(f"CSI camera {text} does not open (is nvargus-daemon running?)"))
    if text.startswith("gst:"):
        _need_gstreamer("a gst: pipeline")
        return VideoCaptureSource(text, text[4:].strip(), cv2.CAP_GSTREAMER,
                                  fail=lambda: DeviceError(f"GStreamer pipeline does not open: {text[4:].strip()}"))
    if re.match(r"rtsps?://", text):
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return VideoCaptureSource(text, text, cv2.CAP_FFMPEG, params=params,
                                  fail=lambda: DeviceError(f"RTSP source {text} does not answer (within {timeout:g} s)"))
    if re.match(r"https?://", text):
        return MjpegHttpSource(text, timeout)
    if re.match(r"[a-z][a-z0-9+.-]*://", text) and not text.startswith("file://"):
        raise UsageError(f"unknown source {text!r}: use N, /dev/videoN, csi://N, rtsp://, http(s)://, gst:, a file or folder")
    path = Path(text[len("file://"):] if text.startswith("file://") else text)
    if not path.exists():
        raise InputError(f"source {path} does not exist")
    if path.is_dir():
        return ImageFolderSource(str(path), list_images(path))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFolderSource(str(path), [path])
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: {os.strerror(errno.EACCES)}")
    return VideoCaptureSource(str(path), str(path), cv2.CAP_FFMPEG, live=False,
                              fail=lambda: InputError(f"{path} is not a video OpenCV can read"))


# ---- reading ---------------------------------------------------------------------------------
class Capture:
    """Reads a source: live (or ``realtime``) on a thread into a latest-frame slot, files in order.

    ``pace_fps`` paces a realtime file (default: its own fps); ``loop`` replays a file forever.
    ``drops`` counts frames replaced in the slot before anyone took them, ``reconnects`` the
    successful reopenings of a lost live source; ``heartbeat`` is when the reader last made progress.
    """

    def __init__(self, source: Source, realtime: bool = False, pace_fps: float | None = None, loop: bool = False):
        self.source = source
        self.threaded = source.live or realtime
        self.pace_fps = pace_fps
        self.loop = loop
        self.drops = 0
        self.reconnects = 0
        self.heartbeat = time.monotonic()
        self.ended = False
        self._number = 0
        self._skipped = 0
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = None

    @property
    def fps(self) -> float | None:
        return self.pace_fps or self.source.fps

    @property
    def live(self) -> bool:
        return self.threaded

    def start(self) -> "Capture":
        """Open the source (a clear error if it does not) and start the reader thread if threaded."""
        self.source.open()
        self.heartbeat = time.monotonic()
        if self.threaded:
            if self.pace_fps is None and not self.source.live:
                self.pace_fps = self.source.fps or 30.0
            self._thread = threading.Thread(target=self._reader, name="edgekit-capture", daemon=True)
            self._thread.start()
        return self

    def get(self, timeout: float = 0.1) -> Frame | None:
        """The next frame (threaded: the newest one not yet taken), or None on timeout or at the end."""
        if not self.threaded:
            return None if self.ended else self._read()
        with self._cond:
            if self._slot is None and not self.ended:
                self._cond.wait(timeout)
            frame, self._slot = self._slot, None
            return frame

    def _read(self) -> Frame | None:
        t0 = time.monotonic()
        image = self.source.read()
        if image is None and self.loop and self._number:
            self.source.close()
            self.source.open()
            image = self.source.read()
        t1 = time.monotonic()
        self.heartbeat = t1
        if image is None:
            self.ended = True
            return None
        skipped = getattr(self.source, "skipped", 0)
        self._number += 1 + skipped - self._skipped
        self._skipped = skipped
        return Frame(image, self._number - 1, t1, (t1 - t0) * 1000, self.source.file, self.source.position)

    def _reader(self) -> None:
        next_due = time.monotonic()
        while not self._stop.is_set():
            if self.pace_fps and not self.source.live:  # wait first, so a frame is stamped when it is due
                lag = next_due - time.monotonic()
                if lag > 0 and self._stop.wait(lag):
                    break
                if lag < -1.0:
                    next_due = time.monotonic()
                next_due += 1.0 / self.pace_fps
            try:
                frame = self._read()
            except Exception as exc:  # SourceLost, or anything the backend raises mid-stream
                if not self.source.live:
                    log.error("reading %s failed: %s", self.source.name, exc)
                    frame, self.ended = None, True
                else:
                    self._reopen(exc)
                    next_due = time.monotonic()
                    continue
            if frame is None:
                with self._cond:
                    self._cond.notify_all()
                return
            with self._cond:
                if self._slot is not None:
                    self.drops += 1
                self._slot = frame
                self._cond.notify_all()

    def _reopen(self, reason) -> None:
        log.warning("source lost (%s); reopening %s", reason, self.source.name)
        wait = BACKOFF[0]
        while not self._stop.is_set():
            self.source.close()
            self.heartbeat = time.monotonic()
            if self._stop.wait(wait):
                return
            try:
                self.source.open()
            except Exception as exc:
                log.warning("reopening %s failed: %s (next try in %.1f s)", self.source.name, exc, min(wait * 2, BACKOFF[1]))
                wait = min(wait * 2, BACKOFF[1])
                continue
            self.reconnects += 1
            log.info("source %s is back", self.source.name)
            return

    def close(self, timeout: float = 1.0) -> None:
        """Stop the reader and release the source (left to die with the process if it is stuck)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("source %s is stuck in a read; not releasing it", self.source.name)
                return
        self.source.close()
