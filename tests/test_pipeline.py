"""The loop through its Python API on CPU: order, labels, limits, threads, stop, sd_notify."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from edgekit.backends.select import open_runner
from edgekit.service.notify import Notifier
from edgekit.stream import postprocess
from edgekit.stream.loop import run_loop
from edgekit.stream.pipeline import Pipeline
from edgekit.stream.sinks import JsonSink
from edgekit.stream.capture import Capture
from edgekit.stream.sources import open_source


class Recorder:
    """A sink keeping every result in memory."""

    def __init__(self):
        self.results, self.closed = [], False

    def open(self, info):
        self.info = info

    def write(self, result):
        self.results.append(result)

    def close(self):
        self.closed = True


class WatchedRunner:
    """Wraps a real runner: records which thread calls it; can be slowed down or made to hang."""

    def __init__(self, inner, delay=0.0, hang_at=None):
        self.inner, self.delay, self.hang_at = inner, delay, hang_at
        self.threads, self.calls = set(), 0

    def activate(self):
        self.threads.add(threading.get_ident())
        self.inner.activate()

    def infer(self, batch):
        self.threads.add(threading.get_ident())
        self.calls += 1
        if self.hang_at is not None and self.calls == self.hang_at:
            time.sleep(3.0)  # a hung GPU, as far as the loop can tell
        time.sleep(self.delay)
        return self.inner.infer(batch)

    def deactivate(self):
        self.threads.add(threading.get_ident())
        self.inner.deactivate()


def make_pipeline(bundle, source, sinks, runner=None, realtime=False, loop=False, **kw):
    runner = runner or open_runner(bundle, "onnxruntime")
    capture = Capture(open_source(source), realtime=realtime, loop=loop)
    return Pipeline(bundle, capture, runner, postprocess.for_bundle(bundle), sinks, **kw)


def test_every_frame_of_a_video_in_order_with_its_label(tiny_bundle, tmp_path, colour_media):
    labels = colour_media.labels(45, run=4)
    rec = Recorder()
    runner = WatchedRunner(open_runner(tiny_bundle, "onnxruntime"))
    summary = make_pipeline(tiny_bundle, colour_media.video(tmp_path / "v.mp4", labels), [rec], runner).run()
    assert [r.index for r in rec.results] == list(range(45))
    assert [r.frame.number for r in rec.results] == list(range(45))
    assert [r.results[0]["label"] for r in rec.results] == labels
    assert all(r.results[0]["score"] > 0.9 for r in rec.results)
    assert rec.closed and summary["frames"] == 45 and summary["stopped_by"] == "end of stream"
    assert summary["drops"] == 0
    assert len(runner.threads) == 1 and threading.get_ident() not in runner.threads  # one thread, not ours


def test_latency_and_stamps_travel_with_each_frame(tiny_bundle, tmp_path, colour_media):
    rec = Recorder()
    make_pipeline(tiny_bundle, colour_media.video(tmp_path / "v.mp4", ["red"] * 5), [rec]).run()
    for r in rec.results:
        s, lat = r.stamps, r.latency_ms
        assert s["captured"] <= s["preprocessed"] <= s["inferred"] <= s["postprocessed"]
        assert set(lat) == {"capture", "preprocess", "infer", "postprocess", "end_to_end"}
        assert lat["end_to_end"] >= lat["infer"] >= 0 and lat["end_to_end"] >= lat["preprocess"]


def test_image_folder_top_k(tiny_bundle, tmp_path, colour_media):
    labels = ["blue", "red", "green", "green"]
    rec = Recorder()
    folder = colour_media.folder(tmp_path / "imgs", labels, size=(300, 200))  # not the model's 32x32
    pipe = Pipeline(tiny_bundle, Capture(open_source(folder)), open_runner(tiny_bundle, "onnxruntime"),
                    postprocess.for_bundle(tiny_bundle, top_k=3), [rec])
    pipe.run()
    assert [r.results[0]["label"] for r in rec.results] == labels
    for r in rec.results:
        assert sorted(x["label"] for x in r.results) == ["blue", "green", "red"]
        scores = [x["score"] for x in r.results]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-4)


def test_max_frames_and_duration(tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(9))
    rec = Recorder()
    summary = make_pipeline(tiny_bundle, video, [rec], loop=True, max_frames=20).run()
    assert len(rec.results) == 20 and summary["stopped_by"] == "max frames"
    assert [r.results[0]["label"] for r in rec.results] == colour_media.labels(20)
    rec = Recorder()
    summary = make_pipeline(tiny_bundle, video, [rec], realtime=True, loop=True, duration=0.6).run()
    assert summary["stopped_by"] == "duration" and 3 <= len(rec.results) <= 30


def test_stop_finishes_the_frame_and_closes_sinks(tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(30))
    out = tmp_path / "out.jsonl"
    rec = Recorder()
    pipe = make_pipeline(tiny_bundle, video, [rec, JsonSink(str(out))], realtime=True, loop=True)
    threading.Timer(0.5, pipe.stop, args=("test",)).start()
    summary = pipe.run()
    assert summary["stopped_by"] == "test" and rec.closed
    lines = out.read_text().splitlines()
    assert len(lines) == len(rec.results) > 0
    assert pipe.capture.source.cap is None  # released


def test_live_source_faster_than_the_model_drops_and_stays_fresh(tiny_bundle, tmp_path, colour_media):
    """A model slower than the source: frames are dropped at capture, latency does not grow."""
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(300), fps=200)
    rec = Recorder()
    runner = WatchedRunner(open_runner(tiny_bundle, "onnxruntime"), delay=0.02)
    summary = make_pipeline(tiny_bundle, video, [rec], runner, realtime=True).run()
    assert summary["drops"] > 0
    numbers = [r.frame.number for r in rec.results]
    assert numbers == sorted(numbers) and len(rec.results) + summary["drops"] <= 300
    e2e = [r.latency_ms["end_to_end"] for r in rec.results[5:]]
    # no queue builds up: the frame waits for at most about one inference, never for many
    assert max(e2e) < 20 * 4 + 50
    assert [r.results[0]["label"] for r in rec.results] == [colour_media.labels(300)[n] for n in numbers]


def test_runner_failure_to_load_is_reported(tiny_bundle, tmp_path, colour_media):
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.errors import ModelError

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"junk")
    rec = Recorder()
    pipe = make_pipeline(tiny_bundle, colour_media.video(tmp_path / "v.mp4", ["red"]), [rec], OnnxRuntimeRunner(broken))
    with pytest.raises(ModelError, match="cannot load"):
        pipe.run()
    assert rec.closed


class NotifySocket:
    """A NOTIFY_SOCKET read continually, as systemd does: ``take()`` gives (seconds, message) pairs."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.start, self.messages, self.lock, self.running = time.monotonic(), [], threading.Lock(), True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(4096).decode()
            except (TimeoutError, OSError):
                continue
            with self.lock:
                self.messages.append((time.monotonic() - self.start, data))

    def take(self):
        time.sleep(0.1)
        with self.lock:
            taken, self.messages = self.messages, []
        return taken

    def notifier(self):
        return Notifier({"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": "100000"})

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def test_sd_notify_ready_watchdog_status(tiny_bundle, tmp_path, colour_media, notify_socket):
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(12))
    run_loop(tiny_bundle, video, backend="onnxruntime", realtime=True, loop=True, duration=1.2, log_every=0.3,
             notifier=notify_socket.notifier())
    messages = [m for _, m in notify_socket.take()]
    ready = [i for i, m in enumerate(messages) if m.startswith("READY=1")]
    assert len(ready) == 1
    assert sum(m == "WATCHDOG=1" for m in messages) >= 5
    assert any(m.startswith("STATUS=") and " fps" in m for m in messages[ready[0] + 1:])
    assert messages[-1] == "STOPPING=1"


def test_watchdog_stops_when_inference_hangs(tiny_bundle, tmp_path, colour_media, notify_socket):
    """A stage stuck for longer than stall_s stops the pings, so systemd would restart the service."""
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(12))
    runner = WatchedRunner(open_runner(tiny_bundle, "onnxruntime"), hang_at=5)  # hangs 3 s at frame 5
    pipe = make_pipeline(tiny_bundle, video, [], runner, realtime=True, loop=True,
                         notifier=notify_socket.notifier(), stall_s=0.5)
    thread = threading.Thread(target=pipe.run, daemon=True)
    notify_socket.take()
    thread.start()
    time.sleep(2.5)
    pings = [t for t, m in notify_socket.take() if m == "WATCHDOG=1"]
    hung_at = runner.calls
    pipe.stop()
    thread.join(5)
    assert not thread.is_alive()  # stop does not wait for the hung stage forever
    assert hung_at == 5 and len(pings) >= 2
    assert max(pings) - min(pings) < 1.5  # pings stopped about stall_s after the hang began, and stayed stopped
