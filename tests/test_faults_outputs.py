"""Issue 19 items 1-3 and 11: outputs that never replace a device, FIFO or symlink, never destroy an
input, a bundle replaced only when complete, and exits that say when nothing was done."""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import pytest

from conftest import assert_one_line_error
from edgekit import atomic
from edgekit.errors import InputError


@pytest.fixture
def video(tmp_path, colour_media):
    return colour_media.video(tmp_path / "v.mp4", colour_media.labels(12))


def _device(path, minor=3):
    """A character device like /dev/null (minor 3) or /dev/full (minor 7), made with mknod in a temporary
    folder, so that a broken build replaces no system file (skips where mknod is not allowed)."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("mknod needs root (CAP_MKNOD)")
    return path


# ---- 1. --json (and every output path) onto a device, a FIFO, a symlink ------------------------
def test_1_json_onto_a_device_writes_to_it_and_leaves_the_device(tiny_bundle, video, tmp_path, cli):
    dev = _device(tmp_path / "null")
    assert cli("run", tiny_bundle.path, video, "--max-frames", "3", "--json", dev).code == 0
    assert stat.S_ISCHR(os.stat(dev).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".null")]  # no temporary beside it


def test_1_json_onto_a_full_device_is_one_line_and_the_device_stays(tiny_bundle, video, tmp_path, cli):
    full = _device(tmp_path / "full", minor=7)
    assert_one_line_error(cli("run", tiny_bundle.path, video, "--max-frames", "3", "--json", full),
                          f"cannot write {full}", "disk is full")
    assert stat.S_ISCHR(os.stat(full).st_mode)


def test_1_json_onto_a_fifo_reaches_its_reader(tiny_bundle, video, tmp_path, cli):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()), daemon=True)
    reader.start()
    assert cli("run", tiny_bundle.path, video, "--max-frames", "3", "--json", fifo).code == 0
    reader.join(10)
    assert [json.loads(line)["frame"] for line in got[0].splitlines()] == [0, 1, 2]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_1_json_onto_a_fifo_nobody_reads_is_refused_not_a_hang(tiny_bundle, video, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(atomic, "FIFO_WAIT", 0.3)  # how long it waits for a reader (5 s)
    os.mkfifo(tmp_path / "pipe")
    assert_one_line_error(cli("run", tiny_bundle.path, video, "--json", tmp_path / "pipe"), "FIFO that nobody reads")


def test_1_json_onto_a_symlink_writes_its_target_and_keeps_the_link(tiny_bundle, video, tmp_path, cli):
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "results.jsonl"
    target.write_text("old\n")
    os.symlink("out/results.jsonl", tmp_path / "link.jsonl")
    assert cli("run", tiny_bundle.path, video, "--max-frames", "3", "--json", tmp_path / "link.jsonl").code == 0
    assert os.readlink(tmp_path / "link.jsonl") == "out/results.jsonl"
    assert len(target.read_text().splitlines()) == 3


def test_1_atomic_writers_follow_symlinks_and_write_devices_straight(tmp_path):
    dev = _device(tmp_path / "null")
    atomic.write_json(dev, {"a": 1})
    assert stat.S_ISCHR(os.stat(dev).st_mode)
    (tmp_path / "real.json").write_text("{}")
    os.symlink("real.json", tmp_path / "link.json")
    atomic.write_json(tmp_path / "link.json", {"b": 2})
    assert os.path.islink(tmp_path / "link.json") and json.loads((tmp_path / "real.json").read_text()) == {"b": 2}
    with pytest.raises(InputError, match="is a folder"):
        atomic.write_json(tmp_path, {})


def test_1_record_onto_a_device_is_refused(tiny_bundle, video, tmp_path, cli):
    dev = _device(tmp_path / "dev.mkv")
    assert_one_line_error(cli("run", tiny_bundle.path, video, "--record", dev), "--record needs a regular file")
    assert stat.S_ISCHR(os.stat(dev).st_mode)


# ---- 2. an output that is an input of the same run -----------------------------------------------
def test_2_record_onto_the_source_is_refused_and_the_source_kept(tiny_bundle, video, cli):
    before = video.read_bytes()
    assert_one_line_error(cli("run", tiny_bundle.path, video, "--max-frames", "3", "--record", video),
                          "same path as SOURCE", "destroy the input")
    assert video.read_bytes() == before


def test_2_json_and_record_onto_one_file_refused_up_front(tiny_bundle, video, tmp_path, cli):
    link = tmp_path / "other.mkv"
    os.symlink(tmp_path / "x.mkv", link)  # the same file under another name too
    for json_path in (tmp_path / "x.mkv", link):
        result = cli("run", tiny_bundle.path, video, "--json", json_path, "--record", tmp_path / "x.mkv")
        assert_one_line_error(result, "same path as --json")
        assert "disk full" not in result.err


# ---- 11. exits that say when nothing was done ----------------------------------------------------
def test_11_an_image_folder_with_no_readable_image_exits_non_zero(tiny_bundle, tmp_path, cli):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(b"not a png")
    assert_one_line_error(cli("run", tiny_bundle.path, tmp_path / "imgs"), "no frame of", "could be read")


def test_11_validate_exits_non_zero_when_the_models_change_meanwhile(tmp_path, colour_media, monkeypatch, cli):
    """A quantize that replaces the models while validate judges them: no verdict, exit 1."""
    from edgekit.quant import gate
    from edgekit.tiny import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "b", variants=True)
    for label in ("red", "green", "blue"):
        colour_media.folder(tmp_path / "imgs" / label, [label] * 2)
    evaluate = gate.evaluate

    def evaluate_then_requantize(b, *args, **kwargs):
        report = evaluate(b, *args, **kwargs)
        fresh = type(b).load(b.path, verify=False)
        fresh.models["int8"]["sha256"] = "0" * 64  # what a concurrent quantize leaves: other models
        fresh.save()
        return report

    monkeypatch.setattr(gate, "evaluate", evaluate_then_requantize)
    assert_one_line_error(cli("validate", bundle.path, "--images", tmp_path / "imgs", "--no-tensorrt"),
                          "changed while they were being validated", "no verdict recorded")


@pytest.fixture
def colour_set(tmp_path, colour_media):
    for label in ("red", "green", "blue"):
        colour_media.folder(tmp_path / "calib" / label, [label] * 8)
    return tmp_path / "calib"


def test_11_quantize_without_cpu_variant_keeps_int8_cpu_and_records_the_real_bundle(tmp_path, colour_set, cli):
    from edgekit.bundle import Bundle
    from edgekit.tiny import write_tiny_bundle

    path = write_tiny_bundle(tmp_path / "b").path
    common = ("--calib-images", colour_set, "--holdout", "6", "--method", "minmax", "--no-fp16")
    assert cli("quantize", path, *common, "--cpu-variant").code == 0
    before = Bundle.load(path).models["int8_cpu"]
    assert cli("quantize", path, *common).code == 0
    after = Bundle.load(path).models["int8_cpu"]
    assert after == before and (path / "model.int8_cpu.onnx").is_file()
    assert json.loads((path / "validation.json").read_text())["bundle"] == str(path)


# ---- 3. export --force --int8: the old bundle until a complete new one --------------------------
@pytest.fixture
def fake_export(monkeypatch):
    """export_bundle stood in by the tiny bundle (no TensorFlow): the CLI's staging is what is tested."""
    from edgekit.host import export
    from edgekit.tiny import write_tiny_bundle

    def export_bundle(model, out, force=False, **options):
        bundle = write_tiny_bundle(out, force=force)
        bundle.manifest.update(target={"name": "jetpack-6.1", "tensorrt": "10.3", "verdict": "ok", "problems": []},
                               parity={"max_abs_error": 0.0, "tolerance": 1e-4})
        bundle.save()
        return bundle

    monkeypatch.setattr(export, "export_bundle", export_bundle)


