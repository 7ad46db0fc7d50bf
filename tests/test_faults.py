"""Issue 12's fault cases, each reproduced: full disks, corrupt media, kills, concurrent writers, small ones.

Full disks are real where the test may mount a size-limited tmpfs (root, as here and in CI); the
same paths are also driven by a writer that raises ENOSPC, which needs no privilege. Item 4
(manifest types) is in test_core.py, items 5-6 (service) in test_service_install.py, item 9
(HTTP backlog, 503) in test_server.py and benchmarks/bench_serve.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, assert_one_line_error
from edgekit import atomic
from edgekit.errors import EdgekitError
from edgekit.stream import opencv_sources, sinks
from edgekit.stream.loop import run_loop

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@contextlib.contextmanager
def tmpfs(path: Path, size: str, options: str = ""):
    """A size-limited tmpfs at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not root'}); the ENOSPC-writer test covers it")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def noise_video(path: Path, frames: int, size=(240, 320), fourcc="MJPG", fps=30.0) -> Path:
    """Frames with their index drawn large, on noise (large MJPG frames)."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
    for i in range(frames):
        image = rng.integers(0, 255, (*size, 3), np.uint8)
        cv2.putText(image, str(i), (10, size[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 4)
        writer.write(image)
    writer.release()
    return path


def old_video(path: Path) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (32, 32))
    for _ in range(3):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()
    return path.read_bytes()


def frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


# ---- 1. recording to a full disk -------------------------------------------------------------
def test_1_recording_to_a_full_disk_fails_naming_the_file_and_keeps_the_old_one(tiny_bundle, tmp_path):
    video = noise_video(tmp_path / "long.avi", 60)
    with tmpfs(tmp_path / "disk", "200k") as disk:
        out = disk / "o.mp4"
        before = old_video(out)
        with pytest.raises(EdgekitError, match=rf"cannot write {out}: the disk is full.*previous o.mp4 is kept"):
            run_loop(tiny_bundle, video, backend="onnxruntime", record=str(out), max_frames=600)
        assert out.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["o.mp4"]


def test_1_disk_filling_during_a_recording_stops_the_run(tiny_bundle, tmp_path):
    video = noise_video(tmp_path / "long.avi", 300)
    with tmpfs(tmp_path / "disk", "6m") as disk:
        out = disk / "o.avi"
        with pytest.raises(EdgekitError, match=r"cannot write .*o.avi: the disk is full .*after (\d+) frames") as info:
            run_loop(tiny_bundle, video, backend="onnxruntime", record=str(out))
        assert "after 0 frames" not in str(info.value)  # it stopped mid-run, not before
        assert list(disk.iterdir()) == []  # no half video, no partial file


@pytest.mark.parametrize("suffix", [".avi", ".mkv", ".mp4"])
def test_1_a_recording_cut_short_by_the_disk_is_not_committed(tiny_bundle, tmp_path, monkeypatch, suffix):
    """Past the free-space margin (set to 0 here) OpenCV drops frames silently: the check on close catches it."""
    monkeypatch.setattr(sinks, "MIN_FREE", 0)
    video = noise_video(tmp_path / "long.avi", 300)
    with tmpfs(tmp_path / "disk", "3m") as disk:
        out = disk / f"o{suffix}"
        with pytest.raises(EdgekitError, match=rf"cannot write {out}: the video is unreadable or incomplete"):
            run_loop(tiny_bundle, video, backend="onnxruntime", record=str(out))
        assert list(disk.iterdir()) == []


def test_1_recording_checked_before_it_replaces_the_old_file(tiny_bundle, tmp_path, monkeypatch):
    """Without a mount: the disk reports no space (statvfs), the old file stays."""
    out = tmp_path / "o.mp4"
    before = old_video(out)
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_bavail, self.f_frsize = 10, st.f_frsize

    monkeypatch.setattr(sinks.os, "statvfs", lambda p: Full(real(p)))
    with pytest.raises(EdgekitError, match="the disk is full"):
        run_loop(tiny_bundle, noise_video(tmp_path / "v.avi", 10), backend="onnxruntime", record=str(out))
    assert out.read_bytes() == before and not list(tmp_path.glob(".o.*"))


# ---- 2. JSON lines on a full disk ---------------------------------------------------------------
def test_2_json_lines_on_a_full_disk(tiny_bundle, tmp_path):
    video = noise_video(tmp_path / "long.avi", 600, size=(48, 64))
    with tmpfs(tmp_path / "disk", "100k") as disk:
        out = disk / "o.jsonl"
        out.write_text('{"old": 1}\n')
        with pytest.raises(EdgekitError, match=rf"cannot write {out}: the disk is full \(after \d+ frames\); the previous"):
            run_loop(tiny_bundle, video, backend="onnxruntime", json_path=str(out))
        assert out.read_text() == '{"old": 1}\n' and [p.name for p in disk.iterdir()] == ["o.jsonl"]


def test_2_a_failed_write_leaves_no_torn_line(tiny_bundle, tmp_path, monkeypatch, colour_media):
    """An ENOSPC-raising writer (no mount needed): a short write, then the error."""
    out = tmp_path / "o.jsonl"
    real_write, calls = os.write, []

    def write(fd, data):
        calls.append(fd)
        if len(calls) == 5:
            real_write(fd, data[: len(data) // 2])  # half a line reaches the disk ...
            raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full
        return real_write(fd, data)

    seen = {}
    real_discard = sinks._Partial.discard

    def discard(self):
        seen["lines"] = self.file.read_text().split("\n")
        real_discard(self)

    monkeypatch.setattr(sinks.os, "write", write)
    monkeypatch.setattr(sinks._Partial, "discard", discard)
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(20))
    with pytest.raises(EdgekitError, match=rf"cannot write {out}: the disk is full \(after 4 frames\); o.jsonl was not written"):
        run_loop(tiny_bundle, video, backend="onnxruntime", json_path=str(out))
    assert seen["lines"][-1] == "" and all(json.loads(line) for line in seen["lines"][:-1])  # whole lines only
    assert len(seen["lines"]) == 5 and not out.exists() and not list(tmp_path.glob(".o.*"))


# ---- 3. a video with a damaged stretch --------------------------------------------------------------
def damaged(tmp_path, fourcc, suffix):
    """400 frames (grey levels, the index drawn) with bytes from 1/3 of the file on zeroed."""
    video = tmp_path / f"v{suffix}"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*fourcc), 30.0, (160, 120))
    for i in range(400):
        image = np.full((120, 160, 3), i * 3 % 255, np.uint8)
        cv2.putText(image, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 2)
        writer.write(image)
    writer.release()
    data = bytearray(video.read_bytes())
    a = len(data) // 3
    data[a : a + len(data) // 10] = bytes(len(data) // 10)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data)
    return bad


@pytest.mark.parametrize("fourcc, suffix", [("MJPG", ".avi"), ("mp4v", ".mp4")])
def test_3_video_reading_rides_over_a_damaged_stretch(tiny_bundle, tmp_path, caplog, fourcc, suffix):
    bad = damaged(tmp_path, fourcc, suffix)
    cap, first_failure = cv2.VideoCapture(str(bad)), 0
    while cap.read()[0]:
        first_failure += 1  # where a reader that stops at the first failed read stops
    out = tmp_path / "o.jsonl"
    summary = run_loop(tiny_bundle, bad, backend="onnxruntime", json_path=str(out))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["stopped_by"] == "end of stream"
    assert first_failure < 200 and len(lines) > first_failure + 150, (first_failure, len(lines))
    numbers = [x["source_frame"] for x in lines]
    assert numbers[-1] > len(lines) - 1  # skipped frames are gaps in the source's numbering
    assert "unreadable frame(s)" in caplog.text


def test_3_reading_gives_up_after_a_bounded_run_of_failures(tiny_bundle, tmp_path, caplog, monkeypatch):
    bad = damaged(tmp_path, "mp4v", ".mp4")  # ~50 unreadable frames in a row
    monkeypatch.setattr(opencv_sources, "MAX_BAD_READS", 10)
    out = tmp_path / "o.jsonl"
    summary = run_loop(tiny_bundle, bad, backend="onnxruntime", json_path=str(out))
    assert summary["stopped_by"] == "end of stream" and summary["frames"] < 200
    assert "gave up after 10 failed reads in a row" in caplog.text


# ---- 7. kill -9 -------------------------------------------------------------------------------------
def spawn_run(bundle, source, record, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "edgekit", "run", str(bundle), "--source", str(source), "--loop", "--realtime",
         "--record", str(record), *extra], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("suffix, kept", [(".mkv", True), (".avi", True), (".mp4", False)])
def test_7_sigkill_while_recording(tiny_bundle, tmp_path, colour_media, suffix, kept):
    """MKV/AVI survive a kill: the next run keeps the frames as NAME.interrupted-PID; an MP4 partial is removed."""
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(30), size=(120, 160))
    out = tmp_path / f"rec{suffix}"
    proc = spawn_run(tiny_bundle.path, video, out)
    partial = tmp_path / f".rec.{proc.pid}.partial{suffix}"
    grew = wait_for(lambda: partial.exists() and partial.stat().st_size > 100_000)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert grew, proc.stderr.read().decode()[-2000:]
    run_loop(tiny_bundle, video, backend="onnxruntime", record=str(out), max_frames=5)
    interrupted = tmp_path / f"rec.interrupted-{proc.pid}{suffix}"
    assert not partial.exists() and frame_count(out) == 5
    if kept:
        assert frame_count(interrupted) > 30  # seconds lost, not the file
    else:
        assert not interrupted.exists()


KILLED_WRITER = """
import sys, time
from edgekit import atomic
with atomic.atomic_dir(sys.argv[1], force=True) as tmp, atomic.temp_dir("edgekit-quant") as work:
    (tmp / "model.onnx").write_bytes(b"x" * 1000)
    print(tmp, work, flush=True)
    time.sleep(60)
