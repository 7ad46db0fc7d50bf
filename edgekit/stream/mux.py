"""The muxer: one batch at a time from many captures (the shape of DeepStream's nvstreammux).

A batch holds the newest unprocessed frame of every source that has one, in source order, at most
one per source. Once the first frame of a batch is in hand, the muxer waits at most ``timeout``
seconds for the other *live* sources (state ``live``); a source that is reconnecting, ended or
failed, or stalled (no frame for ``STALL_TIMEOUTS`` timeouts, at least ``MIN_STALL`` seconds)
drops out of the batch and rejoins when it has frames again. Files not played in real time
are read in order, one frame per batch, so none is ever skipped.

Files read in order are read on the pipeline's worker ``pool`` when it has one, so that several
files decode at once on a device with cores to spare (OpenCV releases the GIL).

The default timeout follows DeepStream's FAQ: one frame period of the fastest threaded source
(``1 / max fps``; 30 fps when a source does not say), and ``FILE_TIMEOUT`` when every source is a
file read in order (which never has to be waited for).
"""

from __future__ import annotations

import threading
import time

from edgekit.stream.capture import Capture
from edgekit.stream.source_base import Frame

FILE_TIMEOUT = 0.001
STALL_TIMEOUTS, MIN_STALL = 4, 1.0
POLL = 0.1  # seconds between checks of the stop flag while no frame arrives


def default_timeout(captures: list[Capture]) -> float:
    """The batch timeout for these captures (seconds): a frame period of the fastest threaded one."""
    rates = [c.fps or 30.0 for c in captures if c.threaded]
    return 1.0 / max(rates) if rates else FILE_TIMEOUT


class Muxer:
    """Forms batches from ``captures`` (opened and started); ``timeout`` None: :func:`default_timeout`;
    ``pool`` (an Executor, optional) reads several files at once."""

    def __init__(self, captures: list[Capture], timeout: float | None = None, pool=None):
        self.captures = list(captures)
        self.pool = pool  # an Executor reading several files at once, or None
        self.timeout = default_timeout(self.captures) if timeout is None else float(timeout)
        self.stall_s = max(MIN_STALL, STALL_TIMEOUTS * self.timeout)
        self._arrived = threading.Event()
        for capture in self.captures:
            capture.on_frame = self._arrived.set

    @property
    def ended(self) -> bool:
        """True when every source has ended (files read, the failed given up); live sources never end."""
        return all(c.ended for c in self.captures)

    def waits_for(self, capture: Capture, now: float) -> bool:
        """True when a batch waits for ``capture``: live and not stalled."""
        return not capture.ended and capture.state == "live" and now - capture.last_frame < self.stall_s

    def next(self, stop: threading.Event, beat=None) -> list[Frame] | None:
        """The next batch, or None when every source has ended or ``stop`` is set.

        ``beat`` (optional) is called while waiting, so a watchdog knows the stage is alive."""
        taken: dict[str, Frame] = {}
        deadline = None
        while not stop.is_set():
            if beat is not None:
                beat()
            self._arrived.clear()  # before looking: a frame landing meanwhile sets it again
            due = [c for c in self.captures if c.name not in taken and not c.ended]
            files = [c for c in due if not c.threaded]  # read now, in order (on the pool when several)
            threaded = [c for c in due if c.threaded]  # their newest frame, if one is waiting
            reads = self.pool.map(_read, files) if self.pool is not None and len(files) > 1 else map(_read, files)
            frames = [*reads, *map(_read, threaded)]
            for capture, frame in zip(files + threaded, frames):
                if frame is not None:
                    taken[capture.name] = frame
            now = time.monotonic()
            if taken:
                if deadline is None:
                    deadline = now + self.timeout
                laggards = [c for c in self.captures if c.name not in taken and self.waits_for(c, now)]
                if not laggards or now >= deadline:
                    return [taken[c.name] for c in self.captures if c.name in taken]
                self._arrived.wait(min(POLL, deadline - now))
            elif self.ended:
                return None
            else:
                self._arrived.wait(POLL)
        return None


def _read(capture: Capture) -> Frame | None:
    """The capture's next frame without waiting (a file: read now; threaded: the slot's, or None)."""
    return capture.get(0)