@pytest.mark.parametrize("bad", ["keep-float", "calib-images"])
def test_3_export_force_int8_failing_in_quantize_leaves_the_old_bundle(tmp_path, colour_set, fake_export, cli, bad):
    from edgekit.tiny import write_tiny_bundle

    out = write_tiny_bundle(tmp_path / "bundle", variants=True).path
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty").mkdir()
    args = ["--keep-float", "NOSUCHNODE"] if bad == "keep-float" else []
    calib = tmp_path / "empty" if bad == "calib-images" else colour_set
    result = cli("export", tmp_path / "m.keras", "-o", out, "--force", "--int8", "--calib-images", calib,
                 "--holdout", "6", *args)
    assert_one_line_error(result)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.")]  # no staging left behind


def test_3_export_force_int8_commits_a_complete_bundle(tmp_path, colour_set, fake_export, cli):
    from edgekit.bundle import Bundle
    from edgekit.tiny import write_tiny_bundle

    out = write_tiny_bundle(tmp_path / "bundle").path
    result = cli("export", tmp_path / "m.keras", "-o", out, "--force", "--int8", "--calib-images", colour_set,
                 "--holdout", "6", "--method", "minmax")
    assert result.code == 0, result
    assert {"fp32", "int8", "fp16"} <= set(Bundle.load(out).models)
    assert json.loads((out / "validation.json").read_text())["bundle"] == str(out)


