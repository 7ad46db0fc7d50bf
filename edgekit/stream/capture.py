"""Reading one source: :class:`Capture`, the first stage of the loop (one per source).

Live sources (cameras, streams) and ``realtime`` files are read on their own thread into a
latest-frame slot (the oldest frame is dropped and counted, so latency never grows); other files
are read in order with no drops, by whoever calls :meth:`Capture.get`. A live source that fails is
reopened with back-off while the loop runs; the back-off grows on every failed attempt and starts
over only once the source gives a good frame again (a server that accepts connections and sends
garbage is not hammered). The *first* open of a source must succeed (network sources within
their ``timeout``) unless the run allows missing sources, which then start reconnecting.
"""

from __future__ import annotations

import logging
import threading
import time

from edgekit.stream.source_base import Frame, Source

log = logging.getLogger(__name__)

BACKOFF = (0.5, 8.0)  # first and longest wait between reopen attempts, seconds


class Capture:
    """Reads a source: live (or ``realtime``) on a thread into a latest-frame slot, files in order.

    ``name`` tags every frame (``NAME=URI``, else the source's index). ``pace_fps`` paces a realtime
    file (default: its own fps); ``loop`` replays a file forever. ``drops`` counts frames replaced
    in the slot before anyone took them, ``reconnects`` the successful reopenings of a lost live
    source; ``heartbeat`` is when the reader last made progress; ``state`` is ``starting``, ``live``,
    ``reconnecting``, ``ended`` or ``failed``.
    ``last_frame`` is when the latest frame arrived. ``on_frame`` (set by the muxer) is called from
    the reader thread when a frame or the end arrives.
    """

    def __init__(self, source: Source, realtime: bool = False, pace_fps: float | None = None, loop: bool = False,
                 name: str = "0"):
        self.source = source
        self.name = str(name)
        self.threaded = source.live or realtime
        self.pace_fps = pace_fps
        self.loop = loop
        self.drops = 0
        self.reconnects = 0
        self.heartbeat = time.monotonic()
        self.last_frame = self.heartbeat  # when the latest frame arrived
        self.ended = False
        self.state = "starting"
        self.on_frame = None
        self._number = 0
        self._skipped = 0
        self._wait = BACKOFF[0]
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = None

    @property
    def fps(self) -> float | None:
        return self.pace_fps or self.source.fps

    @property
    def live(self) -> bool:
        return self.threaded

    @property
    def finite(self) -> bool:
        """True for a source that ends (a file or folder not looped)."""
        return not self.source.live and not self.loop

    def start(self, missing_ok: bool = False) -> "Capture":
        """Open the source (a clear error if it does not) and start the reader thread if threaded.

        ``missing_ok``: a live source that does not open keeps trying in the background (state
        ``reconnecting``), any other is ``failed`` and ended; the error is logged, not raised."""
        try:
            self.source.open()
        except Exception as exc:
            if not missing_ok:
                raise
            log.warning("source %s (%s) did not open: %s; %s (--allow-missing)", self.name, self.source.name, exc,
                        "it keeps trying" if self.source.live else "running without it")
            if not self.source.live:
                self.state, self.ended = "failed", True
                return self
            self.state = "reconnecting"
            self._thread = threading.Thread(target=self._reader, args=(exc,), name=f"edgekit-capture-{self.name}",
                                            daemon=True)
            self._thread.start()
            return self
        self.heartbeat = self.last_frame = time.monotonic()
        self.state = "live"
        if self.threaded:
            if self.pace_fps is None and not self.source.live:
                self.pace_fps = self.source.fps or 30.0
            self._thread = threading.Thread(target=self._reader, name=f"edgekit-capture-{self.name}", daemon=True)
            self._thread.start()
        return self

    def get(self, timeout: float = 0.1) -> Frame | None:
        """The next frame (threaded: the newest one not yet taken), or None on timeout or at the end."""
        if not self.threaded:
            return None if self.ended else self._read()
        with self._cond:
            if self._slot is None and not self.ended and timeout > 0:
                self._cond.wait(timeout)
            frame, self._slot = self._slot, None
            return frame

    def ready(self) -> bool:
        """True when :meth:`get` gives a frame (or the end) without waiting."""
        return not self.threaded or self._slot is not None or self.ended

    def _read(self) -> Frame | None:
        t0 = time.monotonic()
        image = self.source.read()
        if image is None and self.loop and self._number:
            self.source.close()
            self.source.open()
            image = self.source.read()
        t1 = time.monotonic()
        self.heartbeat = t1
        if image is None:
            self.ended = True
            self.state = "ended"
            return None
        skipped = getattr(self.source, "skipped", 0)
        self._number += 1 + skipped - self._skipped
        self._skipped = skipped
        self.last_frame = t1
        return Frame(image, self._number - 1, t1, (t1 - t0) * 1000, self.source.file, self.source.position, self.name)

    def _reader(self, lost: BaseException | None = None) -> None:
        if lost is not None and not self._reopen(lost, quiet=True):
            return
        next_due = time.monotonic()
        while not self._stop.is_set():
            if self.pace_fps and not self.source.live:  # wait first, so a frame is stamped when it is due
                lag = next_due - time.monotonic()
                if lag > 0 and self._stop.wait(lag):
                    break
                if lag < -1.0:
                    next_due = time.monotonic()
                next_due += 1.0 / self.pace_fps
            try:
                frame = self._read()
            except Exception as exc:  # SourceLost, or anything the backend raises mid-stream
                if not self.source.live:
                    log.error("reading %s failed: %s", self.source.name, exc)
                    frame, self.ended, self.state = None, True, "failed"
                else:
                    self._reopen(exc)
                    next_due = time.monotonic()
                    continue
            if frame is None:
                self._notify()
                return
            self._wait = BACKOFF[0]  # a good frame: the next loss starts the back-off over
            with self._cond:
                if self._slot is not None:
                    self.drops += 1
                self._slot = frame
                self._cond.notify_all()
            self._notify()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
        if self.on_frame is not None:
            self.on_frame()

    def _reopen(self, reason, quiet: bool = False) -> bool:
        """Reopen a lost live source with back-off; False when the capture was closed meanwhile."""
        self.state = "reconnecting"
        if not quiet:
            log.warning("source %s lost (%s); reopening %s in %.1f s", self.name, str(reason) or type(reason).__name__,
                        self.source.name, self._wait)
        while not self._stop.is_set():
            self.source.close()
            self.heartbeat = time.monotonic()
            wait = self._wait
            self._wait = min(wait * 2, BACKOFF[1])
            if self._stop.wait(wait):
                return False
            try:
                self.source.open()
            except Exception as exc:
                log.warning("reopening %s failed: %s (next try in %.1f s)", self.source.name, exc, self._wait)
                continue
            self.reconnects += 1
            self.state = "live"
            log.info("source %s is back", self.source.name)
            return True
        return False

    def close(self, timeout: float = 1.0) -> None:
        """Stop the reader and release the source (left to die with the process if it is stuck)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("source %s is stuck in a read; not releasing it", self.source.name)
                return
        self.source.close()
        if self.state in ("live", "starting", "reconnecting"):
            self.state = "ended"
