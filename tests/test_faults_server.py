"""Issue 19 items 6, 12 and 13's overlay/table: slow HTTP clients cannot keep real requests out,
HEAD is answered, the overlay does not hide boxes, the detector gate table shows figures."""

from __future__ import annotations

import socket
import time
import urllib.request

import numpy as np
import pytest

from edgekit.stream.metrics import Metrics
from edgekit.stream.server import StreamServer


def _slow_clients(port, n, source="127.0.0.1"):
    """``n`` sockets that send half a request and then nothing (a slowloris)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    return socks


def _second_loopback_address():
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a loopback address here")
    return "127.0.0.2"


# ---- 6. slow clients -----------------------------------------------------------------------------
def test_6_seventy_slow_clients_of_one_address_leave_slots_for_others():
    source = _second_loopback_address()
    server = StreamServer("127.0.0.1:0", Metrics()).open()
    socks = _slow_clients(server.port, 70, source)
    try:
        time.sleep(0.3)
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as resp:  # from 127.0.0.1: served
            assert resp.status == 200 and b"edgekit_frames_total" in resp.read()
        assert server._httpd.refused >= 70 - server._httpd.per_address
    finally:
        for s in socks:
            s.close()
        server.close()


def test_6_slow_clients_are_cut_at_the_request_deadline_and_real_ones_served_after():
    server = StreamServer("127.0.0.1:0", Metrics(), max_clients=8, request_deadline=0.5).open()
    socks = _slow_clients(server.port, 6)  # all slots this address may hold
    try:
        for s in socks:  # each slow client is disconnected (EOF), not held for ever
            s.settimeout(10)
            assert s.recv(100) == b""
        for _ in range(100):  # their handler threads end and give their slots back
            if not server._httpd._per_address:
                break
            time.sleep(0.05)
        with urllib.request.urlopen(server.url + "/status.json", timeout=5) as resp:
            assert resp.status == 200
        assert server._httpd.dropped_slow == 6
    finally:
        for s in socks:
            s.close()
        server.close()


# ---- 12. HEAD ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,ctype", [("/metrics", "text/plain"), ("/status.json", "application/json"),
                                        ("/", "text/html"), ("/stream.mjpg", "multipart/x-mixed-replace")])
def test_12_head_gets_the_headers_of_get_and_no_body(path, ctype):
    server = StreamServer("127.0.0.1:0", Metrics()).open()
    server.publish(np.zeros((8, 8, 3), np.uint8))
    try:
        request = urllib.request.Request(server.url + path, method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith(ctype)
            assert resp.read() == b""
    finally:
        server.close()


# ---- 13. the overlay and the detector gate table -------------------------------------------------
def test_13_overlay_keeps_boxes_visible_and_shows_no_fps_on_the_first_frame(tiny_bundle, tmp_path, colour_media):
    from edgekit.stream.pipeline import Pipeline

    from edgekit.stream.postprocess import draw_text

    image = np.zeros((120, 160, 3), np.uint8)
    image[:, 10] = 255  # a box edge (white) under the overlay
    draw_text(image, ["infer 1.0 ms"], (0, 60), shade=True)
    assert image[60:75, 10].min() > 100  # darkened, still visible: not covered by an opaque box

    from edgekit.stream.loop import run_loop

    seen = []
    original = Pipeline.run

    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(3))

    class Spy:
        def open(self, info):
            pass

        def write(self, result):
            seen.append(list(result.overlay))

        def close(self):
            pass

    def run_with_spy(self):
        self.sinks.append(Spy())
        return original(self)

    Pipeline.run = run_with_spy
    try:
        run_loop(tiny_bundle, video, backend="onnxruntime", max_frames=3)
    finally:
        Pipeline.run = original
    assert "fps" not in seen[0][0] and seen[0][0].startswith("infer")


def test_13_unlabelled_detector_gate_table_shows_figures_not_dashes():
    from edgekit.quant.detection_gate import DetectionReport, DetectionResult

    report = DetectionReport("b", 10, False, 1.0)
    report.results = [DetectionResult("fp32", "fp32", "onnxruntime", latency_ms=1.0, agreement=100.0),
                      DetectionResult("int8", "int8", "onnxruntime", latency_ms=0.5, agreement=97.5, drop=2.5,
                                      passed=False)]
    table = report.summary()
    assert "97.50" in table and "vs FP32" in table
    assert " - " not in table.replace("FAIL (-", "")
