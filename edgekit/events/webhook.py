"""Events to a webhook: one HTTP POST of JSON per event, in order, retried with back-off.

A 2xx answer acknowledges the event. Network errors, timeouts, 408, 425, 429 and 5xx are retried
(the event stays first in line); any other 4xx means the receiver will never take it: it is logged,
counted in ``rejected`` and skipped. Each request carries ``Idempotency-Key: <event id>`` so a receiver
can drop the repeat of a retried event whose first answer was lost. ``user:pass@`` in the URL becomes
HTTP basic authentication (never logged).
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from edgekit.errors import UsageError
from edgekit.events.delivery import BACKOFF, Sender, device_name, redact

log = logging.getLogger(__name__)

TIMEOUT = 5.0
RETRY_STATUS = {408, 425, 429}
MAX_ANSWER = 64 << 10  # bytes of an answer read (and ignored)


class WebhookSender(Sender):
    """POSTs spooled events to ``url`` (http or https)."""

    kind = "webhook"

    def __init__(self, url: str, device: str | None = None, timeout: float = TIMEOUT, spool=None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--webhook {redact(url)}: expected an http:// or https:// URL")
        super().__init__(url, spool)
        self.device = device or device_name()
        self.timeout = timeout
        self.rejected = 0
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc += f":{parts.port}" if parts.port else ""
        self._target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self._auth = None
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._auth = "Basic " + base64.b64encode(token).decode()

    def post(self, event: dict) -> int:
        """POST one event; its HTTP status (raises OSError for network errors and timeouts)."""
        from edgekit import __version__

        body = json.dumps({**event, "device": self.device}, separators=(",", ":")).encode()
        request = urllib.request.Request(self._target, data=body, method="POST", headers={
            "Content-Type": "application/json", "Idempotency-Key": str(event.get("id", "")),
            "User-Agent": f"edgekit/{__version__}", **({"Authorization": self._auth} if self._auth else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read(MAX_ANSWER)
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def session(self) -> None:
        wait = BACKOFF[0]
        while not self.stopping():
            batch = self.spool.peek(self.dest, 1)
            if not batch:
                self.spool.wait(0.2)
                continue
            seq, event = batch[0]
            try:
                status = self.post(event)
            except (OSError, ValueError) as exc:  # refused, reset, timeout, TLS
                reason = getattr(exc, "reason", exc)
                self.connected = False
                self.fail(f"cannot POST: {reason}")
                return
            if 200 <= status < 300:
                self.connected = True
                self.recovered()
                self.delivered += 1
                self.spool.ack(self.dest, seq)
                wait = BACKOFF[0]
            elif 400 <= status < 500 and status not in RETRY_STATUS:
                self.connected = True
                self.rejected += 1
                log.warning("webhook %s answered %d to event %s: skipped (%d rejected)", self.dest, status,
                            event.get("id"), self.rejected)
                self.spool.ack(self.dest, seq)
            else:
                self.fail(f"answered HTTP {status}")
                if self._stopping.wait(wait) and self.stopping():
                    return
                wait = min(wait * 2, BACKOFF[1])

    def status(self) -> dict:
        return {**super().status(), "rejected": self.rejected}
