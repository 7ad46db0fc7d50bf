"""Many sources, one engine: batching, per-source outputs, per-source faults (CPU, ONNX Runtime)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from edgekit.backends.select import open_runner
from edgekit.errors import UsageError
from edgekit.stream import postprocess
from edgekit.stream.capture import Capture
from edgekit.stream.infer import engine_profile
from edgekit.stream.loop import run_loop
from edgekit.stream.pipeline import Pipeline
from edgekit.stream.server import StreamServer
from edgekit.stream.sinks import JsonSink, _playable
from edgekit.stream.source_specs import specs
from edgekit.stream.sources import open_source
from conftest import assert_one_line_error


class CountingRunner:
    """Wraps a real runner; records the batch size of every call."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    @property
    def input_spec(self):
        return self.inner.input_spec

    def activate(self):
        self.inner.activate()

    def infer(self, batch):
        self.batches.append(len(batch))
        return self.inner.infer(batch)

    def deactivate(self):
        self.inner.deactivate()


class Recorder:
    def __init__(self):
        self.results, self.info = [], None

    def open(self, info):
        self.info = info

    def write(self, result):
        self.results.append((result, time.monotonic()))

    def close(self):
        pass


def colour_of(image):
    return ("blue", "green", "red")[int(np.argmax(image.reshape(-1, 3).mean(0)))]


def four_sources(tmp_path, colour_media):
    """Four file sources of different lengths and frame sizes: name -> (URI, labels)."""
    media = {}
    for name, n, run, size in (("a", 7, 1, (48, 64)), ("b", 12, 2, (120, 160)), ("c", 20, 3, (32, 32)), ("d", 3, 1, (90, 60))):
        labels = colour_media.labels(n, run)
        media[name] = (str(colour_media.video(tmp_path / f"{name}.mp4", labels, size=size)), labels)
    return media


def test_four_files_every_frame_once_tagged_one_call_per_batch(tiny_bundle, tmp_path, colour_media):
    media = four_sources(tmp_path, colour_media)
    captures = [Capture(open_source(uri), name=name) for name, (uri, _) in media.items()]
    runner = CountingRunner(open_runner(tiny_bundle, "onnxruntime"))
    out = tmp_path / "out.jsonl"
    summary = Pipeline(tiny_bundle, captures, runner, postprocess.for_bundle(tiny_bundle), [JsonSink(str(out))]).run()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for name, (uri, labels) in media.items():
        mine = [line for line in lines if line["source"] == name]
        assert [line["source_frame"] for line in mine] == list(range(len(labels)))  # every frame, once, in order
        assert [line["file"] for line in mine] == [uri] * len(labels)
        assert [line["results"][0]["label"] for line in mine] == labels
    assert len(lines) == sum(len(labels) for _, labels in media.values()) == summary["frames"]
    assert [line["index"] for line in lines] == list(range(len(lines)))
    # one call per batch; a finished source drops out and the others go on: 4 while d lasts, then 3, 2, 1
    assert runner.batches == [4] * 3 + [3] * 4 + [2] * 5 + [1] * 8
    assert summary["stopped_by"] == "end of stream"
    assert {n: v["frames"] for n, v in summary["sources"].items()} == {n: len(v[1]) for n, v in media.items()}
    assert {v["state"] for v in summary["sources"].values()} == {"ended"}


def test_names_positional_options_and_a_sources_file(cli, tiny_bundle, tmp_path, colour_media):
    v1 = colour_media.video(tmp_path / "v1.mp4", ["red"] * 3)
    v2 = colour_media.video(tmp_path / "v2.mp4", ["green"] * 4)
    folder = colour_media.folder(tmp_path / "imgs", ["blue", "red"])
    listed = tmp_path / "sources.json"
    listed.write_text(json.dumps({"sources": [{"name": "shelf", "uri": str(folder)}, str(v1)]}))
    out = tmp_path / "out.jsonl"
    result = cli("run", tiny_bundle.path, f"door={v1}", "--source", str(v2), "--sources-file", listed,
                 "--json", out, "--backend", "onnxruntime")
    assert result.code == 0, result
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    counts = {}
    for line in lines:
        counts[line["source"]] = counts.get(line["source"], 0) + 1
    assert counts == {"door": 3, "1": 4, "shelf": 2, "3": 3}
    assert [line["results"][0]["label"] for line in lines if line["source"] == "shelf"] == ["blue", "red"]
    assert "per source: door 3 frames (ended)" in result.err


