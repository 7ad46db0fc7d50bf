"""``--serve``: an MJPEG stream of annotated frames, a status page and ``/metrics`` over HTTP.

Standard library only (``ThreadingHTTPServer``). Bound to 127.0.0.1 unless an address is given.
A listen backlog of 128 and at most ``MAX_CLIENTS`` clients at once (the others get a 503 at
once, not a timeout); one address holds at most ``MAX_CLIENTS - RESERVED`` of them, and a client
must send its request (line and headers) within ``REQUEST_DEADLINE`` seconds, so slow clients
cannot keep real requests out. GET and HEAD are answered.

=======================  ==============================================================
``/``                    status page (the streams, FPS, latency, drops, each source's state)
``/stream.mjpg``         ``multipart/x-mixed-replace`` JPEG frames as they are processed
                         (with several sources: a tiled mosaic of all of them, at most 15 fps)
``/stream/NAME.mjpg``    the frames of source NAME
``/snapshot.jpg``        the latest annotated frame (several sources: the mosaic)
``/snapshot/NAME.jpg``   the latest annotated frame of source NAME
``/metrics``             Prometheus text format (totals, and per source with ``source="NAME"``)
``/status.json``         the metrics as JSON (``sources``: each one's state and counters)
=======================  ==============================================================
"""

from __future__ import annotations

import errno
import html
import json
import logging
import math
import select
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from edgekit.errors import EdgekitError, UsageError

log = logging.getLogger(__name__)

BOUNDARY = "edgekitframe"
JPEG_QUALITY = 80
TILE = (480, 270)  # width, height of one source in the mosaic
MOSAIC_FPS = 15.0  # the mosaic is redrawn at most this often (each source's own stream is not limited)
LISTEN_BACKLOG = 128  # pending connections the kernel queues (5, the default, overflows under load)
MAX_CLIENTS = 64  # clients served at once; more get 503
RESERVED = 8  # slots one address cannot take: kept for the others
REQUEST_DEADLINE = 10.0  # seconds a client has to send its request line and headers
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
        b"Connection: close\r\nContent-Length: 34\r\n\r\ntoo many clients; try again later\n")


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]") if sep else default_host
    try:
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"--serve needs HOST:PORT or PORT, got {text!r}") from None
    return host or default_host, number


class Channel:
    """The latest frame of one stream (a source, or the mosaic), JPEG-encoded once per new frame."""

    def __init__(self, render=None):
        self._cond = threading.Condition()
        self._image = None
        self._seq = 0
        self._jpeg = (0, None)
        self._render = render  # called for the image to encode (the mosaic builds it on demand)
        self.closed = False

    def publish(self, image) -> None:
        with self._cond:
            self._image = image
            self._seq += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def jpeg(self, after: int = -1, timeout: float = 1.0) -> tuple[int, bytes | None]:
        """The latest frame as (sequence, JPEG), waiting up to ``timeout`` for one newer than ``after``."""
        import cv2

        with self._cond:
            if self._seq <= after and not self.closed:
                self._cond.wait(timeout)
            seq, image = self._seq, self._image
            if self._jpeg[0] == seq or image is None:
                return self._jpeg if image is not None else (seq, None)
        if self._render is not None:
            image = self._render()
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        with self._cond:
            self._jpeg = (seq, data.tobytes())
            return self._jpeg


def mosaic(images: list, tile: tuple[int, int] = TILE) -> np.ndarray:
    """The images (None: a black tile) resized into a grid of ``tile``-sized cells, row by row."""
    import cv2

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = tile
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, image in enumerate(images):
        if image is not None:
            r, c = divmod(i, cols)
            out[r * h:(r + 1) * h, c * w:(c + 1) * w] = cv2.resize(image, tile, interpolation=cv2.INTER_AREA)
    return out


