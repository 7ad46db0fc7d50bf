"""Zones: polygons in source-frame pixels with occupancy per label, entries, exits and dwell per track.

A track's reference point is inside once it is more than ``band`` pixels within the polygon and
outside once more than ``band`` pixels out of it; in between it keeps its state, so jitter on the
edge enters once. A track that ends (lost longer than the tracker keeps it) exits where it was.
"""

from __future__ import annotations

import numpy as np


class Zone:
    """A named polygon tracking which tracks are inside it and since when."""

    def __init__(self, name: str, points, band: float = 2.0, anchor: str = "center"):
        flat = [float(v) for v in points]
        self.name, self.band, self.anchor = name, float(band), anchor
        self.polygon = np.array(flat, np.float32).reshape(-1, 1, 2)
        self.inside: dict[int, tuple[str, float]] = {}  # track -> (label, entered at, epoch s)

    def distance(self, point) -> float:
        """Signed pixels to the polygon's edge: positive inside."""
        import cv2

        return float(cv2.pointPolygonTest(self.polygon, (float(point[0]), float(point[1])), True))

    def update(self, track_id: int, label: str, point, now: float):
        """Move ``track_id`` to ``point`` at ``now``: ``("entered", None)``, ``("exited", dwell_s)`` or None."""
        d = self.distance(point)
        if track_id in self.inside:
            if d < -self.band:
                return "exited", now - self.inside.pop(track_id)[1]
        elif d > self.band:
            self.inside[track_id] = (label, now)
            return "entered", None
        return None

    def end(self, track_id: int, now: float) -> float | None:
        """An ended track leaves: its dwell (s) if it was inside, else None."""
        if track_id in self.inside:
            return now - self.inside.pop(track_id)[1]
        return None

    def occupancy(self) -> dict[str, int]:
        """Tracks inside now, per label."""
        out: dict[str, int] = {}
        for label, _ in self.inside.values():
            out[label] = out.get(label, 0) + 1
        return out
