"""Events out: the spool, a webhook that fails at first, and a real mosquitto broker (outage, restart).

Delivery is at least once and in order: every event arrives, the first arrival of each id is in the
order produced, and a repeat can only be an event resent after a broken connection.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def _events(n, start=0):
    return [{"event": "line_crossed", "id": f"run-{i}", "source": "cam", "line": "door", "direction": "in",
             "track_id": i, "label": "red", "score": 0.9, "box": [0, 0, 1, 1], "frame": i, "time": 1.0 + i}
            for i in range(start, start + n)]


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# ---- spool ------------------------------------------------------------------------------------
def test_spool_keeps_order_across_a_restart_and_per_destination(tmp_path):
    from edgekit.events.spool import Spool

    spool = Spool(tmp_path, ["a", "b"])
    spool.append(_events(5))
    assert [e["id"] for _, e in spool.peek("a")] == [f"run-{i}" for i in range(5)]
    seqs = [s for s, _ in spool.peek("a")]
    spool.ack("a", seqs[2])
    spool.close()
    again = Spool(tmp_path, ["a", "b"])  # a restart: what is not acknowledged is still there
    assert [e["id"] for _, e in again.peek("a")] == ["run-3", "run-4"]
    assert again.pending("b") == 5
    again.ack("b", seqs[-1])
    again.ack("a", seqs[-1])
    again.append(_events(1, 5))
    assert [e["id"] for _, e in again.peek("b")] == ["run-5"]


def test_full_spool_drops_oldest_first_and_counts_them(tmp_path, caplog):
    from edgekit.events.spool import Spool

    size = len(json.dumps(_events(1)[0], separators=(",", ":")))
    spool = Spool(tmp_path, ["a"], max_bytes=10 * size)
    for i in range(30):
        spool.append(_events(1, i))
    left = [e["id"] for _, e in spool.peek("a", 100)]
    assert left == [f"run-{i}" for i in range(30 - len(left), 30)] and len(left) <= 10
    assert spool.dropped == 30 - len(left)
    assert "dropped the" in caplog.text and "oldest undelivered" in caplog.text
    old = Spool(tmp_path / "old", ["a"], max_age_s=0.05)
    old.append(_events(3))
    time.sleep(0.1)
    old.append(_events(1, 3))
    assert [e["id"] for _, e in old.peek("a")] == ["run-3"] and old.dropped == 3


# ---- webhook ----------------------------------------------------------------------------------
class _Hook(BaseHTTPRequestHandler):
    fail_first = 3
    got: list = []
    refused: list = []
    requests = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        if type(self).requests <= self.fail_first:
            self.send_response(503)
        elif json.loads(body)["id"] == "run-5":  # a receiver that will never take this one
            type(self).refused.append("run-5")
            self.send_response(400)
        else:
            event = json.loads(body)
            assert self.headers["Idempotency-Key"] == event["id"]
            type(self).got.append((event["id"], self.headers.get("Authorization")))
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_that_fails_its_first_requests_gets_every_event_in_order(tmp_path, monkeypatch, caplog):
    from edgekit.events import delivery
    from edgekit.events.delivery import EventSink
    from edgekit.events.webhook import WebhookSender
    from edgekit.stream.metrics import Metrics

    monkeypatch.setattr(delivery, "BACKOFF", (0.05, 0.2))
    monkeypatch.setattr("edgekit.events.webhook.BACKOFF", (0.05, 0.2))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://user:s3cret@127.0.0.1:{server.server_port}/hook"
        sink = EventSink([WebhookSender(url, device="dev1")], tmp_path / "spool")
        metrics = Metrics()
        sink.open(type("Info", (), {"metrics": metrics})())
        for i in range(0, 12, 3):
            sink.write(type("R", (), {"events": _events(3, i)})())
        assert _wait(lambda: len(_Hook.got) >= 11)
        status = json.dumps(metrics.snapshot())
        sink.close()
    finally:
        server.shutdown()
    assert [i for i, _ in _Hook.got] == [f"run-{i}" for i in range(12) if i != 5] and _Hook.refused == ["run-5"]
    assert _Hook.requests == 12 + _Hook.fail_first  # the 400 is not retried
    assert all(auth and auth.startswith("Basic ") for _, auth in _Hook.got)
    assert "s3cret" not in status and f"127.0.0.1:{server.server_port}/hook" in status
    assert "answered HTTP 503" in caplog.text and "s3cret" not in caplog.text


# ---- mosquitto --------------------------------------------------------------------------------
def _mosquitto_binary():
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


class Broker:
    """A private mosquitto on 127.0.0.1 with persistence (its queues survive a restart)."""

    def __init__(self, folder: Path):
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence true",
                f"persistence_location {folder}/", "autosave_interval 1", "log_dest none"]
        if os.geteuid() == 0:
            conf.append("user root")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([_mosquitto_binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        assert _wait(self._up, 10), "mosquitto did not start"

    def _up(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def freeze_then_kill(self, seconds: float):
        """A network outage as a client sees it: the broker stops answering (published messages get no
        PUBACK), then dies without saving; what it had not persisted is gone."""
        self.proc.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """A persistent-session QoS 1 subscriber to PREFIX/#: it misses nothing across broker restarts."""

    def __init__(self, port: int, topic: str = "test/#"):
        import paho.mqtt.client as mqtt

        self.messages = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{port}", clean_session=False)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, m.retain))
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert _wait(self.client.is_connected, 10)

    def events(self):
        return [json.loads(p) for t, p, r in self.messages if not t.endswith("/status") and not t.endswith("/detections")]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path):
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install 'edgekit[analytics]')")
    if _mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto; .ci/run installs it)")
    (tmp_path / "broker").mkdir()
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def sample(track_sample):
    return track_sample


