"""sd_notify without libsystemd: READY, WATCHDOG and STATUS datagrams to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Talks to systemd when started by it (``NOTIFY_SOCKET`` set); does nothing otherwise.

    ``watchdog()`` may be called every frame: it sends at most one ping per half watchdog interval
    (``WATCHDOG_USEC``), so a loop that stops calling it gets the service restarted. Sends never
    block: if the receiver's queue is full the message is dropped (False) rather than stalling the
    loop, and a dropped ping is retried on the next call.
    """

    def __init__(self, env: dict | None = None):
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        enabled = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if enabled else None
        self._last_ping = 0.0
        self._sock = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, message: str) -> bool:
        """Send one raw notification; False when there is no socket or it is gone."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        if self.watchdog_interval is None:
            return False
        now = time.monotonic()
        if now - self._last_ping < self.watchdog_interval:
            return False
        sent = self.send("WATCHDOG=1")
        if sent:
            self._last_ping = now
        return sent

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
