"""What this OpenCV was built with, parsed once from ``cv2.getBuildInformation()``.

doctor reports it, ``csi://``/``gst:`` sources need GStreamer, ``--display`` needs a GUI backend.
"""

from __future__ import annotations

import functools
import re


def parse(info: str) -> dict:
    """GStreamer/V4L2/FFMPEG as booleans and the GUI backend (``"NONE"`` when there is none)."""

    def field(label: str) -> str:
        m = re.search(rf"^\s*{re.escape(label)}:\s*(.+?)\s*$", info, re.MULTILINE | re.IGNORECASE)
        return m.group(1) if m else "NO"

    gui = field("GUI")
    return {
        "GStreamer": field("GStreamer").upper().startswith("YES"),
        "V4L2": field("v4l/v4l2").upper().startswith("YES"),
        "FFMPEG": field("FFMPEG").upper().startswith("YES"),
        "GUI": "NONE" if gui.upper() in ("NO", "NONE") else gui,
    }


@functools.lru_cache(maxsize=None)
def opencv_build() -> dict:
    """:func:`parse` of the imported OpenCV's build information."""
    import cv2

    return parse(cv2.getBuildInformation())