def test_source_specs_refuse_what_they_cannot_name(tmp_path):
    assert [(s.name, s.uri) for s in specs(["0", "door=rtsp://h/x?a=b", "rtsp://h/x?a=b"])] == [
        ("0", "0"), ("door", "rtsp://h/x?a=b"), ("2", "rtsp://h/x?a=b")]
    assert specs(["a.mp4"], {"realtime": True, "fps": 5})[0].fps == 5
    with pytest.raises(UsageError, match="named 'x'"):
        specs(["x=a.mp4", "x=b.mp4"])
    bad = tmp_path / "s.yaml"
    bad.write_text("sources:\n  - {uri: a.mp4, fps: fast}\n")
    with pytest.raises(Exception, match="fps must be a positive number"):
        specs([], file=str(bad))
    bad.write_text("sources:\n  - {uri: a.mp4, colour: red}\n")
    with pytest.raises(Exception, match="unknown key"):
        specs([], file=str(bad))
    good = tmp_path / "ok.yaml"
    good.write_text("sources:\n  - {name: cam, uri: a.mp4, loop: true}\n")
    assert specs(["b.mp4"], file=str(good))[1] == specs(["cam=a.mp4"], {"loop": True})[0]


def test_a_missing_source_fails_the_run_unless_allowed(cli, tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", ["red"] * 4)
    out = tmp_path / "out.jsonl"
    assert_one_line_error(cli("run", tiny_bundle.path, str(video), str(tmp_path / "gone.mp4"), "--json", out),
                          "gone.mp4 does not exist")
    assert not out.exists()
    result = cli("run", tiny_bundle.path, str(video), str(tmp_path / "gone.mp4"), "--json", out, "--allow-missing",
                 "--backend", "onnxruntime")
    assert result.code == 0, result
    assert [json.loads(line)["source"] for line in out.read_text().splitlines()] == ["0"] * 4
    assert "(failed)" in result.err


def test_record_template_writes_one_playable_file_per_source(tiny_bundle, tmp_path, colour_media):
    v1 = colour_media.video(tmp_path / "v1.mp4", ["red"] * 5)
    v2 = colour_media.video(tmp_path / "v2.mp4", ["green"] * 8, size=(120, 160))
    (tmp_path / "rec").mkdir()
    run_loop(tiny_bundle, [f"one={v1}", f"two={v2}"], backend="onnxruntime", record=str(tmp_path / "rec" / "{source}.mkv"))
    assert _playable(tmp_path / "rec" / "one.mkv", 5) and _playable(tmp_path / "rec" / "two.mkv", 8)
    run_loop(tiny_bundle, [str(v1), str(v2)], backend="onnxruntime", record=str(tmp_path / "rec") + "/")
    assert _playable(tmp_path / "rec" / "0.mkv", 5) and _playable(tmp_path / "rec" / "1.mkv", 8)
    with pytest.raises(UsageError, match="template"):
        run_loop(tiny_bundle, [str(v1), str(v2)], backend="onnxruntime", record=str(tmp_path / "one.mkv"))


def _get(url, size=None):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.headers.get_content_type(), resp.read(size) if size else resp.read()


def test_per_source_metrics_streams_and_status(tiny_bundle, tmp_path, colour_media):
    v1 = colour_media.video(tmp_path / "v1.mp4", ["red"] * 6)
    v2 = colour_media.video(tmp_path / "v2.mp4", ["blue"] * 6)
    captures = [Capture(open_source(v), realtime=True, loop=True, pace_fps=30, name=n)
                for n, v in (("door", v1), ("yard", v2))]
    server = StreamServer("127.0.0.1:0")
    pipe = Pipeline(tiny_bundle, captures, open_runner(tiny_bundle, "onnxruntime"), postprocess.for_bundle(tiny_bundle),
                    [server], batch_timeout=0.02)
    got = {}

    def probe():
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and pipe.metrics.frames < 10:
                time.sleep(0.05)
            got["metrics"] = _get(f"{server.url}/metrics")[1].decode()
            got["status"] = json.loads(_get(f"{server.url}/status.json")[1])
            got["yard"] = _get(f"{server.url}/stream/yard.mjpg", 4096)
            got["door"] = _get(f"{server.url}/snapshot/door.jpg")
            got["mosaic"] = _get(f"{server.url}/snapshot.jpg")
            try:
                _get(f"{server.url}/stream/nobody.mjpg")
            except urllib.error.HTTPError as exc:
                got["unknown"] = exc.code
        finally:
            pipe.stop("test")

    threading.Thread(target=probe, daemon=True).start()
    pipe.run()
    import cv2

    for name in ("door", "yard"):
        assert f'edgekit_stream_frames_total{{source="{name}"}}' in got["metrics"]
        assert f'edgekit_stream_up{{source="{name}",state="live"}} 1' in got["metrics"]
        assert f'edgekit_stream_latency_seconds{{source="{name}",quantile="0.5"}}' in got["metrics"]
        assert got["status"]["sources"][name]["state"] == "live" and got["status"]["sources"][name]["frames"] > 0
    assert "edgekit_frames_total " in got["metrics"]  # the totals stay
    assert got["yard"][0] == "multipart/x-mixed-replace" and b"Content-Type: image/jpeg" in got["yard"][1]
    door = cv2.imdecode(np.frombuffer(got["door"][1], np.uint8), cv2.IMREAD_COLOR)
    assert colour_of(door) == "red"
    mosaic = cv2.imdecode(np.frombuffer(got["mosaic"][1], np.uint8), cv2.IMREAD_COLOR)
    assert mosaic.shape[:2] == (270, 960)  # two tiles side by side, in source order
    assert colour_of(mosaic[:, :480]) == "red" and colour_of(mosaic[:, 480:]) == "blue"
    assert got["unknown"] == 404


class FreezableCamera:
    """An MJPEG camera on 127.0.0.1 (edgekit's StreamServer) whose frames can stop and start again."""

    def __init__(self, colour_media, port=0):
        self.server = StreamServer(f"127.0.0.1:{port}").open()
        self.frame = colour_media.frame("green")
        self.frozen = threading.Event()
        self.running = True
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self):
        while self.running:
            if not self.frozen.is_set():
                self.server.publish(self.frame)
            time.sleep(0.02)

    def stop(self):
        self.running = False
        self.thread.join()
        self.server.close()


