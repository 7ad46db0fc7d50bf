"""Frame sources: one URI grammar (the shape of jetson-utils' videoSource).

=====================  ====================================================================
``0``, ``/dev/video0``  V4L2 camera N (``--width --height --fps``; MJPG when the camera offers it)
``csi://0``             MIPI CSI camera through GStreamer ``nvarguscamerasrc`` (JetPack's OpenCV)
``rtsp://host/path``    RTSP stream (FFmpeg; TCP transport unless OPENCV_FFMPEG_CAPTURE_OPTIONS says)
``http(s)://…``         MJPEG over HTTP (multipart/x-mixed-replace), or a single JPEG polled
``gst:PIPELINE``        any GStreamer pipeline ending in ``appsink``
``video.mp4``           a video file (``file://`` optional)
``folder/``, ``a.jpg``  a folder of images (sorted) or one image
=====================  ====================================================================

:func:`open_source` gives the (not yet opened) :class:`~edgekit.stream.source_base.Source`; the
sources themselves live in :mod:`~edgekit.stream.opencv_sources` and :mod:`~edgekit.stream.mjpeg`,
and :class:`~edgekit.stream.capture.Capture` reads one.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

from edgekit.errors import DeviceError, InputError, UsageError
from edgekit.images import IMAGE_EXTENSIONS, list_images
from edgekit.stream.mjpeg import MjpegHttpSource
from edgekit.stream.opencv_sources import ImageFolderSource, VideoCaptureSource
from edgekit.stream.source_base import DEFAULT_TIMEOUT, Source

log = logging.getLogger(__name__)


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
