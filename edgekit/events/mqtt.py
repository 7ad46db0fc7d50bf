"""Events to an MQTT broker with paho-mqtt (2.x): QoS 1, in order, from the spool.

URL ``mqtt://[user:pass@]host[:port]/PREFIX`` (``mqtts://`` for TLS, port 8883, with ``--mqtt-ca``).
Topics: ``PREFIX/DEVICE/SOURCE/EVENT`` per event (``EVENT`` is ``line_crossed``, ``zone_entered`` ...),
``PREFIX/DEVICE/SOURCE/detections`` per frame with ``--mqtt-detections`` (QoS 0, not spooled: a
frame's boxes are stale after an outage), and ``PREFIX/DEVICE/status``, retained: ``online`` while
connected, ``offline`` on a clean stop or, as the broker's last will, when the device vanishes.

Each connection is a fresh clean session: up to ``WINDOW`` events are in flight; an event is
acknowledged in the spool when its PUBACK arrives, and in order, so after a broken connection the
next one resends from the first unacknowledged event (at least once).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from urllib.parse import unquote, urlsplit

from edgekit.errors import EdgekitError, InputError, UsageError
from edgekit.events.delivery import Sender, device_name, redact

log = logging.getLogger(__name__)

WINDOW = 32  # events in flight (published, PUBACK not yet received)
CONNECT_TIMEOUT = 5.0
DETECTIONS_BUFFER = 64  # per-frame messages kept while disconnected (oldest dropped)


def parse_url(url: str, ca: str | None = None) -> dict:
    """Host, port, prefix, credentials and TLS of an MQTT URL; UsageError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise UsageError(f"--mqtt {redact(url)}: expected mqtt://[user:pass@]host[:port]/PREFIX or mqtts://...")
    if not parts.hostname:
        raise UsageError(f"--mqtt {redact(url)}: no broker host")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise UsageError(f"--mqtt {redact(url)}: the port is not a number within 1-65535") from None
    prefix = parts.path.strip("/") or "edgekit"
    if any(c in prefix for c in "#+"):
        raise UsageError(f"--mqtt {redact(url)}: the topic prefix cannot hold '#' or '+'")
    if ca is not None and parts.scheme != "mqtts":
        raise UsageError("--mqtt-ca is for mqtts:// URLs")
    if ca is not None and not os.path.isfile(ca):
        raise InputError(f"--mqtt-ca {ca}: no such file")
    return {"host": parts.hostname, "port": port, "prefix": prefix, "tls": parts.scheme == "mqtts", "ca": ca,
            "user": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None}


class MqttSender(Sender):
    """Delivers spooled events to one broker (see the module docstring)."""

    kind = "mqtt"

    def __init__(self, url: str, ca: str | None = None, device: str | None = None, detections: bool = False,
                 spool=None):
        self.conf = parse_url(url, ca)
        try:
            import paho.mqtt.client  # noqa: F401
        except ImportError as exc:
            raise EdgekitError("--mqtt needs paho-mqtt: pip install 'edgekit[analytics]'") from exc
        super().__init__(url, spool)
        self.device = device or device_name()
        self.base = f"{self.conf['prefix']}/{self.device}"
        self.send_detections = detections
        self._frames: deque = deque(maxlen=DETECTIONS_BUFFER)
        self.detections_dropped = 0

    def detections(self, result) -> None:
        """Queue one frame's detections (``--mqtt-detections``); the oldest go when the buffer is full."""
        if not self.send_detections:
            return
        if len(self._frames) == self._frames.maxlen:
            self.detections_dropped += 1
        self._frames.append((result.source, {
            "device": self.device, "frame": result.frame.number, "time": round(time.time(), 6),
            "results": result.results}))

    def _client(self):
        import paho.mqtt.client as mqtt

        c = self.conf
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgekit-{self.device}-{os.getpid()}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.connect_timeout = CONNECT_TIMEOUT
        client.max_inflight_messages_set(WINDOW)
        if c["user"] is not None:
            client.username_pw_set(c["user"], c["password"])
        if c["tls"]:
            client.tls_set(ca_certs=c["ca"])
        client.will_set(f"{self.base}/status", self._status_payload("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        return client

    def _status_payload(self, state: str) -> str:
        from edgekit import __version__

        return json.dumps({"state": state, "device": self.device, "time": round(time.time(), 3), "edgekit": __version__})

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self._connack = reason_code

    def session(self) -> None:
        import paho.mqtt.client as mqtt

        client = self._client()
        self._connack = None
        try:
            client.connect(self.conf["host"], self.conf["port"], keepalive=30)
        except (OSError, ValueError) as exc:
            self.fail(f"cannot connect: {exc}")
            return
        try:
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while self._connack is None and time.monotonic() < deadline:
                if client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            if self._connack is None or self._connack.is_failure:
                self.fail(f"the broker refused the connection: {self._connack or 'no answer'}")
                return
            self.connected = True
            self.recovered()
            client.publish(f"{self.base}/status", self._status_payload("online"), qos=1, retain=True)
            self._deliver(client)
            if self.stopping():
                client.publish(f"{self.base}/status", self._status_payload("offline"), qos=1, retain=True)
                client.loop(0.2)
        finally:
            self.connected = False
            try:
                client.disconnect()
                client.loop(0.05)
            except Exception:  # closing a broken socket
                pass

    def _deliver(self, client) -> None:
        """Publish and acknowledge until the connection breaks or the sender stops."""
        import paho.mqtt.client as mqtt

        inflight: deque = deque()  # (seq, MQTTMessageInfo), in publish order
        last = None
        while not self.stopping():
            if len(inflight) < WINDOW:
                for seq, event in self.spool.peek(self.dest, WINDOW - len(inflight), after=last):
                    topic = f"{self.base}/{event.get('source', 'main')}/{event['event']}"
                    payload = json.dumps({**event, "device": self.device}, separators=(",", ":"))
                    info = client.publish(topic, payload, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        self.fail(f"publish failed: {mqtt.error_string(info.rc)}")
                        return
                    inflight.append((seq, info))
                    last = seq
            while self._frames:
                source, message = self._frames.popleft()
                client.publish(f"{self.base}/{source}/detections", json.dumps(message, separators=(",", ":")), qos=0)
            rc = client.loop(0.05)
            acked = None
            while inflight and inflight[0][1].is_published():
                acked = inflight.popleft()[0]
                self.delivered += 1
            if acked is not None:
                self.spool.ack(self.dest, acked)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self.fail(f"connection lost: {mqtt.error_string(rc)}")
                return