def _run(sample, port, tmp_path, *extra, json_name="out.jsonl", background=False, here=False):
    """`edgekit run` on the tracking sample with --mqtt: here (in this process), in the background or to its end."""
    args = [sys.executable, "-m", "edgekit", "run", sample / "cards.bundle", f"track={sample / 'track.mp4'}", "--track",
            "--track-started", "--line", "door=0,120,320,120", "--json", tmp_path / json_name,
            "--mqtt", f"mqtt://edge:s3cret@127.0.0.1:{port}/test", "--device-name", "dev1", "--spool", tmp_path / "spool", *extra]
    if here:
        from edgekit.cli import main

        try:
            main([str(a) for a in args[3:]] + ["-q"])
        except SystemExit as exc:
            assert not exc.code, exc
        return None
    if background:
        return subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def _produced(path: Path) -> list:
    return [e for line in path.read_text().splitlines() for e in json.loads(line)["events"]]


def _at_least_once_in_order(produced, received):
    """Every produced id received; first arrivals in produced order; returns the number of repeats."""
    ids = [e["id"] for e in received]
    first = list(dict.fromkeys(ids))
    assert first == [e["id"] for e in produced], (len(first), len(produced))
    return len(ids) - len(first)


def test_broker_receives_every_event_of_a_run(broker, sample, tmp_path):
    sub = Subscriber(broker.port)
    try:
        _run(sample, broker.port, tmp_path, "--mqtt-detections", here=True)
        produced = _produced(tmp_path / "out.jsonl")
        assert _wait(lambda: len(sub.events()) >= len(produced), 10)
        # the clean stop's retained "offline" may reach the subscriber after the last event
        assert _wait(lambda: any(t == "test/dev1/status" and b'"offline"' in p for t, p, _ in sub.messages), 10)
    finally:
        sub.close()
    kinds = {e["event"] for e in produced}
    assert {"line_crossed", "track_started"} <= kinds
    assert _at_least_once_in_order(produced, sub.events()) == 0  # no outage, no repeats
    topics = {t for t, _, _ in sub.messages}
    assert "test/dev1/track/line_crossed" in topics and "test/dev1/track/detections" in topics
    status = [json.loads(p) for t, p, r in sub.messages if t == "test/dev1/status"]
    assert status[0]["state"] == "online" and status[-1]["state"] == "offline"