def test_3_export_force_int8_interrupted_in_quantize_leaves_the_old_bundle(tmp_path, colour_set, fake_export,
                                                                           monkeypatch, cli):
    from edgekit.quant import quantize
    from edgekit.tiny import write_tiny_bundle

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what SIGINT does at any point of the quantization

    monkeypatch.setattr(quantize, "quantize_bundle", interrupted)
    out = write_tiny_bundle(tmp_path / "bundle", variants=True).path
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = cli("export", tmp_path / "m.keras", "-o", out, "--force", "--int8", "--calib-images", colour_set)
    assert_one_line_error(result, "interrupted")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_2_export_and_train_outputs_onto_their_inputs_are_refused(tmp_path, cli):
    model = tmp_path / "model.keras"
    model.write_bytes(b"a model")
    assert_one_line_error(cli("export", model, "-o", model, "--force"), "same path as MODEL")
    assert_one_line_error(cli("train", tmp_path, "-o", tmp_path, "--force"), "same path as DATA_DIR")
    assert model.read_bytes() == b"a model"


def test_1_a_fifo_reader_that_goes_away_ends_the_run_cleanly(tiny_bundle, tmp_path, cli, colour_media):
    video = colour_media.video(tmp_path / "long.mp4", colour_media.labels(200))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []

    def read_one_line():
        with open(fifo) as f:
            got.append(f.readline())

    reader = threading.Thread(target=read_one_line, daemon=True)
    reader.start()
    result = cli("run", tiny_bundle.path, video, "--json", fifo)
    reader.join(10)
    assert result.code == 0 and "closed by its reader" in result.err, result
    assert json.loads(got[0])["frame"] == 0


KILLED_EXPORT = """
import sys, time
from pathlib import Path
from edgekit.host import export
from edgekit.quant import quantize
from edgekit.tiny import write_tiny_bundle
export.export_bundle = lambda model, out, force=False, **kw: write_tiny_bundle(out, force=force)
def quantizing(path, *args, **kwargs):
    Path(sys.argv[1]).write_text(str(path))
    time.sleep(60)
quantize.quantize_bundle = quantizing
from edgekit.cli import main
main(["export", "m.keras", "-o", sys.argv[2], "--force", "--int8", "--calib-images", sys.argv[3]])
"""


def test_3_export_force_int8_killed_in_quantize_leaves_the_old_bundle(tmp_path, colour_set):
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from edgekit.tiny import write_tiny_bundle

    out = write_tiny_bundle(tmp_path / "bundle", variants=True).path
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    marker = tmp_path / "quantizing"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, marker, out, colour_set],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    try:
        for _ in range(600):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert marker.exists(), "the export never reached quantization"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert marker.read_text() != str(out)  # it was quantizing a staged copy, not the bundle
