"""Progress of long steps when stderr is not a terminal (CI logs, ``| tee``, systemd): a log line
every few seconds instead of a bar, so a minute of calibration or conversion is never silent."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

log = logging.getLogger("edgekit.progress")

EVERY = 5.0  # seconds between progress lines


class Lines:
    """Iterate ``iterable``, logging ``label: done/length`` at most every ``every`` seconds (and at the end)."""

    def __init__(self, iterable, length: int, label: str, every: float = EVERY, clock=time.monotonic):
        self.iterable, self.length, self.label, self.every, self.clock = iterable, length, label, every, clock

    def __iter__(self):
        start = last = self.clock()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            now = self.clock()
            if now - last >= self.every:
                last = now
                log.info("%s: %d/%d (%.0f s)", self.label, done, self.length, now - start)
        if self.clock() - start >= self.every:
            log.info("%s: %d/%d done (%.0f s)", self.label, done, self.length, self.clock() - start)


@contextlib.contextmanager
def heartbeat(what: str, every: float = 2 * EVERY, enabled: bool = True):
    """Log ``still WHAT (N s)`` every ``every`` seconds while the block runs (for steps with no count)."""
    if not enabled:
        yield
        return
    stop = threading.Event()
    start = time.monotonic()

    def beat():
        while not stop.wait(every):
            log.info("still %s (%.0f s)", what, time.monotonic() - start)

    thread = threading.Thread(target=beat, name="edgekit-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
