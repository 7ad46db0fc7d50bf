"""What to analyse, from ``run``'s options and an analytics file (YAML or JSON).

Options: ``--line [SOURCE:]NAME=x1,y1,x2,y2`` and ``--zone [SOURCE:]NAME=x1,y1,x2,y2,x3,y3,...``
(repeatable; without ``SOURCE:`` for every source). The file::

    tracker: {activation: 0.25, match: 0.8, lost_frames: 30}
    anchor: center                # or bottom_center: the point of a box that crosses and enters
    track_started: false          # also an event for each new track
    lines: {door: [0, 120, 320, 120]}                  # every source
    zones: {queue: [10, 10, 150, 10, 150, 100, 10, 100]}
    sources:                                           # per source, added to the above
      entrance: {lines: {gate: {points: [0, 50, 320, 50], band: 6}}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.analytics.lines import ANCHORS
from edgekit.analytics.tracker import TrackerOptions
from edgekit.errors import InputError, UsageError

MAX_FILE = 1 << 20  # an analytics file is a few lines of text
KEYS = {"tracker", "anchor", "track_started", "lines", "zones", "sources"}


@dataclass
class Shape:
    """A line (4 numbers) or zone (>= 6 numbers, pairs) with its hysteresis ``band`` in pixels."""

    name: str
    points: tuple
    band: float | None = None


@dataclass
class AnalyticsConfig:
    """Lines and zones for every source (key ``None``) and per source name."""

    tracker: TrackerOptions = field(default_factory=TrackerOptions)
    anchor: str = "center"
    track_started: bool = False
    lines: dict = field(default_factory=dict)  # source or None -> {name: Shape}
    zones: dict = field(default_factory=dict)

    def for_source(self, source: str) -> tuple[list, list]:
        """The lines and zones of ``source``: the shared ones and its own."""
        pick = lambda d: list({**d.get(None, {}), **d.get(source, {})}.values())  # noqa: E731
        return pick(self.lines), pick(self.zones)

    def sources(self) -> set:
        """Source names the configuration names explicitly."""
        return {k for d in (self.lines, self.zones) for k in d if k is not None}

    def check_sources(self, known) -> None:
        """UsageError for per-source lines or zones naming a source the run does not have."""
        unknown = sorted(self.sources() - set(known))
        if unknown:
            raise UsageError(f"lines or zones for unknown source(s) {', '.join(unknown)}; this run's sources: "
                             f"{', '.join(sorted(known))}")


def _numbers(text_or_list, what: str, zone: bool) -> tuple:
    try:
        values = [float(v) for v in (text_or_list.split(",") if isinstance(text_or_list, str) else text_or_list)]
    except (TypeError, ValueError):
        raise UsageError(f"{what}: coordinates must be numbers, got {text_or_list!r}") from None
    if zone and (len(values) < 6 or len(values) % 2):
        raise UsageError(f"{what}: a zone needs at least 3 points (x1,y1,x2,y2,x3,y3,...), got {len(values)} numbers")
    if not zone and len(values) != 4:
        raise UsageError(f"{what}: a line needs 4 numbers x1,y1,x2,y2, got {len(values)}")
    if not zone and values[:2] == values[2:]:
        raise UsageError(f"{what}: the line's two points are the same")
    return tuple(values)


def _name(name: str, what: str) -> str:
    if not name or any(c in name for c in "/#+=:,\"\\ \n"):
        raise UsageError(f"{what}: a name is letters, digits, '-', '_' or '.', got {name!r}")
    return name


def parse_option(text: str, zone: bool) -> tuple:
    """``[SOURCE:]NAME=numbers`` -> (source or None, Shape)."""
    flag = "--zone" if zone else "--line"
    head, sep, coords = text.partition("=")
    if not sep:
        raise UsageError(f"{flag} {text}: expected [SOURCE:]NAME=" + ("x1,y1,x2,y2,x3,y3,..." if zone else "x1,y1,x2,y2"))
    source, _, name = head.rpartition(":")
    what = f"{flag} {text}"
    return (_name(source, what) if source else None), Shape(_name(name, what), _numbers(coords, what, zone))


def _shapes(doc, what: str, zone: bool) -> dict:
    if not isinstance(doc, dict):
        raise UsageError(f"{what}: expected a mapping of name -> coordinates")
    out = {}
    for name, spec in doc.items():
        where = f"{what}.{name}"
        band = None
        if isinstance(spec, dict):
            band = spec.get("band")
            if band is not None and not (isinstance(band, (int, float)) and band >= 0):
                raise UsageError(f"{where}.band must be a number >= 0")
            spec = spec.get("points")
        out[_name(str(name), where)] = Shape(str(name), _numbers(spec, where, zone), band)
    return out


def read_file(path) -> dict:
    """An analytics file (YAML or JSON) as a dict; InputError when it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise InputError(f"cannot read analytics file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE:
        raise InputError(f"analytics file {path} is over {MAX_FILE >> 10} KiB")
    text = data.decode("utf-8", "replace")
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except ImportError:
        raise InputError(f"{path}: YAML needs pyyaml (pip install pyyaml), or write the file as .json") from None
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError are ValueError / Exception
        raise InputError(f"analytics file {path}: {exc}") from exc
    except Exception as exc:
        raise InputError(f"analytics file {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise InputError(f"analytics file {path}: expected a mapping (tracker, lines, zones, sources)")
    return doc


def build(lines=(), zones=(), file=None, track_started: bool | None = None) -> AnalyticsConfig:
    """The configuration from ``--line``/``--zone`` texts and an optional analytics file (options win)."""
    cfg = AnalyticsConfig()
    if file is not None:
        doc = read_file(file)
        unknown = set(doc) - KEYS
        if unknown:
            raise UsageError(f"analytics file {file}: unknown key(s) {', '.join(sorted(unknown))} "
                             f"(have: {', '.join(sorted(KEYS))})")
        cfg.tracker = TrackerOptions.from_dict(doc.get("tracker") or {})
        cfg.anchor = doc.get("anchor", cfg.anchor)
        if cfg.anchor not in ANCHORS:
            raise UsageError(f"analytics file {file}: anchor must be one of {', '.join(ANCHORS)}")
        cfg.track_started = bool(doc.get("track_started", False))
        cfg.lines[None] = _shapes(doc.get("lines") or {}, "lines", False)
        cfg.zones[None] = _shapes(doc.get("zones") or {}, "zones", True)
        for source, spec in (doc.get("sources") or {}).items():
            spec = spec or {}
            source = _name(str(source), "sources")
            cfg.lines[source] = _shapes(spec.get("lines") or {}, f"sources.{source}.lines", False)
            cfg.zones[source] = _shapes(spec.get("zones") or {}, f"sources.{source}.zones", True)
    for texts, target, zone in ((lines, cfg.lines, False), (zones, cfg.zones, True)):
        for text in texts:
            source, shape = parse_option(text, zone)
            target.setdefault(source, {})[shape.name] = shape
    if track_started is not None:
        cfg.track_started = cfg.track_started or track_started
    return cfg
