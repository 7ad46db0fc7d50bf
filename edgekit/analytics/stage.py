"""The per-source analytics stage: detections in frame order -> tracked detections and events.

:class:`Analytics` holds one :class:`SourceAnalytics` (tracker, lines, zones, counts) per source name;
``stages(name)`` gives the loop's per-source stage (:class:`AnalyticsStage`, the first of the source's
chain, see :mod:`edgekit.stream.per_source`), which calls ``process(source, results, frame, now)``.
Counts go to ``/metrics`` and ``/status.json`` through :meth:`Analytics.prometheus` and
:meth:`Analytics.status`.
"""

from __future__ import annotations

import threading
import time
import uuid

from edgekit.analytics.config import AnalyticsConfig
from edgekit.analytics.events import make_event
from edgekit.analytics.lines import Line, anchor_point
from edgekit.analytics.tracker import Tracker, load_bytetrack
from edgekit.analytics.zones import Zone


class SourceAnalytics:
    """Tracker, lines and zones of one source, and their counts."""

    def __init__(self, source: str, config: AnalyticsConfig, ids):
        lines, zones = config.for_source(source)
        self.source, self.config, self._ids = source, config, ids
        self.tracker = Tracker(config.tracker)
        a = config.anchor
        self.lines = [Line(s.name, s.points, 4.0 if s.band is None else s.band, a) for s in lines]
        self.zones = [Zone(s.name, s.points, 2.0 if s.band is None else s.band, a) for s in zones]
        self.crossings: dict[tuple, int] = {}  # (line, direction, label) -> n
        self.entries: dict[tuple, int] = {}  # (zone, label) -> n
        self.exits: dict[tuple, int] = {}
        self.tracks_total = 0
        self._seen: dict[int, tuple] = {}  # track -> (frames processed when last seen, label)
        self._frames = 0

    def process(self, results: list[dict], frame: int, now: float) -> tuple[list[dict], list[dict]]:
        """One frame's detections (in order) -> (tracked detections with ``track_id``, events)."""
        self._frames += 1
        tracked = self.tracker.update(results)
        events = []

        def event(kind, r, **extra):
            events.append(make_event(kind, self.source, r, frame, now, next(self._ids), **extra))

        for r in tracked:
            tid, label = r["track_id"], r["label"]
            if tid not in self._seen:
                self.tracks_total += 1
                if self.config.track_started:
                    event("track_started", r)
            self._seen[tid] = (self._frames, label)
            point = anchor_point(r["box"], self.config.anchor)
            for line in self.lines:
                direction = line.update(tid, point)
                if direction is not None:
                    key = (line.name, direction, label)
                    self.crossings[key] = self.crossings.get(key, 0) + 1
                    event("line_crossed", r, line=line.name, direction=direction)
            for zone in self.zones:
                change = zone.update(tid, label, point, now)
                if change is not None:
                    self._zone_event(event, zone, r, *change)
        self._end_lost(event, now)
        return tracked, events

    def _zone_event(self, event, zone, r, change, dwell) -> None:
        counts = self.entries if change == "entered" else self.exits
        key = (zone.name, r["label"])
        counts[key] = counts.get(key, 0) + 1
        extra = {} if dwell is None else {"dwell_s": round(dwell, 3)}
        event("zone_" + change, r, zone=zone.name, **extra)

    def _end_lost(self, event, now: float) -> None:
        """Tracks unseen for longer than the tracker keeps them end: they leave their zones."""
        keep = self.config.tracker.lost_frames + 1
        for tid, (last, label) in list(self._seen.items()):
            if self._frames - last <= keep:
                continue
            del self._seen[tid]
            for line in self.lines:
                line.forget(tid)
            for zone in self.zones:
                dwell = zone.end(tid, now)
                if dwell is not None:
                    gone = {"track_id": tid, "label": label, "score": None, "box": None}
                    self._zone_event(event, zone, gone, "exited", dwell)

    def active_tracks(self) -> int:
        return len(self._seen)