"""


def test_7_sigkill_inside_bundle_and_scratch_writers_leaves_nothing_for_long(tmp_path):
    bundle = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(bundle)], env=ENV, stdout=subprocess.PIPE, text=True)
    tmp, work = map(Path, proc.stdout.readline().split())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert tmp.is_dir() and work.is_dir() and str(proc.pid) in tmp.name and str(proc.pid) in work.name
    with atomic.atomic_dir(bundle) as new, atomic.temp_dir("edgekit-quant"):
        (new / "ok").write_text("ok")
    assert not tmp.exists() and not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.slow
def test_7_sigkill_during_quantize_then_the_next_quantize_cleans_up(fp32_bundle, digits, tmp_path):
    import glob
    import shutil
    import tempfile

    bundle = tmp_path / "bundle"
    shutil.copytree(fp32_bundle.path, bundle)
    before = (bundle / "edgekit.json").read_text()
    args = [sys.executable, "-m", "edgekit", "quantize", str(bundle), "--images", str(digits / "train"),
            "--no-fp16", "--method", "entropy"]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scratch = f"{tempfile.gettempdir()}/edgekit-quant-{proc.pid}-*"
    started = wait_for(lambda: glob.glob(scratch) and list(tmp_path.glob(f".bundle.{proc.pid}.*.tmp")))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert started, "quantize never reached calibration"
    assert (bundle / "edgekit.json").read_text() == before  # the bundle is as it was
    subprocess.run(args, env=ENV, capture_output=True, check=True, timeout=600)
    assert not glob.glob(scratch) and not list(tmp_path.glob(".bundle.*"))
    assert "int8" in json.loads((bundle / "edgekit.json").read_text())["models"]


# ---- 8. concurrent writers ------------------------------------------------------------------------
SIX_WRITERS = """
import sys, time
from edgekit import atomic
with atomic.atomic_dir(sys.argv[1], force=True) as tmp:
    for i in range(20):
        (tmp / f"part{i}").write_text(sys.argv[2])
        time.sleep(0.005)
