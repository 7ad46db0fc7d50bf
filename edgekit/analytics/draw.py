"""Drawing a source's lines (with their counts), zones (with occupancy) and track ids on a frame."""

from __future__ import annotations

import numpy as np

LINE_COLOUR = (0, 255, 255)  # BGR yellow
ZONE_COLOUR = (255, 0, 255)  # magenta


def draw_analytics(image: np.ndarray, results: list[dict], stage) -> np.ndarray:
    """Lines, zones and ``#track_id`` labels drawn on ``image`` in place."""
    import cv2

    scale = max(0.35, min(image.shape[:2]) / 640)
    thick = max(1, round(min(image.shape[:2]) / 240))
    for zone in stage.zones:
        cv2.polylines(image, [zone.polygon.astype(np.int32)], True, ZONE_COLOUR, thick)
        x, y = zone.polygon[0, 0]
        n = sum(zone.occupancy().values())
        _text(image, f"{zone.name}: {n}", (int(x) + 2, int(y) + 14), ZONE_COLOUR, scale)
    for line in stage.lines:
        x1, y1, x2, y2 = (int(round(v)) for v in line.points)
        cv2.line(image, (x1, y1), (x2, y2), LINE_COLOUR, thick)
        counts = {"in": 0, "out": 0}
        for (name, direction, _), n in stage.crossings.items():
            if name == line.name:
                counts[direction] += n
        _text(image, f"{line.name} in {counts['in']} out {counts['out']}", (min(x1, x2) + 2, min(y1, y2) - 4),
              LINE_COLOUR, scale)
    for r in results:
        if "track_id" in r:
            x1, _, _, y2 = (int(round(v)) for v in r["box"])
            _text(image, f"#{r['track_id']}", (x1 + 2, y2 - 3), (255, 255, 255), scale)
    return image


def _text(image, text, org, colour, scale) -> None:
    import cv2

    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
