"""Issue 19 items 5, 9, 10 and 13: numbers an option or a manifest takes are finite and in range,
thread counts bounded by the CPU count, and the frictions a newcomer met."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_one_line_error
from edgekit.cli.options import max_threads


# ---- 10. numbers an option takes: finite and in range (one shared type) --------------------------
@pytest.mark.parametrize("args,option", [
    (["--max-drop", "nan"], "--max-drop"), (["--timeout", "nan"], "--timeout"), (["--duration", "nan"], "--duration"),
    (["--log-every", "nan"], "--log-every"), (["--fps", "-5"], "--fps"), (["--fps", "0", "--realtime"], "--fps"),
    (["--fps", "inf"], "--fps"), (["--threads", "-1"], "--threads"), (["--serve", "notaport"], "--serve"),
    (["--duration", "-inf"], "--duration"), (["--score-threshold", "nan"], "--score-threshold"),
])
def test_10_bad_numbers_refused_at_parsing_in_one_line(tiny_bundle, tmp_path, cli, args, option):
    command = ["validate", tiny_bundle.path, "--images", tmp_path] if option == "--max-drop" else \
        ["run", tiny_bundle.path, tmp_path / "nothing.mp4"]
    assert_one_line_error(cli(*command, *args), option)


@pytest.mark.parametrize("command", ["quantize", "export"])
def test_10_max_drop_nan_never_reaches_a_manifest(tiny_bundle, tmp_path, cli, command):
    target = ["export", tmp_path / "m.keras", "-o", tmp_path / "o", "--int8"] if command == "export" else \
        ["quantize", tiny_bundle.path]
    before = (tiny_bundle.path / "edgekit.json").read_bytes()
    assert_one_line_error(cli(*target, "--calib-images", tmp_path, "--max-drop", "nan"), "--max-drop", "finite")
    assert (tiny_bundle.path / "edgekit.json").read_bytes() == before


def test_10_service_install_refuses_a_bad_serve_address(tiny_bundle, tmp_path, cli):
    result = cli("service", "install", tiny_bundle.path, "--root", tmp_path / "root", "--source", "x.mp4",
                 "--serve", "notaport")
    assert_one_line_error(result, "--serve", "notaport")
    assert not (tmp_path / "root").exists()


# ---- 5. --threads bounded by the CPU count (run, bench, service install) -------------------------
@pytest.mark.parametrize("value", ["0", "100000", str(max_threads() + 1)])
def test_5_threads_out_of_range_refused(tiny_bundle, tmp_path, cli, value):
    assert_one_line_error(cli("run", tiny_bundle.path, tmp_path / "v.mp4", "--threads", value), "--threads")
    assert_one_line_error(cli("bench", tiny_bundle.path, "--threads", value), "--threads")
    assert_one_line_error(cli("service", "install", tiny_bundle.path, "--root", tmp_path / "r", "--source", "v.mp4",
                              "--threads", value), "--threads")


def test_5_threads_within_the_range_run(tiny_bundle, tmp_path, cli, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(3))
    assert cli("run", tiny_bundle.path, video, "--threads", str(max_threads()), "--max-frames", "2").code == 0


# ---- 9. manifest values ----------------------------------------------------------------------------
def _edited(tiny_bundle, tmp_path, edit):
    path = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, path)
    manifest = json.loads((path / "edgekit.json").read_text())
    edit(manifest)
    (path / "edgekit.json").write_text(json.dumps(manifest))  # NaN written as the bare token NaN
    return path


@pytest.mark.parametrize("name,edit,words", [
    ("scale NaN", lambda m: m["preprocess"].update(scale=float("nan")), "finite numbers"),
    ("mean inf", lambda m: m["preprocess"].update(mean=[0, float("inf"), 0]), "finite numbers"),
    ("huge size", lambda m: m["preprocess"].update(size=[100000, 100000]), "1 to 8192 pixels"),
    ("detector edited to classifier", lambda m: m.update(outputs=[{"name": "boxes", "meaning": "boxes"},
                                                                  {"name": "scores", "meaning": "scores"}]),
     "a classifier has one"),
])
def test_9_bad_manifest_values_are_one_line(tiny_bundle, tmp_path, cli, name, edit, words):
    bundle = _edited(tiny_bundle, tmp_path, edit)
    assert_one_line_error(cli("run", bundle, tmp_path / "x.mp4"), "corrupt manifest" if "class" in name else "",
                          words)


def test_9_deeply_nested_manifest_is_one_line(tiny_bundle, tmp_path, cli):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, bundle)
    (bundle / "edgekit.json").write_text("[" * 100000 + "]" * 100000)
    assert_one_line_error(cli("inspect", bundle), "nested too deeply")


# ---- 13. newcomer frictions ------------------------------------------------------------------------
@pytest.mark.parametrize("command,flag,ours", [
    ("run", "--conf", "--score-threshold"), ("run", "--device", "--backend"), ("train", "--imgsz", "--image-size"),
    ("export", "--iou", "--iou-threshold"), ("run", "--show", "--display"),
])
def test_13_other_tools_option_names_get_edgekits(cli, command, flag, ours):
    result = cli(command, "X", flag, "1")
    assert_one_line_error(result, f"no such option: {flag}; edgekit calls it {ours}")
    from edgekit.cli import COMMANDS  # the named option exists in that command
    import importlib

    opts = {o for p in importlib.import_module(COMMANDS[command][0]).command.params for o in p.opts}
    assert ours in opts


def test_13_serve_on_a_video_file_hints_realtime_loop(tiny_bundle, tmp_path, cli, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(3))
    result = cli("run", tiny_bundle.path, video, "--serve", "127.0.0.1:0", "--max-frames", "2")
    assert result.code == 0 and "add --realtime --loop" in result.err


def test_13_detection_dataset_given_to_a_classifier_is_named(tiny_bundle, tmp_path, cli):
    from test_detection_data import make_yolo

    data = make_yolo(tmp_path / "yolo")
    for images in (data, data / "data.yaml"):
        assert_one_line_error(cli("validate", tiny_bundle.path, "--images", images), "is a detection dataset")


def test_13_train_takes_the_data_yaml_and_a_detection_set(tmp_path, monkeypatch, cli):
    """`train DATA/data.yaml` reads the YOLO set (--task detect implied); an explicit classify is refused."""
    from edgekit.data.detection import read_detection_set
    from test_detection_data import make_yolo

    data = make_yolo(tmp_path / "yolo")
    assert read_detection_set(data / "data.yaml").classes == ["cat", "dog"]
    seen = {}

    def train_detector(data_dir, out, **kw):  # what the CLI hands the trainer (training itself needs TensorFlow)
        seen.update(data=data_dir)
        return {"images": {"train": 3}, "boxes": {"train": 3}, "labels": ["cat", "dog"], "skipped": {},
                "val_recall": None, "val_precision": None, "score_threshold": 0.25}

    monkeypatch.setattr("edgekit.host.train_detect.train_detector", train_detector)
    assert cli("train", data / "data.yaml", "-o", tmp_path / "m.keras").code == 0
    assert seen["data"] == str(data / "data.yaml")
    assert_one_line_error(cli("train", data, "-o", tmp_path / "m.keras", "--task", "classify"), "--task detect")


def test_13_short_calibration_video_suggests_a_smaller_every(tiny_bundle, tmp_path, colour_media):
    from edgekit.errors import InputError
    from edgekit.quant.calibration import calibration_set

    video = colour_media.video(tmp_path / "held.mp4", colour_media.labels(75))
    with pytest.raises(InputError, match=r"smaller --every \(now 10"):
        calibration_set(video, tiny_bundle.preprocess, holdout=0, every=10)


def test_13_service_install_warns_of_a_source_under_tmp(tiny_bundle, tmp_path, cli):
    result = cli("service", "install", tiny_bundle.path, "--root", tmp_path / "root", "--dry-run", "--source",
                 "/tmp/cam.mp4")
    assert "SOURCE /tmp/cam.mp4 is under /tmp" in result.err and "PrivateTmp=yes" in result.err