"""


def test_8_six_processes_writing_one_folder_serialize(tmp_path):
    out = tmp_path / "bundle"
    procs = [subprocess.Popen([sys.executable, "-c", SIX_WRITERS, str(out), str(i)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    results = [(p.wait(60), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    contents = {f.read_text() for f in out.iterdir()}
    assert len(contents) == 1 and len(list(out.iterdir())) == 20  # one writer's whole folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no .old-PID, no temporaries, no lock


HOLDER = """
import sys, time
from edgekit import atomic
with atomic.lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(30)
"""


def test_8_a_second_quantize_of_one_bundle_fails_in_use(tiny_bundle, tmp_path, cli, colour_media):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, bundle)
    images = colour_media.folder(tmp_path / "images", colour_media.labels(12))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(bundle)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli("quantize", bundle, "--images", images)
        assert_one_line_error(result, f"bundle {bundle} is in use by PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait(30)
    assert json.loads((bundle / "edgekit.json").read_text()) == tiny_bundle.manifest  # untouched


def test_8_a_thread_waits_for_the_lock_then_proceeds(tmp_path):
    import threading

    order = []
    target = tmp_path / "x"

    def second():
        with atomic.lock(target, wait=10):
            order.append("second")

    with atomic.lock(target):
        with atomic.lock(target):  # re-entrant in one thread
            t = threading.Thread(target=second)
            t.start()
            time.sleep(0.3)
            order.append("first")
    t.join(10)
    assert order == ["first", "second"] and not list(tmp_path.iterdir())
    with atomic.lock(target):
        with pytest.raises(EdgekitError, match=r"in use by PID \d+"):
            err = []
            th = threading.Thread(target=lambda: _try_lock(target, err))
            th.start()
            th.join(10)
            raise err[0]


def _try_lock(target, err):
    try:
        with atomic.lock(target, wait=0.2):
            pass
    except EdgekitError as exc:
        err.append(exc)


SAME_ENGINE = """
import sys, time
from edgekit.backends.tensorrt.cache import EngineCache, EngineKey

