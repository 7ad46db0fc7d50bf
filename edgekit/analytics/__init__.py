"""From boxes to events, per source: a tracker (track ids), lines (crossings) and zones (occupancy, dwell).

:class:`~edgekit.analytics.stage.Analytics` is the seam the loop uses: keyed by source name, it takes
each frame's detections in order and returns them with ``track_id`` plus the frame's events.
"""

from __future__ import annotations
