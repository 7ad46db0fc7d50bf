"""The core every command stands on: atomic writes, the bundle, the one preprocessing, images, CLI errors."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import assert_one_line_error
from edgekit import atomic
from edgekit.bundle import MANIFEST, Bundle
from edgekit.errors import BundleError, EdgekitError, InputError
from edgekit.images import ImageReader, labelled_folder, read_image
from edgekit.preprocess import Preprocess


# ---- atomic writes --------------------------------------------------------------------------
def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "file.json"
    atomic.write_json(target, {"x": 1})
    atomic.write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "plan.engine"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.engine"]


def test_disk_full_is_one_clear_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "x.bin").write_bytes(b"previous")
    monkeypatch.setattr(atomic.os, "replace", full)  # the rename fails; test_disk_full_writes.py fails the write
    with pytest.raises(EdgekitError, match="disk full"):
        atomic.write_bytes(tmp_path / "x.bin", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"] and (tmp_path / "x.bin").read_bytes() == b"previous"


def test_atomic_dir_refuses_existing_then_replaces_with_force(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(InputError, match="--force"):
        with atomic.atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(out, force=True) as tmp:
            (tmp / "new").write_text("new")
            raise RuntimeError("failed half way")
    assert [p.name for p in out.iterdir()] == ["old"]
    with atomic.atomic_dir(out, force=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_sha256_of_folder_depends_on_names_and_contents(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a").write_bytes(b"1")
    first = atomic.sha256_file(tmp_path / "m")
    (tmp_path / "m" / "a").rename(tmp_path / "m" / "b")
    assert atomic.sha256_file(tmp_path / "m") != first


# ---- bundle ---------------------------------------------------------------------------------
def test_tiny_bundle_loads_and_verifies(tiny_bundle):
    bundle = Bundle.load(tiny_bundle.path)
    assert bundle.labels == ["red", "green", "blue"]
    assert bundle.model_path("fp32").is_file()
    assert bundle.preprocess.size == (32, 32)
    with pytest.raises(BundleError, match="no int8 model"):
        bundle.model_path("int8")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: (d / MANIFEST).write_text("{not json"), "corrupt manifest"),
        (lambda d: (d / MANIFEST).unlink(), "not an edgekit bundle"),
        (lambda d: (d / "model.onnx").unlink(), "lacks its fp32 model"),
        (lambda d: (d / "model.onnx").write_bytes(b"tampered"), "does not match its sha256"),
        (lambda d: _edit(d, schema_version=99), "schema version 99"),
        (lambda d: _edit(d, preprocess={"size": [32, 32], "resize": "zoom"}), r"preprocess\.resize: 'zoom' is not one of"),
        # issue 12 item 4: wrong types and label counts, each one line naming the JSON path
        (lambda d: _edit(d, labels=None), r"labels: None is not of type 'array'"),
        (lambda d: _edit(d, labels="red,green,blue"), r"labels: 'red,green,blue' is not of type 'array'"),
        (lambda d: _edit(d, labels=["red", "green"]), "2 labels for a model of 3 classes"),
        (lambda d: _edit(d, labels=[f"c{i}" for i in range(1000)]), "1000 labels for a model of 3 classes"),
        (lambda d: _edit(d, labels=["red", "red", "blue"]), r"labels: .* has non-unique elements"),
        (lambda d: _edit(d, preprocess=None), r"preprocess: None is not of type 'object'"),
        (lambda d: _edit(d, input="input"), r"input: 'input' is not of type 'object'"),
        (lambda d: _edit(d, outputs=None), r"outputs: None is not of type 'array'"),
        (lambda d: _edit_model(d, path=None), r"models\.fp32\.path: None is not of type 'string'"),
        (lambda d: _edit_model(d, path="../../etc/passwd"), r"models\.fp32\.path: .* does not match"),
        (lambda d: _edit_model(d, sha256=12), r"models\.fp32\.sha256: 12 is not of type 'string'"),
        (lambda d: _edit(d, models={"fp32": {"path": "model.onnx"}, "int4": {"path": "x.onnx"}}), r"models: 'int4' is not one of"),
        (lambda d: _edit(d, task="detection"), r"top level: 'nms' is a required property"),
    ],
)
def test_corrupt_bundles_are_refused(tiny_bundle, tmp_path, corrupt, message):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, copy)
    corrupt(copy)
    with pytest.raises(BundleError, match=message):
        Bundle.load(copy)


def _edit_model(folder, **changes):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["models"]["fp32"].update(changes)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _edit(folder, **changes):
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(changes)
    (folder / MANIFEST).write_text(json.dumps(manifest))


# ---- preprocessing --------------------------------------------------------------------------
def test_preprocess_normalises_in_model_colour_order_and_layout():
    prep = Preprocess(size=(4, 6), color="RGB", scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    frame = np.zeros((8, 12, 3), np.uint8)
    frame[..., 2] = 255  # red in BGR
    x = prep(frame)
    assert x.shape == (3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_allclose(x[1:], -1.0)
    assert prep.batch([frame, frame]).shape == (2, 3, 4, 6)
    assert Preprocess.from_dict(prep.to_dict()) == prep


@pytest.mark.parametrize("color", ["RGB", "BGR"])
@pytest.mark.parametrize("resize", ["stretch", "letterbox", "center_crop"])
def test_training_layout_and_runtime_layout_are_the_same_numbers(color, resize):
    """Keras trains on ``hwc()``; calibration and the loop feed ``__call__``: identical values."""
    prep = Preprocess(size=(30, 40), resize=resize, color=color, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    frame = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prep(frame), prep.hwc(frame).transpose(2, 0, 1))
    nhwc = Preprocess(size=(30, 40), resize=resize, color=color, layout="NHWC")
    np.testing.assert_array_equal(nhwc(frame), nhwc.hwc(frame))


def test_letterbox_keeps_aspect_and_center_crop_fills():
    frame = np.full((10, 40, 3), 200, np.uint8)
    box = Preprocess(size=(20, 20), resize="letterbox", scale=1.0).resized(frame)
    assert box.shape == (20, 20, 3)
    assert box[0, 0, 0] == 114 and box[10, 10, 0] == 200
    crop = Preprocess(size=(20, 20), resize="center_crop", scale=1.0).resized(frame)
    assert crop.shape == (20, 20, 3) and (crop == 200).all()


# ---- images ---------------------------------------------------------------------------------
def test_read_image_normalises_gray_16bit_and_alpha(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((5, 5), 7, np.uint8))
    cv2.imwrite(str(tmp_path / "d.png"), np.full((5, 5), 0x1200, np.uint16))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((5, 5, 4), 9, np.uint8))
    for name, value in (("g.png", 7), ("d.png", 0x12), ("a.png", 9)):
        img = read_image(tmp_path / name)
        assert img.shape == (5, 5, 3) and img.dtype == np.uint8 and (img == value).all()


def test_unreadable_images_are_skipped_and_counted(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not a png")

    reader = ImageReader(sorted(tmp_path.iterdir()))
    got = list(reader)
    assert [p.name for p, _ in got] == ["ok.png"] and reader.skipped == 1
    assert "bad.png" in caplog.text


def test_labelled_folder_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        labelled_folder(tmp_path / "nope")
    with pytest.raises(InputError, match="holds no images"):
        labelled_folder(tmp_path)
    (tmp_path / "cat").mkdir()
    cv2.imwrite(str(tmp_path / "cat" / "1.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="at least 2"):
        labelled_folder(tmp_path)
    (tmp_path / "dog").mkdir()
    cv2.imwrite(str(tmp_path / "dog" / "1.jpg"), np.zeros((4, 4, 3), np.uint8))
    found = labelled_folder(tmp_path)
    assert found.classes == ["cat", "dog"] and [c for _, c in found.samples] == [0, 1]


# ---- CLI ------------------------------------------------------------------------------------
def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys; from edgekit.cli import main\n"
        "try: main(['--help'])\n"
        "except SystemExit: pass\n"
        "heavy = [m for m in ('tensorflow', 'tf2onnx', 'tensorrt', 'pycuda', 'onnxruntime', 'cv2') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "sample-data" in out


def test_every_listed_command_loads_and_has_help(cli):
    from edgekit.cli import COMMANDS

    for name in COMMANDS:
        result = cli(name, "--help")
        assert result.code == 0, (name, result)
        assert "Usage:" in result.out


def test_bad_option_and_missing_bundle_are_clear(cli, tmp_path):
    assert cli("inspect", tmp_path / "missing").code != 0
    assert cli("no-such-command").code == 2


def test_sample_data_refuses_existing_output(cli, tmp_path):
    (tmp_path / "out").mkdir()
    assert_one_line_error(cli("sample-data", tmp_path / "out"), "already exists", "--force")


@pytest.mark.parametrize("args", [["--image-size", "0"], ["--image-size", "100000"], ["--val-split", "1.5"]])
def test_sample_data_refuses_bad_sizes(cli, tmp_path, args):
    result = cli("sample-data", tmp_path / "out", *args)
    assert_one_line_error(result)
    assert result.code == 2 and not (tmp_path / "out").exists()


def test_sample_data_is_real_digits(digits):
    found = labelled_folder(digits / "val")
    assert found.classes == [str(d) for d in range(10)]
    labels = (digits / "val.labels.txt").read_text().split()
    cap = cv2.VideoCapture(str(digits / "val.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert frames == len(labels) == len(found.samples)
    assert len(labelled_folder(digits / "train").samples) + len(found.samples) == 1797


def test_device_commands_work_with_tensorflow_unimportable(tiny_bundle, tmp_path):
    """bench, doctor, inspect and build never import TensorFlow (a Jetson has none)."""
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'tf2onnx', 'keras'):\n"
        "    sys.modules[name] = None  # any import of them now raises ImportError\n"
        "from edgekit.cli import main\n"
        "for args in (['bench', sys.argv[1], '--iterations', '3', '--backend', 'onnxruntime'],\n"
        "             ['doctor'], ['inspect', sys.argv[1]],\n"
        "             ['build', sys.argv[1]]):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        print(args[0], 'exit', exc.code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_bundle.path)], capture_output=True, text=True)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "bench exit 0" in proc.stdout and "doctor exit 0" in proc.stdout and "inspect exit 0" in proc.stdout
    # build needs TensorRT: here it must fail cleanly, for that reason and not a TensorFlow import
    assert "build exit 1" in proc.stdout and "TensorRT is not available" in proc.stderr


def test_schema_accepts_the_other_branches_fields(tiny_bundle):
    """The published schema takes detection's nms/tensorrt and the verdicts' gate/validation (contract 1)."""
    import copy

    from edgekit.bundle import SCHEMA_FILE, schema_problem

    m = copy.deepcopy(tiny_bundle.manifest)
    m.update(task="detection", outputs=[{"name": "boxes", "meaning": "boxes"}, {"name": "scores", "meaning": "scores"}],
             nms={"score_threshold": 0.3, "eval_score_threshold": 0.001, "iou_threshold": 0.5, "max_detections": 100,
                  "class_agnostic": False})
    m["models"]["fp32"].update(
        tensorrt={"path": "model.nms.onnx", "sha256": "0" * 64},
        gate={"images": 200, "drop": 0.1},
        validation={"passed": True, "metric": "map50", "value": 0.61, "reference": 0.62, "drop": 0.01,
                    "max_drop": 1.0, "images": 50, "at": "2026-11-22T10:00:00+00:00"},
    )
    assert schema_problem(m) is None
    m["nms"]["iou_threshold"] = 1.5
    assert schema_problem(m) == "nms.iou_threshold: 1.5 is greater than the maximum of 1"
    assert json.loads(SCHEMA_FILE.read_text())["$schema"].endswith("2020-12/schema")
