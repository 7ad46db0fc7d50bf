"""Event dicts: what a line crossing, a zone entry/exit or a new track sends.

``{"event", "id", "source", "line"|"zone", "direction", "track_id", "label", "score", "box",
"frame", "time"}`` (``dwell_s`` on a zone exit). ``id`` is unique (the run's random id and a
counter): a receiver drops duplicates of an at-least-once delivery by it.
"""

from __future__ import annotations

KINDS = ("line_crossed", "zone_entered", "zone_exited", "track_started")


def make_event(kind: str, source: str, result: dict, frame: int, now: float, event_id: str, **extra) -> dict:
    """One event about ``result`` (a tracked detection) in ``source``'s frame ``frame`` at epoch ``now``."""
    assert kind in KINDS, kind
    return {"event": kind, "id": event_id, "source": source, **extra, "track_id": result["track_id"],
            "label": result["label"], "score": result["score"], "box": result["box"], "frame": frame,
            "time": round(now, 6)}