class StreamServer:
    """Serves the latest published frames as MJPEG (per source, and all together); a sink when given
    to the pipeline.

    ``publish(image)`` may also be called directly (tests use it as an MJPEG camera).
    """

    def __init__(self, address: str = "127.0.0.1:8080", metrics=None, max_clients: int = MAX_CLIENTS,
                 request_deadline: float = REQUEST_DEADLINE):
        self.host, self.port = parse_address(address)
        self.metrics = metrics
        self.max_clients = max_clients
        self.request_deadline = request_deadline
        self.sources: list[str] = []
        self.channels: dict[str, Channel] = {}
        self._latest: dict[str, np.ndarray] = {}
        self._mosaic_at = 0.0
        self.main = Channel()  # /stream.mjpg: the one source's frames, or the mosaic of several
        self._closed = False
        self._httpd = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---- sink protocol ----------------------------------------------------------------------
    def open(self, info=None) -> "StreamServer":
        if info is not None and self.metrics is None:
            self.metrics = info.metrics
        self.sources = list(getattr(info, "sources", None) or [])
        self.channels = {name: Channel() for name in self.sources}
        if len(self.sources) > 1:
            self.main = Channel(render=self._mosaic)
        server = self

        class Handler(_Handler):
            owner = server

        try:
            self._httpd = _Server((self.host, self.port), Handler, self.max_clients, self.request_deadline)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EdgekitError(f"cannot serve on {self.host}:{self.port}: the port is in use") from exc
            raise EdgekitError(f"cannot serve on {self.host}:{self.port}: {exc.strerror or exc}") from exc
        self.port = self._httpd.server_address[1]
        self._closed = False
        threading.Thread(target=self._httpd.serve_forever, args=(0.2,), name="edgekit-http", daemon=True).start()
        log.info("serving the stream at %s/ (metrics at /metrics)", self.url)
        return self

    def write(self, result) -> None:
        image = result.annotated()
        channel = self.channels.get(result.source)
        if channel is not None:
            channel.publish(image)
        if len(self.sources) < 2:
            self.main.publish(image)
            return
        self._latest[result.source] = image
        now = time.monotonic()
        if now - self._mosaic_at >= 1.0 / MOSAIC_FPS:
            self._mosaic_at = now
            self.main.publish(image)

    def publish(self, image: np.ndarray) -> None:
        self.main.publish(image)

    def _mosaic(self) -> np.ndarray:
        latest = dict(self._latest)
        return mosaic([latest.get(name) for name in self.sources])

    def close(self) -> None:
        self._closed = True
        for channel in (self.main, *self.channels.values()):
            channel.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ---- for the handler --------------------------------------------------------------------
    def jpeg(self, after: int = -1, timeout: float = 1.0) -> tuple[int, bytes | None]:
        """The latest frame of /stream.mjpg as (sequence, JPEG) (see :meth:`Channel.jpeg`)."""
        return self.main.jpeg(after, timeout)

    def channel(self, path: str, prefix: str, suffix: str) -> Channel | None:
        """The channel a ``PREFIX/NAME.SUFFIX`` path names, or None."""
        if not (path.startswith(prefix) and path.endswith(suffix)):
            return None
        return self.channels.get(urllib.parse.unquote(path[len(prefix):-len(suffix)]))

    @property
    def closed(self) -> bool:
        return self._closed