def test_a_frozen_live_source_does_not_hold_up_the_files_and_comes_back(tiny_bundle, tmp_path, colour_media):
    """The camera freezes (connected, no frames): the files go on in batches without it (a batch waits
    at most the batch timeout, a stalled source not at all) and finish before its read even times out;
    then it is lost, and once it sends again it is reconnected and its frames come back."""
    cam = FreezableCamera(colour_media)
    files = {n: colour_media.video(tmp_path / f"{n}.mp4", colour_media.labels(40)) for n in ("f1", "f2")}
    captures = [Capture(open_source(f"{cam.server.url}/stream.mjpg", timeout=4.0), name="cam")]
    captures += [Capture(open_source(v), name=n) for n, v in files.items()]
    rec = Recorder()
    pipe = Pipeline(tiny_bundle, captures, open_runner(tiny_bundle, "onnxruntime"), postprocess.for_bundle(tiny_bundle),
                    [rec], batch_timeout=0.25)
    moments = {}

    def script():
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(r.source == "cam" for r, _ in rec.results):
                time.sleep(0.01)
            cam.frozen.set()
            moments["frozen"] = time.monotonic()
            while time.monotonic() < moments["frozen"] + 12 and "lost" not in moments:
                if captures[0].state == "reconnecting":
                    moments["lost"] = time.monotonic()
                time.sleep(0.01)
            cam.frozen.clear()
            moments["thawed"] = time.monotonic()
            while time.monotonic() < moments["thawed"] + 15 and not any(
                    r.source == "cam" and t > moments["thawed"] for r, t in rec.results):
                time.sleep(0.05)
        finally:
            pipe.stop("test")

    threading.Thread(target=script, daemon=True).start()
    try:
        pipe.run()
    finally:
        cam.stop()
    for name in files:
        mine = [r for r, _ in rec.results if r.source == name]
        assert [r.frame.number for r in mine] == list(range(40))  # every file frame once, none skipped
    file_times = [t for r, t in rec.results if r.source != "cam"]
    assert sum(t > moments["frozen"] for t in file_times) >= 40  # most file frames came while it was frozen
    assert max(file_times) < moments["lost"]  # all of them before its read timed out (4 s)
    assert any(r.source == "cam" and t > moments["thawed"] for r, t in rec.results)  # it came back
    assert captures[0].reconnects >= 1


