"""sd_notify messages reach a NOTIFY_SOCKET the test opens: the Notifier alone, then `edgekit run`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit.service.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.5)
    yield path, sock
    sock.close()


def received(sock) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            return messages


def test_ready_status_watchdog_stopping_reach_the_socket(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "10000000"})
    assert n.enabled and n.watchdog_interval == 5.0
    assert n.ready("engine loaded")
    assert n.watchdog()
    assert not n.watchdog()  # throttled to one ping per half interval
    assert n.status("12.5 fps")
    assert n.stopping()
    n.close()
    assert received(sock) == ["READY=1\nSTATUS=engine loaded", "WATCHDOG=1", "STATUS=12.5 fps", "STOPPING=1"]


def test_watchdog_pings_again_after_half_the_interval(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000"})  # 2 ms: ping every 1 ms
    assert n.watchdog()
    deadline = time.monotonic() + 1.0
    while not n.watchdog():
        assert time.monotonic() < deadline
    assert received(sock) == ["WATCHDOG=1", "WATCHDOG=1"]


def test_abstract_socket_address():
    name = f"edgekit-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(0.5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_a_receiver_that_does_not_read_never_blocks_the_sender(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    results = [n.status(f"frame {i}") for i in range(200)]  # far beyond the datagram queue length
    assert results[0] and not results[-1]
    delivered = received(sock)
    assert delivered[0] == "STATUS=frame 0" and len(delivered) == results.count(True)


def test_no_socket_or_foreign_watchdog_pid_sends_nothing(tmp_path):
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.ready() and not quiet.watchdog()
    other = Notifier({"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None and not other.watchdog()
    assert not other.ready()  # socket path absent: False, no exception


def _read_until_quiet(sock, limit: float) -> list[str]:
    """Read like systemd does, continuously, until nothing came for a second (or ``limit`` passed)."""
    out, end = [], time.monotonic() + limit
    sock.settimeout(1.0)
    while time.monotonic() < end:
        try:
            out.append(sock.recv(4096).decode())
        except socket.timeout:
            if out:
                break
    return out


def _write_video(path: Path, frames: int = 24) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15, (64, 64))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[:, :, i % 3] = 255
        writer.write(frame)
    writer.release()
    return path


def test_edgekit_run_notifies_ready_watchdog_and_fps(notify_socket, tiny_bundle, tmp_path):
    """What systemd sees from the service: READY=1 after the first frame, WATCHDOG=1, STATUS with FPS."""
    path, sock = notify_socket
    video = _write_video(tmp_path / "colours.mp4")
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    messages = []
    reader = threading.Thread(target=lambda: messages.extend(_read_until_quiet(sock, 20.0)), daemon=True)
    reader.start()
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", "run", str(tiny_bundle.path), "--source", str(video),
         "--cache-dir", str(tmp_path / "cache"), "--realtime", "--log-every", "0.3"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reader.join()
    messages = [line for m in messages for line in m.splitlines()]
    assert "READY=1" in messages, messages
    assert "WATCHDOG=1" in messages, messages
    assert messages.index("READY=1") <= messages.index("WATCHDOG=1") or messages.count("WATCHDOG=1") > 1
    assert any(m.startswith("STATUS=") and "fps" in m.lower() for m in messages), messages
    assert f"STATUS=running: first frame from {video}; model fp32 (fp32) on onnxruntime" in messages, messages
