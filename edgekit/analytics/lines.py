"""Counting lines: each track's crossings of a segment, with a direction and hysteresis.

A track's reference point (its box centre, or bottom centre) is on one *side* of the line only once
it is farther than ``band`` pixels from it; inside the band the side stays what it was. A crossing is
a change of side whose path (from the last point on the old side to the first on the new) passes
through the segment itself. So a box jittering on the line counts once, and passing beside the
segment's ends counts nothing.

Direction: ``in`` is crossing from the left to the right of someone walking from (x1, y1) to
(x2, y2) as drawn on the frame (y grows downwards): for a line drawn left to right, moving down
is ``in``. ``out`` is the other way.
"""

from __future__ import annotations

import math

ANCHORS = ("center", "bottom_center")


def anchor_point(box, anchor: str = "center") -> tuple[float, float]:
    """The reference point of ``box`` [x1, y1, x2, y2]."""
    x1, y1, x2, y2 = box
    return ((x1 + x2) / 2, (y1 + y2) / 2) if anchor == "center" else ((x1 + x2) / 2, y2)


class Line:
    """A named segment in source-frame pixels that counts crossings per track."""

    def __init__(self, name: str, points, band: float = 4.0, anchor: str = "center"):
        x1, y1, x2, y2 = (float(v) for v in points)
        self.name, self.points, self.band, self.anchor = name, (x1, y1, x2, y2), float(band), anchor
        self._len = math.hypot(x2 - x1, y2 - y1)
        self._side: dict[int, tuple[int, tuple[float, float]]] = {}  # track -> (side, last point on it)

    def signed_distance(self, p) -> float:
        """Pixels from the infinite line; positive on the ``in`` side (right of p1 -> p2)."""
        x1, y1, x2, y2 = self.points
        return ((x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1)) / self._len

    def _through_segment(self, a, b) -> bool:
        """Whether the path a -> b meets the segment (a and b are on opposite sides)."""
        da, db = self.signed_distance(a), self.signed_distance(b)
        t = da / (da - db)
        px, py = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        x1, y1, x2, y2 = self.points
        u = ((px - x1) * (x2 - x1) + (py - y1) * (y2 - y1)) / (self._len ** 2)
        return -1e-9 <= u <= 1 + 1e-9

    def update(self, track_id: int, point) -> str | None:
        """Move ``track_id`` to ``point``; ``"in"``/``"out"`` when this completes a crossing, else None."""
        d = self.signed_distance(point)
        side = 1 if d > self.band else -1 if d < -self.band else 0
        if side == 0:
            return None
        last = self._side.get(track_id)
        self._side[track_id] = (side, point)
        if last is None or last[0] == side or not self._through_segment(last[1], point):
            return None
        return "in" if side > 0 else "out"

    def forget(self, track_id: int) -> None:
        """Drop an ended track's state."""
        self._side.pop(track_id, None)
