"""Issue 11, as a new user meets it: one vocabulary, quiet success, results tied to files, console output."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_one_line_error


# ---- run: results tied to files, console output, positional source, -q after the subcommand ----
def test_json_lines_name_the_file_and_frame_and_survive_a_skipped_file(cli, tiny_bundle, tmp_path, colour_media):
    folder = colour_media.folder(tmp_path / "imgs", ["red", "green", "blue"])
    (folder / "0001.png").write_bytes(b"not a png")  # unreadable: skipped, must not shift the others
    out = tmp_path / "out.jsonl"
    r = cli("run", tiny_bundle.path, folder, "--json", out)
    assert r.code == 0, r
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["file"], x["frame"], x["results"][0]["label"]) for x in lines] == [
        (str(folder / "0000.png"), 0, "red"), (str(folder / "0002.png"), 0, "blue")]


def test_json_lines_of_a_video_count_its_frames_also_when_looping(cli, tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", ["red", "green", "blue"])
    out = tmp_path / "out.jsonl"
    r = cli("run", tiny_bundle.path, video, "--json", out, "--loop", "--max-frames", "5")
    assert r.code == 0, r
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["file"], x["frame"]) for x in lines] == [(str(video), n) for n in (0, 1, 2, 0, 1)]
    assert [x["source_frame"] for x in lines] == [0, 1, 2, 3, 4]


def test_run_without_an_output_prints_results(cli, tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", ["red", "green", "blue"])
    r = cli("run", tiny_bundle.path, video)
    assert r.code == 0, r
    assert r.out.splitlines() == [f"{video}#0: red 1.00", f"{video}#1: green 1.00", f"{video}#2: blue 1.00"]
    assert "stopped (end of stream): 3 frames" in r.err


def test_console_is_rate_bounded_and_says_what_it_skipped():
    import io

    import numpy as np

    from edgekit.stream.console import ConsoleSink
    from edgekit.stream.results import FrameResult
    from edgekit.stream.source_base import Frame

    now = [0.0]
    out = io.StringIO()
    sink = ConsoleSink(out, rate=2.0, burst=3, clock=lambda: now[0])
    sink.open(None)
    image = np.zeros((2, 2, 3), np.uint8)
    for i in range(100):  # 100 frames in 10 s
        now[0] = i * 0.1
        sink.write(FrameResult(i, Frame(image, i, 0.0, 0.0), [{"label": "cat", "class": 1, "score": 0.5,
                                                              "box": [0.1, 0.2, 0.3, 0.4]}]))
    sink.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "frame 0: cat 0.50 [0.1,0.2,0.3,0.4]"
    assert 3 + 2 * 10 - 2 <= len(lines) <= 3 + 2 * 10 + 1  # burst, then 2 per second, and the last
    assert lines[-1].startswith("frame 99: ")

    many = io.StringIO()
    sink = ConsoleSink(many)
    sink.open(None)
    sink.write(FrameResult(0, Frame(image, 0, 0.0, 0.0, "a.jpg", 0), [{"label": "cat", "score": 0.5}] * 7))
    assert many.getvalue() == "a.jpg: " + "; ".join(["cat 0.50"] * 5) + "; ... 2 more\n"
    hidden = sum(int(x.split("(+")[1].split()[0]) for x in lines if "(+" in x)
    assert hidden + len(lines) == 100


def test_quiet_after_the_subcommand_silences_the_summary(cli, tiny_bundle, tmp_path, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", ["red", "green"])
    out = tmp_path / "o.jsonl"
    r = cli("run", tiny_bundle.path, video, "--json", out, "-q")
    assert r.code == 0, r
    assert r.err == "" and r.out == ""
    assert len(out.read_text().splitlines()) == 2
    r = cli("run", tiny_bundle.path, tmp_path / "missing.mp4", "-q")
    assert_one_line_error(r, "does not exist")  # errors still print


# ---- service install checks RUN_OPTIONS with run's parser; --root does not claim "running" ----
def test_service_install_refuses_what_run_would_refuse_and_writes_nothing(cli, tiny_bundle, tmp_path):
    root = tmp_path / "root"
    assert_one_line_error(cli("service", "install", tiny_bundle.path, "--root", root, "--camera", "0", "--bogus-opt"),
                          "run options", "--bogus-opt")
    assert_one_line_error(cli("service", "install", tiny_bundle.path, "--root", root, "--top-k", "zero", "0"),
                          "--top-k")
    assert_one_line_error(cli("service", "install", tiny_bundle.path, "--root", root), "give a SOURCE")
    assert not root.exists()
    r = cli("service", "install", tiny_bundle.path, "--root", root, "csi://0", "--serve", "8080")
    assert r.code == 0, r
    last = r.out.strip().splitlines()[-1]
    assert "running" not in last and "not started (under --root)" in last, last
    assert "csi://0" in (root / "etc/edgekit/edgekit.env").read_text()


def test_help_says_what_options_do(cli):
    assert "Read the installation under this directory" in cli("service", "status", "--help").out
    assert "jetpack-5.1" in cli("export", "--help").out  # the --target values, before a wrong one
    assert "--keep-float NODE" in cli("quantize", "--help").out and "--nodes" in cli("inspect", "--help").out


# ---- the README's Python API, run as written ----
def test_readme_python_blocks_run_against_a_bundle(tiny_bundle, tmp_path, monkeypatch, colour_media):
    import re

    import cv2

    from conftest import REPO

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    shutil.copytree(tiny_bundle.path, tmp_path / "bundle")
    cv2.imwrite(str(tmp_path / "frame.png"), colour_media.frame("red", (300, 400)))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    results = namespace["results"]
    assert [r["label"] for r in results] == ["red", results[1]["label"]] and len(results) == 2
    assert set(results[0]) == {"class", "label", "score"} and results[0]["score"] > 0.9
    assert namespace["per_frame"] == [results, results]  # a list of frames: one result list each
    scores = namespace["scores"]
    assert scores.shape == (1, 3) and scores.argmax() == results[0]["class"]


def test_predictor_matches_the_loop(tiny_bundle, colour_media):
    from edgekit.predict import Predictor

    with Predictor(tiny_bundle, backend="onnxruntime") as p:
        assert [p.predict(colour_media.frame(c))[0]["label"] for c in ("blue", "green", "red")] == [
            "blue", "green", "red"]


# ---- progress when stderr is not a terminal ----
def test_progress_lines_every_few_seconds(caplog):
    import logging

    from edgekit.progress import Lines

    now = [0.0]

    def clock():
        now[0] += 1.0  # each item takes a second
        return now[0]

    with caplog.at_level(logging.INFO, logger="edgekit.progress"):
        assert list(Lines(range(20), 20, "calibration images", every=5.0, clock=clock)) == list(range(20))
    lines = [r.getMessage() for r in caplog.records]
    assert 3 <= len(lines) <= 5 and lines[0].startswith("calibration images: ")
    assert lines[-1].startswith("calibration images: 20/20 done")


def test_heartbeat_speaks_during_a_silent_step(caplog):
    import logging
    import time

    from edgekit.progress import heartbeat

    with caplog.at_level(logging.INFO, logger="edgekit.progress"), heartbeat("converting", every=0.05):
        time.sleep(0.3)
    assert any(r.getMessage().startswith("still converting (") for r in caplog.records)


# ---- the validation chart: honest axis, legend, agreement ----
def test_validation_chart_has_an_honest_axis_a_legend_and_agreement(tmp_path):
    from edgekit.quant.gate import _chart
    from edgekit.quant.report import Report, Result

    report = Report("b", 500, True, 1.0, [
        Result("fp32", "fp32", "onnxruntime", accuracy=97.4, agreement=100.0, latency_ms=1.0),
        Result("int8", "int8", "onnxruntime", accuracy=97.1, agreement=98.8, latency_ms=0.6, drop=0.3, passed=True),
    ])
    drawn = _chart(report, tmp_path / "v.png")
    assert drawn["ylim"][0] == 0  # not 92 %: a 0.3-point gap must not look large
    assert {"top-1 accuracy", "top-1 agreement with FP32", "passed the gate", "failed the gate",
            "FP32 reference", "gate floor: FP32 accuracy - 1 pt"} <= set(drawn["legend"])
    assert (tmp_path / "v.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unlabelled = Report("b", 50, False, 1.0, report.results)
    assert "top-1 accuracy" not in _chart(unlabelled, tmp_path / "u.png")["legend"]


# ---- one vocabulary; inspect --nodes lists what --keep-float takes ----
def test_old_spellings_still_work_and_int8_options_need_int8(cli, tiny_bundle, tmp_path):
    r = cli("quantize", tiny_bundle.path, "--images", tmp_path / "nope")  # quantize's old name for --calib-images
    assert_one_line_error(r, "nope")
    assert_one_line_error(cli("quantize", tiny_bundle.path), "--calib-images")
    r = cli("export", tmp_path / "m.keras", "-o", tmp_path / "b", "--calib-method", "minmax")  # export's old name
    assert_one_line_error(r, "--calib-method is only used with --int8")
    assert_one_line_error(cli("export", tmp_path / "m.keras", "-o", tmp_path / "b", "--keep-float", "n"),
                          "--keep-float is only used with --int8")


def test_inspect_nodes_lists_names_and_ops(cli, tiny_bundle):
    import onnx

    model = onnx.load(str(tiny_bundle.model_path("fp32")))
    r = cli("inspect", tiny_bundle.path, "--nodes")
    assert r.code == 0, r
    for node in model.graph.node:
        assert f"            {node.name} {node.op_type}" in r.out.splitlines()
    listed = json.loads(cli("inspect", tiny_bundle.path, "--nodes", "--json").out)["models"]["fp32"]["node_list"]
    assert [(n["name"], n["op"]) for n in listed] == [(n.name, n.op_type) for n in model.graph.node]


def test_build_error_names_no_option_build_lacks(cli, tiny_bundle):
    from edgekit.backends.select import tensorrt_available

    if tensorrt_available():
        pytest.skip("checks the error of a machine without TensorRT")
    r = cli("build", tiny_bundle.path)
    assert_one_line_error(r, "TensorRT is not available")
    assert "--backend" not in r.err.replace("their --backend", "")  # build has no --backend: the hint says whose it is


def test_verbose_after_the_subcommand_shows_third_party_output(cli, tiny_bundle, tmp_path, colour_media):
    import logging

    from edgekit import quiet

    video = colour_media.video(tmp_path / "v.mp4", ["red"])
    r = cli("run", tiny_bundle.path, video, "--json", tmp_path / "o.jsonl", "-v")
    assert r.code == 0, r
    assert logging.getLogger("edgekit").level == logging.DEBUG and quiet._state["verbose"]
    r = cli("-q", "run", tiny_bundle.path, video, "--json", tmp_path / "o.jsonl")  # before the command, as before
    assert r.code == 0 and r.err == "", r
    assert logging.getLogger("edgekit").level == logging.WARNING and not quiet._state["verbose"]