class _Server(ThreadingHTTPServer):
    """One thread per client, at most ``max_clients`` at a time (``max_clients - RESERVED`` per address):
    the others get a 503 at once. Clients still sending their request after ``deadline`` seconds are
    disconnected (checked every poll of ``serve_forever``)."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, handler, max_clients: int = MAX_CLIENTS, deadline: float = REQUEST_DEADLINE):
        self.slots = threading.BoundedSemaphore(max_clients)
        self.max_clients = max_clients
        self.per_address = max_clients - min(RESERVED, max_clients // 4)
        self.deadline = deadline
        self.refused = 0
        self.dropped_slow = 0
        self._guard = threading.Lock()
        self._per_address: dict = {}
        self._reading: dict = {}  # socket -> when its request must be in
        super().__init__(address, handler)

    def _take(self, host) -> bool:
        with self._guard:
            if self._per_address.get(host, 0) >= self.per_address or not self.slots.acquire(blocking=False):
                return False
            self._per_address[host] = self._per_address.get(host, 0) + 1
            return True

    def _give(self, host) -> None:
        with self._guard:
            self._per_address[host] -= 1
            if not self._per_address[host]:
                del self._per_address[host]
            self.slots.release()

    def reading(self, sock, start: bool) -> None:
        """Mark ``sock`` as sending its request (``start``) or done with it."""
        with self._guard:
            if start:
                self._reading[sock] = time.monotonic() + self.deadline
            else:
                self._reading.pop(sock, None)

    def service_actions(self):
        now = time.monotonic()
        with self._guard:
            late = [sock for sock, due in self._reading.items() if now >= due]
            for sock in late:
                del self._reading[sock]
        for sock in late:
            self.dropped_slow += 1
            try:  # the handler's blocked read returns; it ends and frees its slot
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def process_request(self, request, client_address):
        if not self._take(client_address[0]):
            self.refused += 1
            try:  # a fresh socket's send buffer takes these few bytes without blocking
                request.settimeout(0.5)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._give(client_address[0])
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.reading(request, False)
            self._give(client_address[0])


class _Handler(BaseHTTPRequestHandler):
    owner: StreamServer
    timeout = 10
    server_version = "edgekit"

    def log_message(self, fmt, *args):
        log.debug("http %s: " + fmt, self.client_address[0], *args)

    def setup(self):
        self.server.reading(self.request, True)
        super().setup()

    def parse_request(self):
        try:
            return super().parse_request()
        finally:
            self.server.reading(self.request, False)

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        owner = self.owner
        try:
            if path == "/stream.mjpg":
                return self._stream(owner.main)
            if path == "/snapshot.jpg":
                return self._snapshot(owner.main)
            if (channel := owner.channel(path, "/stream/", ".mjpg")) is not None:
                return self._stream(channel)
            if (channel := owner.channel(path, "/snapshot/", ".jpg")) is not None:
                return self._snapshot(channel)
            if path == "/metrics" and owner.metrics is not None:
                return self._send(200, "text/plain; version=0.0.4; charset=utf-8", owner.metrics.prometheus().encode())
            if path == "/status.json" and owner.metrics is not None:
                return self._send(200, "application/json", json.dumps(owner.metrics.snapshot()).encode())
            if path in ("/", "/index.html"):
                return self._send(200, "text/html; charset=utf-8", self._page().encode())
            self._send(404, "text/plain", b"not found\n")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):  # socket.timeout: TimeoutError from 3.10
            pass

    do_HEAD = do_GET  # the same headers, no body (_send, _stream)

    def _snapshot(self, channel: Channel):
        seq, data = channel.jpeg(timeout=2.0)
        return self._send(200, "image/jpeg", data) if data else self._send(503, "text/plain", b"no frame yet\n")

    def _stream(self, channel: Channel):
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        seq = -1
        while not self.owner.closed:
            new, data = channel.jpeg(after=seq)
            if data is None or new == seq:
                if self._client_gone():  # no frame to write, which would notice: free the slot now
                    break
                continue
            seq = new
            self.wfile.write(
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n"
            )
            self.wfile.flush()
        self.close_connection = True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def _page(self) -> str:
        snap = self.owner.metrics.snapshot() if self.owner.metrics is not None else {}
        model = snap.get("model", {})
        chosen = (f"<p>model {html.escape(model.get('key', '?'))} ({html.escape(model.get('precision', '?'))}) on "
                  f"{html.escape(model.get('backend', '?'))}: {html.escape(model.get('reason', ''))}</p>" if model else "")
        rows = "".join(
            f"<tr><td>{html.escape(stage)}</td>" + "".join(f"<td>{v.get(k, 0):.1f}</td>" for k in ("p50", "p90", "p99")) + "</tr>"
            for stage, v in snap.get("latency_ms", {}).items()
        )
        sources = snap.get("sources", {})
        per_source = "" if len(sources) < 2 else (
            "<table><tr><th>source</th><th>state</th><th>frames</th><th>dropped</th><th>reconnects</th></tr>"
            + "".join(f"<tr><td><a href='/stream/{urllib.parse.quote(n)}.mjpg'>{html.escape(n)}</a></td>"
                      f"<td>{html.escape(v['state'])}</td><td>{v['frames']}</td><td>{v['drops']}</td>"
                      f"<td>{v['reconnects']}</td></tr>" for n, v in sources.items())
            + "</table>")
        return (
            "<!doctype html><html><head><title>edgekit</title>"
            "<style>body{font-family:sans-serif;margin:1em}td,th{padding:0 .6em;text-align:right}</style></head><body>"
            "<h1>edgekit</h1><img src='/stream.mjpg' style='max-width:100%'>"
            f"<p>{snap.get('fps', 0)} fps &middot; {snap.get('frames', 0)} frames &middot; {snap.get('drops', 0)} dropped"
            f" &middot; {snap.get('reconnects', 0)} reconnects</p>{chosen}"
            f"<table><tr><th>stage (ms)</th><th>p50</th><th>p90</th><th>p99</th></tr>{rows}</table>{per_source}"
            "<p><a href='/metrics'>/metrics</a> &middot; <a href='/status.json'>/status.json</a></p></body></html>"
        )
