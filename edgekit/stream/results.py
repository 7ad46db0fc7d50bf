"""What flows out of the loop: :class:`FrameResult` (one frame, its results and timings) and
:class:`StreamInfo` (what consumers learn when they open)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.stream.metrics import Metrics
from edgekit.stream.source_base import Frame


@dataclass
class FrameResult:
    """One processed frame with its results, monotonic stage stamps and per-stage latency (ms).

    ``index`` counts every frame of the run (all sources); ``frame.number`` counts its source's."""

    index: int
    frame: Frame
    results: list = field(default_factory=list)
    stamps: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)
    draw: object = None  # callable(image, results) -> image
    overlay: list = field(default_factory=list)
    batch_size: int = 1  # frames inferred together with this one (itself included)
    events: list | None = None  # with analytics: the frame's events (edgekit.analytics.events)
    _annotated: np.ndarray | None = None

    @property
    def image(self) -> np.ndarray:
        return self.frame.image

    @property
    def source(self) -> str:
        """The name of the source the frame came from."""
        return self.frame.source

    def annotated(self) -> np.ndarray:
        """The frame with its results drawn on it (computed once)."""
        if self._annotated is None:
            image = self.frame.image.copy()
            if self.draw is not None:
                image = self.draw(image, self.results)
            if self.overlay:
                from edgekit.stream.postprocess import draw_text

                draw_text(image, self.overlay, (0, image.shape[0] - 3 * max(12, image.shape[0] // 20)), shade=True)
            self._annotated = image
        return self._annotated

    def to_json(self, clock) -> dict:
        """The JSON line: the source's name, indices, the file and its frame number (files and image
        folders), wall-clock timestamps (epoch s), results, latency (ms)."""
        line = {"source": self.frame.source, "index": self.index, "source_frame": self.frame.number}
        if self.frame.file is not None:
            line.update(file=self.frame.file, frame=self.frame.file_frame)
        return {
            **line,
            "timestamps": {k: round(clock(v), 6) for k, v in self.stamps.items()},
            "results": self.results,
            **({"events": self.events} if self.events is not None else {}),
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
        }


@dataclass
class StreamInfo:
    """What consumers learn when they open: the sources' names (in order), frame rates (known once
    the sources opened), labels, metrics, a way to stop the loop, the monotonic-to-wall clock."""

    fps: float | None
    labels: list
    metrics: Metrics
    stop: object
    clock: object
    sources: list = field(default_factory=lambda: ["0"])
    rates: dict = field(default_factory=dict)  # source name -> fps (None when unknown)

    def fps_of(self, source: str) -> float | None:
        """The frame rate of ``source`` (None until it opened, or when it does not say)."""
        return self.rates.get(source)
