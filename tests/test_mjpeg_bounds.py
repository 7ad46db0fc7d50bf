"""An MJPEG source reads within bounds (part size, header lines) and backs off from a bad server."""

from __future__ import annotations

import json
import logging
import os
import socketserver
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from edgekit.stream import capture as capture_module
from edgekit.stream import mjpeg
from edgekit.stream.capture import Capture
from edgekit.stream.source_base import SourceLost

HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"
JPEG = cv2.imencode(".jpg", np.full((16, 16, 3), (0, 0, 255), np.uint8))[1].tobytes()


class BadCamera:
    """A raw MJPEG server on 127.0.0.1 whose parts misbehave as ``mode`` says; counts connections."""

    def __init__(self, mode: str):
        self.mode, self.connections = mode, 0
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                owner.connections += 1
                while self.rfile.readline().strip():
                    pass
                try:
                    owner.serve(self.wfile)
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def serve(self, out):
        out.write(HEAD)
        mode = self.mode
        if mode in ("huge", "absurd"):
            size = 1_500_000_000 if mode == "huge" else 99_999_999_999
            out.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % size)
            chunk = b"\xff" * (1 << 20)
            for _ in range(96):  # 96 MiB of it, then the server gives up
                out.write(chunk)
        elif mode == "nolength":
            out.write(b"--frame\r\nContent-Type: image/jpeg\r\n\r\n")
            for _ in range(4096):
                out.write(b"x" * 1023 + b"\n")
        elif mode == "headers":
            out.write(b"--frame\r\n" + b"X-Pad: 1\r\n" * 1000 + b"\r\n")
        else:  # "garbage" parts, or "good" JPEG parts, at ~50 a second while the client reads
            while True:
                data = JPEG if self.mode == "good" else b"this is not a jpeg"
                out.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(data), data))
                out.flush()
                time.sleep(0.02)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


PEAK = """
import json, sys
import cv2  # imported before the first measurement (read() decodes with it)
from edgekit.stream.mjpeg import MjpegHttpSource
from edgekit.stream.source_base import SourceLost

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

source = MjpegHttpSource(sys.argv[1], timeout=10)
source.open()
before = hwm()
try:
    source.read()
    reason = None
except SourceLost as exc:
    reason = str(exc)
print(json.dumps({"grew": hwm() - before, "reason": reason}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for the peak RSS")
def test_a_huge_content_length_is_refused_without_buffering_it():
    cam = BadCamera("huge")
    try:
        run = subprocess.run([sys.executable, "-c", PEAK, cam.url], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        cam.close()
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert "1500000000 bytes" in got["reason"] and "limit" in got["reason"]
    assert got["grew"] < 16 << 20, got  # the peak RSS did not follow the part (it reached 1.58 GB)


@pytest.mark.parametrize("mode, reason", [
    ("absurd", "a part of 99999999999 bytes (Content-Length) over the"),
    ("nolength", "a part over the 1048576 byte limit (no Content-Length)"),
    ("headers", "more than 64 header lines"),
])
def test_each_bound_is_named_in_the_reason(mode, reason, monkeypatch):
    monkeypatch.setattr(mjpeg, "MAX_PART_BYTES", 1 << 20)
    cam = BadCamera(mode)
    source = mjpeg.MjpegHttpSource(cam.url, timeout=5)
    try:
        source.open()
        with pytest.raises(SourceLost, match=reason.replace("(", r"\(").replace(")", r"\)")):
            source.read()
    finally:
        source.close()
        cam.close()


def test_back_off_starts_over_only_after_a_good_frame(monkeypatch, caplog):
    """A server that accepts and sends non-JPEG parts: each reopen waits twice as long as the last;
    once it sends a good frame, the next loss waits the shortest time again."""
    monkeypatch.setattr(capture_module, "BACKOFF", (0.1, 0.8))
    cam = BadCamera("garbage")
    capture = Capture(mjpeg.MjpegHttpSource(cam.url, timeout=2)).start()
    caplog.set_level(logging.WARNING, "edgekit.stream.capture")
    try:
        time.sleep(2.0)  # waits 0.1, 0.2, 0.4, 0.8, 0.8: 5-6 connections (with a reset each time: ~15)
        assert 3 <= cam.connections <= 7, cam.connections
        assert "not a JPEG" in caplog.text
        cam.mode = "good"
        frame = None
        deadline = time.monotonic() + 5
        while frame is None and time.monotonic() < deadline:
            frame = capture.get(0.2)
        assert frame is not None
        caplog.clear()
        cam.mode = "garbage"
        deadline = time.monotonic() + 5
        while "reopening" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "in 0.1 s" in caplog.text  # started over after the good frame
    finally:
        capture.close()
        cam.close()
