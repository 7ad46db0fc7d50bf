"""Sources OpenCV reads: ``cv2.VideoCapture`` (V4L2 cameras, CSI and GStreamer pipelines, RTSP,
video files) and image folders.

A video file is read past damaged stretches (skipped frames are counted and logged) and ends after
``MAX_BAD_READS`` failed reads in a row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgekit.errors import DeviceError, InputError
from edgekit.images import ImageReadError, read_image, to_bgr8
from edgekit.stream.source_base import Source, SourceLost

log = logging.getLogger(__name__)

MAX_BAD_READS = 250  # failed reads in a row that end a video file (a damaged stretch is read past)


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

