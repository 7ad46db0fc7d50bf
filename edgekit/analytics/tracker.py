"""One source's multi-object tracker: supervision's ByteTrack (MIT) behind a small interface.

Detections go in as edgekit results (``{"label", "class", "score", "box"}`` in source pixels), in frame
order; the tracked ones come back with a ``track_id`` stable across frames. A track survives
``lost_frames`` frames without a detection (occlusion, a missed frame); after that it ends and a
later detection of the same object starts a new id. A detection that starts a track is reported
from the track's second frame on (ByteTrack confirms new tracks so), except on the first frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class TrackerOptions:
    """ByteTrack's knobs: ``activation`` (score that starts a track), ``match`` (IoU cost limit),
    ``lost_frames`` (frames a track survives unseen)."""

    activation: float = 0.25
    match: float = 0.8
    lost_frames: int = 30

    @classmethod
    def from_dict(cls, d: dict) -> "TrackerOptions":
        from edgekit.errors import UsageError

        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise UsageError(f"analytics tracker: unknown setting(s) {', '.join(sorted(unknown))} "
                             f"(have: {', '.join(cls.__dataclass_fields__)})")
        try:
            opts = cls(activation=float(d.get("activation", cls.activation)), match=float(d.get("match", cls.match)),
                       lost_frames=int(d.get("lost_frames", cls.lost_frames)))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"analytics tracker: {exc}") from exc
        if not (0 <= opts.activation <= 1 and 0 < opts.match <= 1 and opts.lost_frames >= 0):
            raise UsageError("analytics tracker: activation in [0, 1], match in (0, 1], lost_frames >= 0")
        return opts


def load_bytetrack():
    try:
        from supervision import Detections
        from supervision.tracker.byte_tracker.core import ByteTrack
    except ImportError as exc:
        raise EdgekitError("--track needs supervision: pip install 'edgekit[analytics]'") from exc
    return ByteTrack, Detections


class Tracker:
    """ByteTrack over one source's frames (feed them in order; one Tracker per source)."""

    def __init__(self, options: TrackerOptions = TrackerOptions()):
        ByteTrack, self._Detections = load_bytetrack()
        # supervision scales lost_track_buffer by frame_rate / 30: give it 30 so frames mean frames
        self._track = ByteTrack(track_activation_threshold=options.activation, lost_track_buffer=options.lost_frames,
                                minimum_matching_threshold=options.match, frame_rate=30)
        self.options = options

    def update(self, results: list[dict]) -> list[dict]:
        """The frame's detections that belong to a track, each with its ``track_id`` (int), best score first."""
        if results:
            xyxy = np.array([r["box"] for r in results], np.float32).reshape(-1, 4)
            score = np.array([r["score"] for r in results], np.float32)
            cls = np.array([r["class"] for r in results], int)
        else:
            xyxy, score, cls = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int)
        dets = self._Detections(xyxy=xyxy, confidence=score, class_id=cls, data={"index": np.arange(len(results))})
        tracked = self._track.update_with_detections(dets)
        ids = dict(zip(tracked.data.get("index", []), tracked.tracker_id)) if len(tracked) else {}
        return [{**r, "track_id": int(ids[i])} for i, r in enumerate(results) if i in ids]