def test_engine_profile_for_the_source_count(tiny_bundle, tmp_path, colour_media, monkeypatch):
    """The engine's profile is (1, N, N) for N sources (min 1: a batch missing a source still runs), is
    what run_loop asks the runner for, and is part of the engine cache key."""
    from edgekit.backends import select
    from edgekit.backends.tensorrt.builder import device_key
    from edgekit.backends.tensorrt.recipe import BuildOptions, parse_batch, profile_shapes

    assert engine_profile(4, ["batch", 3, 32, 32]) == (1, 4, 4)
    assert engine_profile(1, ["batch", 3, 32, 32]) == (1, 1, 1)
    assert engine_profile(4, [1, 3, 32, 32]) is None  # a fixed batch: inferred in slices instead
    assert parse_batch("4") == engine_profile(4, ["batch", 3, 32, 32])  # `edgekit build --batch 4` builds it ahead
    asked = {}

    def fake_open_runner(bundle, backend, precision, **options):
        asked.update(options)
        raise UsageError("stop here")

    monkeypatch.setattr(select, "open_runner", fake_open_runner)
    video = str(colour_media.video(tmp_path / "v.mp4", ["red"]))
    with pytest.raises(UsageError, match="stop here"):
        run_loop(tiny_bundle, [video, video, video], backend="onnxruntime")
    assert asked["batch"] == (1, 3, 3)
    with pytest.raises(UsageError, match="stop here"):
        run_loop(tiny_bundle, [video, video, video], backend="onnxruntime", batch="2,2,2")  # given: kept
    assert asked["batch"] == "2,2,2"
    shape = ["batch", 3, 32, 32]
    keys = [device_key(BuildOptions(batch=engine_profile(n, shape)), "sha", profile_shapes(shape, engine_profile(n, shape)))
            for n in (1, 4)]
    assert keys[0].choice_id() != keys[1].choice_id() and keys[1].shapes[1][0] == 4


def test_a_fixed_batch_model_is_inferred_in_slices(tiny_bundle):
    from edgekit.stream.infer import demux, infer_batch

    class FixedOne:
        def __init__(self):
            self.calls = 0

        def infer(self, batch):
            assert len(batch) == 1
            self.calls += 1
            return {"probs": batch[:, :, 0, 0]}

    runner, tensor = FixedOne(), np.arange(4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)
    outputs = demux(infer_batch(runner, tensor, limit=1), 4)
    assert runner.calls == 4 and [o["probs"].tolist() for o in outputs] == [tensor[i:i + 1, :, 0, 0].tolist() for i in range(4)]


