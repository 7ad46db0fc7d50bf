"""MJPEG over HTTP (``multipart/x-mixed-replace``), or a snapshot URL polled (one JPEG per GET).

Every read is bounded: a part (a JPEG) of at most ``MAX_PART_BYTES``, header and boundary lines of
at most ``MAX_LINE_BYTES``, at most ``MAX_HEADERS`` header lines per part, and at most
``MAX_PART_BYTES`` skipped looking for a boundary. A stream breaking a bound is lost with a reason
naming the bound (and reopened with back-off, like any lost live source).
"""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request

import numpy as np

from edgekit.errors import DeviceError, InputError
from edgekit.stream.source_base import DEFAULT_TIMEOUT, Source, SourceLost

log = logging.getLogger(__name__)

MAX_PART_BYTES = 32 << 20  # one JPEG; a 4K frame is a few MB
MAX_LINE_BYTES = 8 << 10
MAX_HEADERS = 64


class BoundExceeded(ConnectionError):
    """The stream sent more than a bound allows (a part, a line, headers)."""


class MjpegHttpSource(Source):
    """MJPEG over HTTP (``multipart/x-mixed-replace``), or a snapshot URL (one JPEG per GET)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(url)
        self.url, self.timeout = url, timeout
        self._resp = None
        self._boundary = None

    def _get(self):
        request = urllib.request.Request(self.url, headers={"User-Agent": "edgekit"})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise DeviceError(f"cannot open {self.url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            reason = getattr(reason, "strerror", None) or str(reason) or "timed out"
            raise DeviceError(f"cannot open {self.url}: {reason}") from exc

    def open(self) -> None:
        resp = self._get()
        ctype = resp.headers.get_content_type()
        if ctype.startswith("multipart/"):
            boundary = resp.headers.get_param("boundary")
            if not boundary:
                resp.close()
                raise InputError(f"{self.url} sends {ctype} without a boundary")
            self._boundary = b"--" + re.sub(rb"^--", b"", boundary.encode())
        elif ctype == "image/jpeg":
            self._boundary = None
        else:
            resp.close()
            raise InputError(f"{self.url} is not an MJPEG stream (Content-Type {ctype})")
        self._resp = resp
        log.info("opened %s (%s)", self.url, ctype)

    def read(self) -> np.ndarray | None:
        import cv2

        try:
            data = self._next_part() if self._boundary else self._snapshot()
        except (OSError, ValueError, AttributeError) as exc:  # timeouts, resets, bounds, a closed response
            raise SourceLost(f"{self.url}: {str(exc) or type(exc).__name__}") from exc
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceLost(f"{self.url} sent a part that is not a JPEG ({len(data)} bytes)")
        return image

    def _snapshot(self) -> bytes:
        if self._resp is None:
            self._resp = self._get()
        resp, self._resp = self._resp, None
        with resp:
            _check_length(resp.headers.get("Content-Length"))
            data = resp.read(MAX_PART_BYTES + 1)
        if len(data) > MAX_PART_BYTES:
            raise BoundExceeded(f"a snapshot over the {MAX_PART_BYTES} byte limit")
        return data

    def _line(self) -> bytes:
        line = self._resp.readline(MAX_LINE_BYTES + 1)
        if len(line) > MAX_LINE_BYTES:
            raise BoundExceeded(f"a header line over the {MAX_LINE_BYTES} byte limit")
        return line

    def _next_part(self) -> bytes:
        skipped = 0
        line = b""
        while line.rstrip(b"\r\n") != self._boundary:
            skipped += len(line)
            if skipped > MAX_PART_BYTES:
                raise BoundExceeded(f"no boundary within {MAX_PART_BYTES} bytes")
            line = self._resp.readline(MAX_LINE_BYTES + 1)
            if not line:
                raise ConnectionError("stream ended")
        headers, count = {}, 0
        while line := self._line().strip():
            count += 1
            if count > MAX_HEADERS:
                raise BoundExceeded(f"more than {MAX_HEADERS} header lines in a part")
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        if not line and not headers:
            raise ConnectionError("stream ended")
        if b"content-length" in headers:
            size = _check_length(headers[b"content-length"])
            data = self._resp.read(size)
            if len(data) != size:
                raise ConnectionError("stream ended inside a frame")
            return data
        return self._until_boundary()

    def _until_boundary(self) -> bytes:
        """A part without a length: read up to the next boundary, which stays unread for next time."""
        resp, parts, size = self._resp, [], 0
        while True:
            peek = resp.peek(len(self._boundary))[: len(self._boundary)] if hasattr(resp, "peek") else b""
            if peek == self._boundary:
                return b"".join(parts).rstrip(b"\r\n")
            line = resp.readline(MAX_LINE_BYTES)
            if not line:
                raise ConnectionError("stream ended inside a frame")
            size += len(line)
            if size > MAX_PART_BYTES:
                raise BoundExceeded(f"a part over the {MAX_PART_BYTES} byte limit (no Content-Length)")
            parts.append(line)

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None


def _check_length(value) -> int:
    """A Content-Length (None: 0) as an int within the part bound."""
    if value is None:
        return 0
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    try:
        size = int(text)
    except ValueError:
        raise BoundExceeded(f"a part with Content-Length {text[:40]!r}") from None
    if size < 0:
        raise BoundExceeded(f"a part with Content-Length {size}")
    if size > MAX_PART_BYTES:
        raise BoundExceeded(f"a part of {size} bytes (Content-Length) over the {MAX_PART_BYTES} byte limit")
    return size
