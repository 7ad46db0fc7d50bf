"""The camera loop: sources -> preprocess -> runner -> postprocess -> sinks, overlapped on threads.

``sources`` (one URI grammar), ``pipeline`` (the loop), ``postprocess`` (per task), ``sinks``
(JSON lines, video, window), ``server`` (MJPEG stream, status page, /metrics), ``metrics``.
"""

from __future__ import annotations
