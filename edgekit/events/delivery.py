"""Delivering spooled events: destination URLs, the sender thread they share, and the loop's sink.

:class:`EventSink` is a loop sink (``open``/``write``/``close``): each frame's events go into the
:class:`~edgekit.events.spool.Spool` on the output thread (a local SQLite insert, never a network
wait); one :class:`Sender` thread per destination delivers them, in order, with back-off while the
destination is down. At the end of a run the senders get ``drain_s`` to deliver what is left; the
rest stays in the spool for the next run.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from edgekit.errors import UsageError

log = logging.getLogger(__name__)

BACKOFF = (0.5, 30.0)  # first and longest wait between attempts, seconds


def redact(url: str) -> str:
    """``url`` without its user and password (what logs, /status.json and spool keys show)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def device_name() -> str:
    """This device's name in topics and events: the host name, topic-safe."""
    return safe_name(socket.gethostname()) or "edgekit"


def safe_name(text: str) -> str:
    """``text`` with anything but letters, digits, '-', '_' and '.' turned into '_' (an MQTT topic level)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def default_spool_dir() -> Path:
    """``$STATE_DIRECTORY/spool`` under systemd, else ``~/.local/state/edgekit/spool``."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "spool"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "edgekit" / "spool"


class Sender(threading.Thread):
    """A thread delivering one destination's events from the spool, in order, at least once.

    Subclasses implement :meth:`session` (connect, deliver until an error or stop, disconnect).
    """

    kind = "sender"

    def __init__(self, url: str, spool=None):
        super().__init__(name=f"edgekit-{self.kind}", daemon=True)
        self.url, self.dest = url, redact(url)
        self.spool = spool
        self.delivered = 0
        self.connected = False
        self.last_error: str | None = None
        self._stop_at: float | None = None  # monotonic deadline of the drain, once stopping
        self._stopping = threading.Event()
        self._reached = False  # the current attempt reached the destination

    def stopping(self) -> bool:
        """True once asked to stop and either the drain deadline passed or nothing is pending."""
        if not self._stopping.is_set():
            return False
        return time.monotonic() >= self._stop_at or self.spool.pending(self.dest) == 0

    def stop(self, drain_s: float) -> None:
        self._stop_at = time.monotonic() + drain_s
        self._stopping.set()

    def run(self) -> None:
        wait = BACKOFF[0]
        while not self.stopping():
            self._reached = False
            try:
                self.session()
            except Exception as exc:  # a bug or an unexpected library error: keep delivering later
                self.fail(f"{type(exc).__name__}: {exc}")
            self.connected = False
            if self.stopping():
                break
            wait = BACKOFF[0] if self._reached else min(wait * 2, BACKOFF[1])  # back-off while it stays down
            if self._stopping.is_set():
                time.sleep(min(wait, 0.5))  # draining: retry soon, until the deadline
            else:
                self._stopping.wait(wait)

    def fail(self, why: str) -> None:
        """Note a failed attempt; logged when the reason changes (not every retry)."""
        if why != self.last_error:
            log.warning("%s %s: %s; events are kept in the spool and retried", self.kind, self.dest, why)
        self.last_error = why

    def recovered(self) -> None:
        """Note a working connection (logged when it follows a failure)."""
        self._reached = True
        if self.last_error is not None:
            log.info("%s %s: delivering again", self.kind, self.dest)
        self.last_error = None

    def session(self) -> None:
        raise NotImplementedError

    def status(self) -> dict:
        return {"kind": self.kind, "url": self.dest, "connected": self.connected, "delivered": self.delivered,
                "pending": self.spool.pending(self.dest), "last_error": self.last_error}


class EventSink:
    """The loop's sink for events: spools each frame's events and runs the senders."""

    def __init__(self, senders, spool_dir=None, max_bytes: int = 100 << 20, max_age_s: float = 7 * 86400.0,
                 drain_s: float = 5.0):
        if not senders:
            raise UsageError("events need a destination (--mqtt or --webhook)")
        self.senders = list(senders)
        self.spool_dir = Path(spool_dir) if spool_dir else default_spool_dir()
        self.max_bytes, self.max_age_s, self.drain_s = max_bytes, max_age_s, drain_s
        self.spool = None
        self.produced = 0

    def open(self, info) -> None:
        from edgekit.events.spool import Spool

        self.spool = Spool(self.spool_dir, [s.dest for s in self.senders], self.max_bytes, self.max_age_s)
        left = sum(self.spool.pending(s.dest) for s in self.senders)
        if left:
            log.info("event spool %s holds %d undelivered event(s) from before: delivering them first",
                     self.spool.path, left)
        info.metrics.exporters.append(self)
        for s in self.senders:
            s.spool = self.spool
            s.start()

    def write(self, result) -> None:
        events = result.events or []
        if events:
            self.produced += len(events)
            self.spool.append(events)
        for s in self.senders:
            if hasattr(s, "detections"):
                s.detections(result)

    def close(self) -> None:
        if self.spool is None:
            return
        for s in self.senders:
            s.stop(self.drain_s)
        for s in self.senders:
            if s.ident is not None:
                s.join(self.drain_s + 5.0)
        left = {s.dest: self.spool.pending(s.dest) for s in self.senders}
        for dest, n in left.items():
            if n:
                log.warning("%d event(s) for %s not delivered yet: kept in %s for the next run", n, dest,
                            self.spool.path)
        self.spool.close()

    def status(self) -> dict:
        return {"events": {"produced": self.produced, "dropped": self.spool.dropped, "spool": str(self.spool.path),
                           "destinations": [s.status() for s in self.senders]}}

    def prometheus(self, prefix: str = "edgekit") -> list[str]:
        from edgekit.analytics.stage import q

        out = [f"# HELP {prefix}_events_total Events produced.", f"# TYPE {prefix}_events_total counter",
               f"{prefix}_events_total {self.produced}",
               f"# HELP {prefix}_events_dropped_total Undelivered events dropped from the full or expired spool.",
               f"# TYPE {prefix}_events_dropped_total counter", f"{prefix}_events_dropped_total {self.spool.dropped}"]
        for name, help_, kind in (("delivered_total", "Events a destination acknowledged.", "counter"),
                                  ("pending", "Spooled events a destination has not acknowledged.", "gauge"),
                                  ("destination_up", "1 while connected to the destination.", "gauge")):
            out += [f"# HELP {prefix}_events_{name} {help_}", f"# TYPE {prefix}_events_{name} {kind}"]
            for s in self.senders:
                st = s.status()
                value = {"delivered_total": st["delivered"], "pending": st["pending"],
                         "destination_up": int(st["connected"])}[name]
                out.append(f'{prefix}_events_{name}{{destination="{q(s.dest)}"}} {value}')
        return out
