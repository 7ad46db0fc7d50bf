"""Which sources a run reads: ``NAME=URI`` arguments and sources files, as :class:`SourceSpec` s.

A source is named ``NAME=URI`` (``door=rtsp://cam/1``), else by its index (``0``, ``1``, …). Names
appear in JSON lines, URLs (``/stream/NAME.mjpg``), file names (``--record out/{source}.mkv``) and
metric labels, so they are letters, digits, ``_``, ``-`` and ``.`` (not first), and unique.

A sources file (``--sources-file PATH``; JSON, or YAML when PyYAML is installed) lists sources with
their own options; what a source leaves out comes from the command line::

    sources:
      - {name: door, uri: "rtsp://10.0.0.5/stream", fps: 15}
      - {name: archive, uri: /data/day1.mp4, realtime: true, loop: true}
      - /dev/video1                  # a bare URI: named by its index
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from edgekit.errors import InputError, UsageError

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MAX_SOURCES = 64
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class SourceSpec:
    """One source of a run: its name, URI and the options that may differ per source."""

    name: str
    uri: str
    realtime: bool = False
    loop: bool = False
    fps: float | None = None
    width: int | None = None
    height: int | None = None


OPTIONS = tuple(f.name for f in fields(SourceSpec) if f.name not in ("name", "uri"))


def split_name(text: str) -> tuple[str | None, str]:
    """``"door=rtsp://…"`` -> ("door", "rtsp://…"); a URI or path without a name -> (None, text).

    A path that exists as given is a path even if it holds ``=``."""
    text = str(text).strip()
    name, eq, uri = text.partition("=")
    if eq and NAME.fullmatch(name) and uri and not Path(text).exists():
        return name, uri.strip()
    return None, text


def specs(uris, defaults: dict | None = None, file: str | None = None) -> list[SourceSpec]:
    """The run's sources: ``uris`` (each ``URI`` or ``NAME=URI``) then those of the sources ``file``;
    ``defaults`` (``realtime``, ``loop``, ``fps``, ``width``, ``height``) fill what a source leaves out."""
    defaults = {k: v for k, v in (defaults or {}).items() if k in OPTIONS and v is not None}
    given = [(*split_name(u), {}) for u in uris]
    if file is not None:
        given += read_file(file)
    if not given:
        raise UsageError("give a SOURCE (e.g. 0 or video.mp4), --camera N, --source URI or --sources-file PATH")
    if len(given) > MAX_SOURCES:
        raise UsageError(f"{len(given)} sources: at most {MAX_SOURCES}")
    out, seen = [], set()
    for index, (name, uri, options) in enumerate(given):
        name = str(index) if name is None else name
        if name in seen:
            raise UsageError(f"two sources are named {name!r}: names must be unique (NAME=URI)")
        seen.add(name)
        out.append(SourceSpec(name, uri, **{**defaults, **options}))
    return out


def read_file(path: str) -> list[tuple[str | None, str, dict]]:
    """(name, uri, options) of every source a JSON or YAML sources file lists."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"sources file {path} is over {MAX_FILE_BYTES >> 20} MiB")
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read sources file {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    data = _parse(text, path)
    if isinstance(data, dict) and "sources" in data:
        data = data["sources"]
    if isinstance(data, dict):  # {name: uri or {uri: ..., ...}}
        data = [{"name": k, **(v if isinstance(v, dict) else {"uri": v})} for k, v in data.items()]
    if not isinstance(data, list) or not data:
        raise InputError(f"sources file {path} lists no sources (a list, or 'sources:' with a list)")
    return [_entry(item, path, i) for i, item in enumerate(data)]


def _parse(text: str, path: str):
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UsageError(f"reading {path} needs PyYAML (pip install pyyaml), or write it as JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"sources file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"sources file {path} is not valid JSON: {exc}") from None


def _entry(item, path: str, index: int) -> tuple[str | None, str, dict]:
    where = f"sources file {path}, entry {index + 1}"
    if isinstance(item, (str, int)):
        return (*split_name(str(item)), {})
    if not isinstance(item, dict) or "uri" not in item:
        raise InputError(f"{where}: give a URI or a mapping with 'uri'")
    unknown = set(item) - {"name", "uri", *OPTIONS}
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                         f"(known: name, uri, {', '.join(OPTIONS)})")
    name = item.get("name")
    if name is not None and not NAME.fullmatch(str(name)):
        raise InputError(f"{where}: name {name!r} must be letters, digits, _ - . (not first), at most 64")
    options = {k: item[k] for k in OPTIONS if item.get(k) is not None}
    try:
        checked = replace(SourceSpec("x", "x"), **options)
        _check(checked)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {exc}") from None
    return None if name is None else str(name), str(item["uri"]), options


def _check(spec: SourceSpec) -> None:
    for flag in ("realtime", "loop"):
        if not isinstance(getattr(spec, flag), bool):
            raise ValueError(f"{flag} must be true or false")
    for number in ("fps", "width", "height"):
        value = getattr(spec, number)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"{number} must be a positive number, got {value!r}")

