"""The camera loop as a chain of stages, for one source or many (one is N = 1):

``sources`` (the URI grammar; ``opencv_sources``, ``mjpeg``) -> ``capture`` (one per source) -> ``mux``
(a batch of the newest frames) -> preprocess -> ``infer`` (one runner call per batch, demux) ->
``postprocess`` (per task) -> ``per_source`` (stages keyed by source name) -> consumers: ``sinks``
(JSON lines, video, window), ``server`` (MJPEG streams, status, /metrics), ``console``; ``metrics``.
``pipeline`` joins the stages on threads; ``loop`` assembles them from ``edgekit run``'s options.
"""

from __future__ import annotations
