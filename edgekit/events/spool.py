"""A bounded on-disk store-and-forward queue of events (SQLite, in the standard library).

Events are appended in order with a sequence number; each destination (MQTT broker, webhook) has a
cursor, the last sequence number it acknowledged, kept in the same file. Delivered-to-all events
are deleted. The spool is bounded by size (bytes of event JSON) and age: past either limit the
oldest events go first, counted in :attr:`Spool.dropped` with a log line. It survives a restart (or
a kill): the next run delivers what is left, in order. WAL mode with ``synchronous=NORMAL``: a
committed event survives the process being killed; a power cut may lose the last moments.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

from edgekit.errors import InputError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (dest TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_t ON events (t);
"""


class Spool:
    """The spool file ``folder/events.sqlite`` for destinations ``dests`` (their redacted URLs)."""

    def __init__(self, folder, dests, max_bytes: int = 100 << 20, max_age_s: float = 7 * 86400.0):
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the spool folder {folder}: {exc.strerror or exc}") from exc
        self.path = folder / "events.sqlite"
        self.max_bytes, self.max_age_s = int(max_bytes), float(max_age_s)
        self.dests = list(dests)
        self.dropped = 0
        self.appended = 0
        self._final: dict | None = None  # pending per destination once closed
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            end = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            seq0 = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            end = max(end, seq0[0] if seq0 else 0)
            for dest in self.dests:  # a new destination starts at the end: no history replayed to it
                self._db.execute("INSERT OR IGNORE INTO cursors VALUES (?, ?)", (dest, end))
            marks = ",".join("?" * len(self.dests)) or "NULL"
            self._db.execute(f"DELETE FROM cursors WHERE dest NOT IN ({marks})", self.dests)
            self._bytes = self._db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM events").fetchone()[0]
        except sqlite3.Error as exc:
            raise InputError(f"cannot open the event spool {self.path}: {exc}") from exc
        self._trim(time.time())

    # ---- writing ------------------------------------------------------------------------------
    def append(self, events: list[dict]) -> None:
        """Store ``events`` (in order); wake the senders. Never raises: a failed write is logged and counted."""
        if not events:
            return
        now = time.time()
        rows = [(now, json.dumps(e, separators=(",", ":"))) for e in events]
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO events (t, body) VALUES (?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self.dropped += len(rows)
                log.warning("event spool %s: cannot store %d event(s): %s", self.path, len(rows), exc)
                return
            self.appended += len(rows)
            self._bytes += sum(len(b) for _, b in rows)
            self._trim(now)
            self._changed.notify_all()

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _trim(self, now: float) -> None:
        """Delete what every destination has; drop the oldest events past the size or age limit (lock held)."""
        db = self._db
        self._delete_upto(db.execute("SELECT COALESCE(MIN(seq), 0) FROM cursors").fetchone()[0])
        cut, why = None, ""
        old = db.execute("SELECT MAX(seq) FROM events WHERE t < ?", (now - self.max_age_s,)).fetchone()[0]
        if old is not None:
            cut, why = old, f"older than {self.max_age_s / 3600:g} h"
        if self._bytes > self.max_bytes:  # drop the oldest until under 90 % of the limit
            total, target = 0, self._bytes - int(self.max_bytes * 0.9)
            for seq, size in db.execute("SELECT seq, LENGTH(body) FROM events ORDER BY seq"):
                total += size
                if total >= target:
                    cut, why = max(cut or 0, seq), f"spool over {self.max_bytes / 1e6:g} MB"
                    break
        if cut is None:
            return
        n = db.execute("SELECT COUNT(*) FROM events WHERE seq <= ?", (cut,)).fetchone()[0]
        self._delete_upto(cut)
        db.execute("UPDATE cursors SET seq = ? WHERE seq < ?", (cut, cut))
        if n:
            self.dropped += n
            log.warning("event spool: dropped the %d oldest undelivered event(s) (%s); %d dropped in all",
                        n, why, self.dropped)

    def _delete_upto(self, seq: int) -> None:
        size = self._db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM events WHERE seq <= ?", (seq,)).fetchone()[0]
        if size:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (seq,))
            self._bytes -= size

    # ---- reading ------------------------------------------------------------------------------
    def peek(self, dest: str, limit: int = 100, after: int | None = None) -> list[tuple[int, dict]]:
        """Up to ``limit`` events ``dest`` has not acknowledged (after ``after`` if given), oldest first."""
        with self._lock:
            start = self._cursor(dest) if after is None else after
            rows = self._db.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (start, limit)).fetchall()
        return [(seq, json.loads(body)) for seq, body in rows]

    def _cursor(self, dest: str) -> int:
        return self._db.execute("SELECT seq FROM cursors WHERE dest = ?", (dest,)).fetchone()[0]

    def ack(self, dest: str, seq: int) -> None:
        """``dest`` acknowledged every event up to ``seq``."""
        with self._lock:
            try:
                self._db.execute("UPDATE cursors SET seq = MAX(seq, ?) WHERE dest = ?", (seq, dest))
            except sqlite3.Error as exc:
                log.warning("event spool %s: cannot record a delivery: %s", self.path, exc)

    def pending(self, dest: str) -> int:
        """Events not yet acknowledged by ``dest``."""
        with self._lock:
            if self._final is not None:
                return self._final.get(dest, 0)
            return self._db.execute("SELECT COUNT(*) FROM events WHERE seq > ?", (self._cursor(dest),)).fetchone()[0]

    def wait(self, timeout: float) -> None:
        """Block until events are appended or ``timeout`` passes."""
        with self._changed:
            self._changed.wait(timeout)

    def close(self) -> None:
        """Close the file; :meth:`pending` then answers what was pending at the close."""
        pending = {dest: self.pending(dest) for dest in self.dests}
        with self._lock:
            self._final = pending
            try:
                self._trim(time.time())
                self._db.close()
            except sqlite3.Error:
                pass
