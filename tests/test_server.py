"""--serve: MJPEG stream of annotated frames, snapshot, status page and /metrics on loopback."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from edgekit.errors import EdgekitError, UsageError
from edgekit.stream.loop import run_loop
from edgekit.stream.metrics import Metrics
from edgekit.stream.server import StreamServer, parse_address


def test_parse_address_defaults_to_loopback():
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("http", "host:port", "1:99999"):
        with pytest.raises(UsageError, match="--serve needs"):
            parse_address(bad)


def read_parts(url, n, timeout=10):
    """The first ``n`` JPEG parts of an MJPEG stream, decoded."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.headers.get_content_type() == "multipart/x-mixed-replace"
        boundary = b"--" + resp.headers.get_param("boundary").encode()
        images = []
        while len(images) < n:
            line = resp.readline()
            if line.strip() != boundary:
                continue
            headers = dict(resp.readline().decode().strip().split(": ", 1) for _ in range(2))
            assert resp.readline() == b"\r\n" and headers["Content-Type"] == "image/jpeg"
            data = resp.read(int(headers["Content-Length"]))
            assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"  # a whole JPEG
            images.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        return images


def test_stream_snapshot_metrics_and_status(tiny_bundle, tmp_path, colour_media):
    """The whole loop serving a looping video: frames come as JPEG, /metrics counts them."""
    video = colour_media.video(tmp_path / "v.mp4", ["green"] * 10, size=(120, 160))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = {}
    thread = threading.Thread(
        target=lambda: done.update(run_loop(tiny_bundle, video, backend="onnxruntime", serve=str(port),
                                            realtime=True, loop=True, duration=4.0)),
        daemon=True,
    )
    thread.start()
    base = f"http://127.0.0.1:{port}"
    images = None
    for _ in range(50):  # wait for the server to come up
        try:
            images = read_parts(f"{base}/stream.mjpg", 3)
            break
        except OSError:
            threading.Event().wait(0.1)
    assert images is not None and len(images) == 3
    assert images[0].shape == (120, 160, 3)
    assert images[0][60:80, 100:150].mean(axis=(0, 1))[1] > 200  # still the green frame under the overlay
    with urllib.request.urlopen(f"{base}/snapshot.jpg", timeout=5) as resp:
        assert resp.headers.get_content_type() == "image/jpeg" and resp.read()[:2] == b"\xff\xd8"
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert resp.headers.get_content_type() == "text/plain"
    frames = [line for line in text.splitlines() if line.startswith("edgekit_frames_total ")]
    assert frames and int(frames[0].split()[1]) > 0
    assert 'edgekit_stage_latency_seconds{stage="infer",quantile="0.99"}' in text
    assert "# TYPE edgekit_stage_latency_seconds summary" in text
    with urllib.request.urlopen(f"{base}/", timeout=5) as resp:
        page = resp.read().decode()
    assert "/stream.mjpg" in page and "fps" in page
    thread.join(10)
    assert done["stopped_by"] == "duration"
    with pytest.raises(OSError):  # the server is gone with the loop
        urllib.request.urlopen(f"{base}/metrics", timeout=2)


def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(EdgekitError, match=f"127.0.0.1:{port}: the port is in use"):
            StreamServer(f"127.0.0.1:{port}").open()


def test_server_binds_loopback_by_default():
    server = StreamServer("0").open(None)
    try:
        assert server.host == "127.0.0.1" and server.url == f"http://127.0.0.1:{server.port}"
        server.metrics = Metrics()
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as resp:
            assert "edgekit_frames_total 0" in resp.read().decode()
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(f"{server.url}/snapshot.jpg", timeout=5)
    finally:
        server.close()


# ---- issue 12 item 9: a listen backlog that holds a burst, and a bounded client count -------------
def test_backlog_holds_a_burst_and_clients_beyond_the_limit_get_503():
    server = StreamServer("127.0.0.1:0", Metrics(), max_clients=3).open()
    try:
        assert server._httpd.request_queue_size >= 128
        server.publish(np.zeros((8, 8, 3), np.uint8))
        streams = [urllib.request.urlopen(server.url + "/stream.mjpg", timeout=5) for _ in range(3)]
        try:
            with pytest.raises(urllib.error.HTTPError) as info:  # all three slots held by streams
                urllib.request.urlopen(server.url + "/metrics", timeout=5)
            assert info.value.code == 503 and info.value.headers["Retry-After"] == "1"
            assert b"too many clients" in info.value.read()
        finally:
            for s in streams:
                s.close()
        for _ in range(50):  # the slots come back when the streams end
            try:
                urllib.request.urlopen(server.url + "/metrics", timeout=5).read()
                break
            except urllib.error.HTTPError:
                import time

                time.sleep(0.05)
        else:
            pytest.fail("slots were not released")
        assert server._httpd.refused >= 1
    finally:
        server.close()


def test_fifty_concurrent_clients_get_answers_not_timeouts():
    """A burst of 50 clients connecting at once (a backlog of 5 overflowed here) is answered."""
    server = StreamServer("127.0.0.1:0", Metrics()).open()
    server.publish(np.zeros((8, 8, 3), np.uint8))
    results = []
    barrier = threading.Barrier(50)

    def client():
        barrier.wait()
        for _ in range(5):
            try:
                with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:
                    results.append(resp.status)
            except urllib.error.HTTPError as exc:
                results.append(exc.code)
            except OSError as exc:
                results.append(type(exc).__name__)

    try:
        threads = [threading.Thread(target=client) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        server.close()
    assert results.count(200) == 250, sorted(set(map(str, results)))