def test_predictor_takes_a_list_of_frames(tiny_bundle, colour_media):
    from edgekit.predict import Predictor

    frames = [colour_media.frame("red"), colour_media.frame("blue", size=(100, 30)), colour_media.frame("green")]
    runner_calls = []
    with Predictor(tiny_bundle, backend="onnxruntime") as p:
        real = p.runner.infer
        p.runner.infer = lambda batch: runner_calls.append(len(batch)) or real(batch)
        per_frame = p.predict(frames)
        one = p.predict(frames[1])
    assert [r[0]["label"] for r in per_frame] == ["red", "blue", "green"]
    assert runner_calls == [3, 1] and one[0]["label"] == "blue"


def test_per_source_stages_see_their_frames_in_order_before_the_outputs(tiny_bundle, tmp_path, colour_media):
    """The seam a tracker or analytics stage plugs into: one chain per source, frames in order, and
    what a stage adds to the results is in the JSON lines."""

    class Numbering:
        def __init__(self, name):
            self.name, self.seen, self.opened, self.closed = name, [], None, False
            stages.append(self)

        def open(self, info):
            self.opened = info.source

        def write(self, result):
            assert result.source == self.name
            self.seen.append(result.frame.number)
            for r in result.results:
                r["nth"] = len(self.seen)

        def close(self):
            self.closed = True

    stages = []
    v1 = colour_media.video(tmp_path / "v1.mp4", ["red"] * 4)
    v2 = colour_media.video(tmp_path / "v2.mp4", ["green"] * 6)
    out = tmp_path / "out.jsonl"
    run_loop(tiny_bundle, [f"a={v1}", f"b={v2}"], backend="onnxruntime", json_path=str(out),
             per_source=lambda name: [Numbering(name)])
    assert [(s.name, s.opened, s.seen, s.closed) for s in stages] == [("a", "a", list(range(4)), True),
                                                                      ("b", "b", list(range(6)), True)]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["results"][0]["nth"] for line in lines if line["source"] == "b"] == list(range(1, 7))


def test_service_takes_several_named_sources_and_a_record_template():
    from edgekit.cli.run import check_run_options
    from edgekit.service.unit import check_run_args

    args = ("door=rtsp://10.0.0.5/s", "--source", "yard=/dev/video1", "--record", "/var/lib/edgekit/rec/{source}.mkv")
    assert check_run_args(args) == args
    params = check_run_options(args)
    assert params["source_args"] == ("door=rtsp://10.0.0.5/s",) and params["source_opts"] == ("yard=/dev/video1",)


def test_allow_missing_a_live_source_joins_when_it_comes_up(tiny_bundle, tmp_path, colour_media):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there yet
    video = colour_media.video(tmp_path / "v.mp4", ["red"] * 6)
    captures = [Capture(open_source(video), realtime=True, loop=True, pace_fps=30, name="file"),
                Capture(open_source(f"http://127.0.0.1:{port}/stream.mjpg", timeout=1.0), name="late")]
    rec = Recorder()
    pipe = Pipeline(tiny_bundle, captures, open_runner(tiny_bundle, "onnxruntime"), postprocess.for_bundle(tiny_bundle),
                    [rec], batch_timeout=0.05, missing_ok=True)
    cams = []

    def script():
        try:
            time.sleep(0.8)
            assert captures[1].state == "reconnecting"
            cams.append(FreezableCamera(colour_media, port))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(r.source == "late" for r, _ in rec.results):
                time.sleep(0.05)
        finally:
            pipe.stop("test")

    threading.Thread(target=script, daemon=True).start()
    try:
        summary = pipe.run()
    finally:
        for cam in cams:
            cam.stop()
    late = [r for r, _ in rec.results if r.source == "late"]
    assert late and all(r.results[0]["label"] == "green" for r in late)
    assert rec.results[0][0].source == "file"  # the file ran while the camera was missing
    assert summary["sources"]["late"]["reconnects"] == 1