def test_broker_lost_mid_run_and_restarted_loses_nothing(broker, sample, tmp_path, capsys):
    sub = Subscriber(broker.port)
    try:
        run = _run(sample, broker.port, tmp_path, "--realtime", "--fps", "25", background=True)  # 4.8 s of video
        assert _wait(lambda: any(t.endswith("/status") for t, _, _ in sub.messages), 30), "edgekit never connected"
        time.sleep(0.5)
        down = time.time()
        broker.freeze_then_kill(2.0)
        up = time.time()
        broker.start()
        _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        produced = _produced(tmp_path / "out.jsonl")
        assert any(down < e["time"] < up for e in produced), "no event was produced while the broker was down"
        assert _wait(lambda: len({e["id"] for e in sub.events()}) >= len(produced), 30)
        repeats = _at_least_once_in_order(produced, sub.events())
    finally:
        sub.close()
    with capsys.disabled():
        print(f"\nbroker outage: {len(produced)} events produced, {len({e['id'] for e in sub.events()})} delivered "
              f"({repeats} repeats)")
    assert "events are kept in the spool" in err and "mqtt://127.0.0.1:" in err, err
    assert "s3cret" not in err


def test_spool_of_a_killed_run_is_delivered_by_the_next(broker, sample, tmp_path, capsys):
    broker.stop()  # down for the whole first run
    run = _run(sample, broker.port, tmp_path, "--realtime", "--fps", "30", background=True)
    partial = lambda: next(iter(tmp_path.glob(".out.*.partial.jsonl")), None)  # noqa: E731 (written line by line)
    assert _wait(lambda: partial() is not None and len(_produced(partial())) >= 6, 60), "the run produced no events"
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    produced = _produced(partial())
    broker.start()
    sub = Subscriber(broker.port)
    try:
        _run(sample, broker.port, tmp_path, "--max-frames", "2", json_name="second.jsonl", here=True)
        assert _wait(lambda: {e["id"] for e in produced} <= {e["id"] for e in sub.events()}, 20)
        got = [e for e in sub.events() if e["id"].split("-")[0] == produced[0]["id"].split("-")[0]]
    finally:
        sub.close()
    assert _at_least_once_in_order(produced, got[: len(produced)]) == 0
    with capsys.disabled():
        print(f"\nkilled run: {len(produced)} events spooled while the broker was down, {len(got)} delivered by the next run")


def test_mqtts_with_a_private_ca_delivers_and_an_unknown_ca_is_refused(broker, tmp_path, caplog):
    from edgekit.events.delivery import EventSink
    from edgekit.events.mqtt import MqttSender
    from edgekit.stream.metrics import Metrics

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make the test's certificates)")
    d = tmp_path / "tls"
    d.mkdir()
    ssl = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)  # noqa: E731
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "2", "-extfile", "san.cnf")
    broker.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tls_port = s.getsockname()[1]
    broker.conf.write_text(broker.conf.read_text() + f"listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\n"
                           f"certfile {d}/server.pem\nkeyfile {d}/server.key\n")
    broker.start()
    sub = Subscriber(broker.port)
    try:
        sink = EventSink([MqttSender(f"mqtts://127.0.0.1:{tls_port}/test", ca=str(d / "ca.pem"), device="dev1")],
                         tmp_path / "spool")
        sink.open(type("Info", (), {"metrics": Metrics()})())
        sink.write(type("R", (), {"events": _events(3)})())
        assert _wait(lambda: len(sub.events()) >= 3, 15)
        sink.close()
        untrusted = EventSink([MqttSender(f"mqtts://127.0.0.1:{tls_port}/test", device="dev2")], tmp_path / "spool2",
                              drain_s=1.0)
        untrusted.open(type("Info", (), {"metrics": Metrics()})())
        untrusted.write(type("R", (), {"events": _events(1, 3)})())
        assert _wait(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, 10), caplog.text
        untrusted.close()
    finally:
        sub.close()
    assert [e["id"] for e in sub.events()] == ["run-0", "run-1", "run-2"]
