"""Where results go: JSON lines, an annotated video, a window (and the HTTP server in server.py).

A sink has ``open(info)`` (called before the source opens, so a bad path fails first),
``write(result)`` per frame and ``close()``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from edgekit.errors import DeviceError, EdgekitError, InputError, UsageError

log = logging.getLogger(__name__)

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


def _writable(path: Path) -> None:
    """Raise InputError unless a file can be created at ``path``."""
    parent = path.parent
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write {path}: permission denied")


class JsonSink:
    """One JSON object per line and frame, flushed as written (``-`` is stdout).

    The file is a log written as the loop runs (not atomically at the end): every line on disk is
    complete, so a killed run leaves every frame it finished.
    """

    def __init__(self, path: str):
        self.path = path
        self._file = None
        self._clock = None

    def open(self, info) -> None:
        self._clock = info.clock
        if self.path == "-":
            self._file = sys.stdout
            return
        path = Path(self.path)
        _writable(path)
        try:
            self._file = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror}") from exc

    def write(self, result) -> None:
        self._file.write(json.dumps(result.to_json(self._clock), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            with contextlib.suppress(OSError):
                os.fsync(self._file.fileno())
            self._file.close()
        elif self._file is sys.stdout:
            with contextlib.suppress(OSError):
                sys.stdout.flush()
        self._file = None


class VideoSink:
    """The annotated frames as a video (``mp4v`` in .mp4/.mov/.mkv, ``MJPG`` in .avi).

    Written to a hidden partial file beside ``path`` and renamed on close, so ``path`` is always a
    whole, playable video (pip OpenCV cannot write H.264/avc1). Frames of another size (a camera
    that came back at another resolution) are resized to the first frame's size.
    """

    def __init__(self, path: str, fps: float | None = None):
        self.path = Path(path)
        self.fps = fps
        codec = VIDEO_CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise UsageError(f"--record needs a {', '.join(VIDEO_CODECS)} file, got {self.path.name}")
        self.codec = codec
        self.partial = self.path.with_name(f".{self.path.stem}.{os.getpid()}.partial{self.path.suffix}")
        self.frames = 0
        self._writer = None
        self._size = None

    def open(self, info) -> None:
        _writable(self.path)
        self._info = info

    def write(self, result) -> None:
        import cv2

        image = result.annotated()
        if self._writer is None:
            fps = self.fps or self._info.fps or 30.0
            self._size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*self.codec), fps, self._size)
            if not self._writer.isOpened():
                self._writer = None
                raise EdgekitError(f"OpenCV cannot write {self.codec} video to {self.path}")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is None:
            log.warning("no frames to record; %s not written", self.path)
            return
        self._writer.release()
        self._writer = None
        try:
            with open(self.partial, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.partial, self.path)
        except OSError as exc:
            raise InputError(f"cannot write {self.path}: {exc.strerror}") from exc
        log.info("recorded %d frames to %s", self.frames, self.path)


def gui_available() -> str | None:
    """None when OpenCV can open a window here, else why not."""
    from edgekit.opencv_build import opencv_build

    if opencv_build()["GUI"] == "NONE":
        return "this OpenCV has no GUI support (opencv-python-headless?)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no screen (DISPLAY and WAYLAND_DISPLAY are unset)"
    return None


class DisplaySink:
    """A window showing the annotated frames; closing it or pressing q/Esc stops the loop."""

    def __init__(self, title: str = "edgekit"):
        self.title = title
        self._open = False

    def open(self, info) -> None:
        why = gui_available()
        if why:
            raise DeviceError(f"--display needs a GUI: {why}; use --serve to watch over HTTP")
        self._stop = info.stop

    def write(self, result) -> None:
        import cv2

        cv2.imshow(self.title, result.annotated())
        self._open = True
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27) or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            self._stop("window closed")

    def close(self) -> None:
        if self._open:
            import cv2

            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
            self._open = False
