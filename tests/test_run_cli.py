"""`edgekit run`: the loop from the command line, its one-line errors, and SIGTERM in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import cv2

from conftest import REPO, assert_one_line_error


def test_run_video_to_json_and_record(cli, tiny_bundle, tmp_path, colour_media):
    labels = colour_media.labels(21, run=3)
    video = colour_media.video(tmp_path / "v.mp4", labels)
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec.mp4"
    r = cli("run", tiny_bundle.path, "--source", video, "--json", out, "--record", rec, "--top-k", "2",
            "--backend", "onnxruntime")
    assert r.code == 0, r
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["results"][0]["label"] for x in lines] == labels and len(lines[0]["results"]) == 2
    assert "stopped (end of stream): 21 frames" in r.err
    cap = cv2.VideoCapture(str(rec))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 21


def test_run_json_to_stdout_and_max_frames(cli, tiny_bundle, tmp_path, colour_media):
    folder = colour_media.folder(tmp_path / "imgs", ["blue", "red", "green"])
    r = cli("run", tiny_bundle.path, "--source", folder, "--json", "-", "--loop", "--max-frames", "7")
    assert r.code == 0, r
    lines = [json.loads(x) for x in r.out.splitlines()]  # stdout holds nothing but the JSON lines
    assert [x["index"] for x in lines] == list(range(7))
    assert [x["results"][0]["label"] for x in lines] == ["blue", "red", "green"] * 2 + ["blue"]


def test_bad_input_is_one_line(cli, tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", ["red"])
    notvideo = tmp_path / "x.mp4"
    notvideo.write_text("hello")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    cases = [
        (("--camera", "9"), "no camera at index 9"),
        (("--source", notvideo), "is not a video"),
        (("--source", tmp_path / "missing.mp4"), "does not exist"),
        (("--source", f"rtsp://127.0.0.1:{closed_port}/cam", "--timeout", "2"), "does not answer"),
        (("--source", f"http://127.0.0.1:{closed_port}/stream.mjpg", "--timeout", "2"), "cannot open"),
        (("--source", video, "--json", tmp_path / "no" / "out.jsonl"), "does not exist"),
        (("--source", video, "--record", tmp_path / "out.gif"), "--record needs"),
        (("--source", video, "--serve", "nonsense"), "--serve needs"),
        (("--source", video, "--camera", "0"), "no camera at index 0"),  # two sources: both must open
        ((f"a={video}", "--source", f"a={video}"), "two sources are named 'a'"),
        ((), "give a SOURCE"),
    ]
    for args, fragment in cases:
        assert_one_line_error(cli("run", tiny_bundle.path, *args), fragment)
    assert_one_line_error(cli("run", tmp_path / "nobundle", "--source", video), "does not exist")


def test_port_in_use_is_one_line(cli, tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", ["red"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = cli("run", tiny_bundle.path, "--source", video, "--serve", busy.getsockname()[1])
    assert_one_line_error(r, "port is in use")


def test_sigterm_stops_within_2_s_with_outputs_intact(tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(30, run=5), fps=30)
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec.mp4"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "run", str(tiny_bundle.path), "--source", str(video), "--realtime", "--loop",
         "--json", str(out), "--record", str(rec), "--backend", "onnxruntime"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60

        def written() -> int:  # lines in the JSON output so far: its partial file until the run ends
            partial = list(tmp_path.glob(".out.*.partial.jsonl"))
            return len(partial[0].read_text().splitlines()) if partial else 0

        while time.monotonic() < deadline and written() < 10:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert written() >= 10, "the run wrote no 10 lines in 60 s"
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert took < 2.0, f"took {took:.2f} s to stop"
    assert "stopped (signal SIGTERM)" in err and "Traceback" not in err
    raw = out.read_text()
    assert raw.endswith("\n")
    lines = [json.loads(x) for x in raw.splitlines()]  # every line complete
    assert [x["index"] for x in lines] == list(range(len(lines)))
    cap = cv2.VideoCapture(str(rec))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == len(lines)  # the recording is playable and holds every frame written


def test_help_lists_the_sources(cli):
    r = cli("run", "--help")
    assert r.code == 0 and "csi://N" in r.out and "--serve" in r.out


def test_run_does_not_import_tensorflow(tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", ["red"] * 3)
    code = (
        "import sys; from edgekit.cli import main\n"
        f"try: main(['-q', 'run', {str(tiny_bundle.path)!r}, '--source', {str(video)!r}])\n"
        "except SystemExit as e: assert e.code in (0, None), e.code\n"
        "assert 'tensorflow' not in sys.modules and 'tf2onnx' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