def build():  # FAKE TensorRT build (a slow one); the real builder is exercised on hardware
    time.sleep(1.0)
    with open(sys.argv[2], "a") as f:
        f.write("built\\n")
    return b"PLAN"

key = EngineKey(onnx_sha256="ab" * 32, tensorrt="10.3.0", gpu="Orin", compute_capability="8.7",
                precision="fp16", shapes=((1, 3, 8, 8),) * 3, dla_core=None)
engine, plan, built = EngineCache(sys.argv[1]).load_or_build(key, build, lambda data: data)
print("built" if built else "reused", flush=True)
"""


def test_8_two_processes_needing_one_engine_build_it_once(tmp_path):
    log = tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", SAME_ENGINE, str(tmp_path / "cache"), str(log)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(o.strip() for o, _ in outs) == ["built", "reused"] and log.read_text() == "built\n"


# ---- 10. the small ones --------------------------------------------------------------------------
def test_10_json_to_a_pipe_closed_early_exits_0(tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(300))
    proc = subprocess.run(
        f"{sys.executable} -m edgekit run {tiny_bundle.path} --source {video} --json - | head -1; "
        "echo rc=${PIPESTATUS[0]} >&2",
        shell=True, executable="/bin/bash", env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert json.loads(proc.stdout)["index"] == 0
    assert "rc=0" in proc.stderr and "stopped (stdout closed)" in proc.stderr and "error" not in proc.stderr, proc.stderr


def test_10_train_checks_its_output_before_training(cli, digits, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    started = time.monotonic()
    result = cli("train", digits / "train", "-o", blocker / "m.keras", "--epochs", "1")
    assert_one_line_error(result, f"cannot write {blocker / 'm.keras'}")
    assert time.monotonic() - started < 20  # refused before any training


def test_10_train_refuses_a_read_only_output_before_training(cli, digits, tmp_path):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        result = cli("train", digits / "train", "-o", ro / "m.keras", "--epochs", "1")
        assert_one_line_error(result, f"cannot write {ro / 'm.keras'}", "Read-only file system")


@pytest.mark.parametrize("name, data", [("m.keras", b"not a zip"), ("m.h5", b"not hdf5 either")])
def test_10_a_model_file_of_the_wrong_kind_is_named_as_such(cli, tmp_path, name, data):
    model = tmp_path / name
    model.write_bytes(data)
    result = cli("export", model, "-o", tmp_path / "b")
    assert_one_line_error(result, f"{model} is not a Keras model")
    assert "not found" not in result.err.lower()


def test_10_validate_calls_its_images_validation_images(tiny_bundle, tmp_path, caplog):
    from edgekit.quant.gate import labelled_tensors

    folder = tmp_path / "val"
    for label in ("red", "green", "blue"):
        (folder / label).mkdir(parents=True)
        (folder / label / "a.png").write_bytes(b"not a png")
        cv2.imwrite(str(folder / label / "b.png"), np.zeros((8, 8, 3), np.uint8))
    labelled_tensors(tiny_bundle, folder)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "3 of 6 validation images could not be read" in messages and "calibration" not in messages


def test_10_no_empty_json_file_when_the_source_fails_to_open(tiny_bundle, tmp_path):
    not_video = tmp_path / "clip.mp4"
    not_video.write_bytes(b"garbage")
    out = tmp_path / "o.jsonl"
    with pytest.raises(EdgekitError, match="is not a video"):
        run_loop(tiny_bundle, not_video, backend="onnxruntime", json_path=str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_10_sigterm_early_in_run_stops_cleanly(tiny_bundle, tmp_path, colour_media):
    """SIGTERM while run is still importing and loading: handled (exit 0, stopped by the signal), not 143."""
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(30))
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "edgekit", "run", str(tiny_bundle.path),
                             "--source", str(video), "--loop", "--json", str(tmp_path / "o.jsonl")],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # send it as soon as run_loop's handler is in place: its body's first import (onnxruntime, the
    # runner, the source are still to come)
    line = ""
    while "edgekit.backends.select" not in line:
        line = proc.stderr.readline()
        assert line, "edgekit exited early"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped (signal SIGTERM)" in err, err[-2000:]