class Analytics:
    """Per-source analytics keyed by source name (created on a source's first frame)."""

    def __init__(self, config: AnalyticsConfig):
        load_bytetrack()  # a missing tracker library fails now, not on the first frame
        self.config = config
        self.run_id = uuid.uuid4().hex[:12]
        self._sources: dict[str, SourceAnalytics] = {}
        self._lock = threading.Lock()
        counter = iter(range(1, 1 << 62))
        self._ids = (f"{self.run_id}-{n}" for n in counter)

    def source(self, name: str) -> SourceAnalytics:
        with self._lock:
            if name not in self._sources:
                self._sources[name] = SourceAnalytics(name, self.config, self._ids)
            return self._sources[name]

    def process(self, source: str, results: list[dict], frame: int, now: float) -> tuple[list[dict], list[dict]]:
        """See :meth:`SourceAnalytics.process` (per source, frames in order)."""
        stage = self.source(source)
        with self._lock:
            return stage.process(results, frame, now)

    def stages(self, source: str) -> list:
        """The per-source chain's stages for ``source``: one :class:`AnalyticsStage`."""
        return [AnalyticsStage(self, source)]

    def drawer(self, source: str, base=None):
        """``draw(image, results)``: ``base``'s drawing plus this source's lines, zones and track ids."""
        from edgekit.analytics.draw import draw_analytics

        stage = self.source(source)

        def draw(image, results):
            if base is not None:
                image = base(image, results)
            with self._lock:
                return draw_analytics(image, results, stage)

        return draw

    def status(self) -> dict:
        """``{"analytics": counts per source}``, JSON-able (for ``/status.json``); ``dwell_s``: seconds
        each track now in a zone has been there."""
        now = time.time()
        with self._lock:
            return {"analytics": {name: {
                "tracks_total": s.tracks_total,
                "tracks_active": s.active_tracks(),
                "lines": _nest(s.crossings),
                "zones": {z.name: {"occupancy": z.occupancy(),
                                   "dwell_s": {str(t): round(now - since, 1) for t, (_, since) in z.inside.items()},
                                   "entries": _nest({k[1:]: v for k, v in s.entries.items() if k[0] == z.name}),
                                   "exits": _nest({k[1:]: v for k, v in s.exits.items() if k[0] == z.name})}
                          for z in s.zones},
            } for name, s in self._sources.items()}}

    def prometheus(self, prefix: str = "edgekit") -> list[str]:
        """Prometheus lines: crossings, zone occupancy/entries/exits, tracks per source."""
        rows = {"line_crossings_total": [], "zone_occupancy": [], "zone_entries_total": [], "zone_exits_total": [],
                "tracks_total": [], "tracks_active": []}
        with self._lock:
            for name, s in sorted(self._sources.items()):
                src = f'source="{q(name)}"'
                for (line, d, label), n in sorted(s.crossings.items()):
                    rows["line_crossings_total"].append(
                        f'{{{src},line="{q(line)}",direction="{d}",label="{q(label)}"}} {n}')
                for z in s.zones:
                    for label, n in sorted(z.occupancy().items()):
                        rows["zone_occupancy"].append(f'{{{src},zone="{q(z.name)}",label="{q(label)}"}} {n}')
                for key, table in (("zone_entries_total", s.entries), ("zone_exits_total", s.exits)):
                    for (zone, label), n in sorted(table.items()):
                        rows[key].append(f'{{{src},zone="{q(zone)}",label="{q(label)}"}} {n}')
                rows["tracks_total"].append(f"{{{src}}} {s.tracks_total}")
                rows["tracks_active"].append(f"{{{src}}} {s.active_tracks()}")
        out = []
        for key, values in rows.items():
            kind = "counter" if key.endswith("_total") else "gauge"
            out += [f"# HELP {prefix}_{key} {HELP[key]}", f"# TYPE {prefix}_{key} {kind}"]
            out += [f"{prefix}_{key}{v}" for v in values]
        return out


class AnalyticsStage:
    """A source's analytics as a stage of its chain: tracks the frame's detections (``track_id``),
    sets its ``events`` and draws its lines, zones and track ids."""

    def __init__(self, analytics: Analytics, source: str):
        self.analytics, self.source, self.clock = analytics, source, None

    def open(self, info) -> None:
        self.clock = info.clock

    def write(self, result) -> None:
        result.results, result.events = self.analytics.process(
            self.source, result.results, result.frame.number, self.clock(result.frame.captured))
        result.draw = self.analytics.drawer(self.source, result.draw)

    def close(self) -> None:
        pass


HELP = {
    "line_crossings_total": "Track crossings of a counting line, by direction and label.",
    "zone_occupancy": "Tracks inside a zone now, by label.",
    "zone_entries_total": "Tracks that entered a zone, by label.",
    "zone_exits_total": "Tracks that left a zone (or ended in it), by label.",
    "tracks_total": "Tracks started.",
    "tracks_active": "Tracks alive now (seen within the tracker's lost_frames).",
}


def q(value) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _nest(counts: dict) -> dict:
    """{(a, b, c): n} -> {a: {b: {c: n}}}."""
    out: dict = {}
    for key, n in sorted(counts.items()):
        d = out
        for k in key[:-1]:
            d = d.setdefault(k, {})
        d[key[-1]] = n
    return out
