"""What every frame source is: the :class:`Source` interface, the :class:`Frame` it yields, and
:class:`SourceLost`, which a live source raises when it stops giving frames (its capture reopens it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_TIMEOUT = 10.0  # seconds a network source may take to open or to give a frame


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
    source: str = "0"  # the name of the source it came from (``NAME=URI``, else its index)


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


class Unopenable(Source):
    """A source whose URI was refused before opening (``--allow-missing`` keeps it to report it failed)."""

    live = False

    def __init__(self, name: str, error: Exception):
        super().__init__(name)
        self.error = error

    def open(self) -> None:
        raise self.error
