"""Training: a small CNN on the real digits, the sidecar export reads, and bad data folders."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from conftest import assert_one_line_error

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_trained_model_has_sidecar_with_labels_and_preprocessing(trained_model):
    from edgekit.host.train import sidecar_path
    from edgekit.preprocess import Preprocess

    meta = json.loads(sidecar_path(trained_model).read_text())
    assert meta["task"] == "classification"
    assert meta["labels"] == [str(d) for d in range(10)]
    prep = Preprocess.from_dict(meta["preprocess"])
    assert prep.size == (32, 32) and prep.color == "RGB"
    assert meta["training"]["arch"] == "small" and meta["training"]["epochs"] == 4
    assert 0.0 <= meta["training"]["val_accuracy"] <= 1.0


def test_trained_model_beats_chance_on_held_out_digits(trained_model, digits):
    """The model learned something: well above 10% on val/ images it never saw, read the bundle's way."""
    from edgekit.host import import_tf
    from edgekit.host.train import sidecar_path
    from edgekit.images import ImageReader, labelled_folder
    from edgekit.preprocess import Preprocess

    _, keras = import_tf()
    model = keras.models.load_model(trained_model, compile=False)
    prep = Preprocess.from_dict(json.loads(sidecar_path(trained_model).read_text())["preprocess"])
    folder = labelled_folder(digits / "val")
    label_of = dict(folder.samples)
    pairs = list(ImageReader(label_of))
    x = np.stack([prep.hwc(img) for _, img in pairs])
    y = np.array([label_of[p] for p, _ in pairs])
    accuracy = float((model.predict(x, verbose=0).argmax(1) == y).mean())
    assert accuracy > 0.6, accuracy


def test_trained_graph_has_no_augmentation_layers(trained_model):
    from edgekit.host import import_tf

    _, keras = import_tf()
    model = keras.models.load_model(trained_model, compile=False)
    names = [type(layer).__name__ for layer in model.layers]
    assert not [n for n in names if n.startswith("Random")], names
    assert names[-1] == "Dense" and model.layers[-1].activation.__name__ == "softmax"


def test_augment_keeps_shape_and_changes_pixels():
    from edgekit.host.train import augment_frame

    rng = np.random.default_rng(0)
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[8:24, 12:20] = 255
    out = augment_frame(frame, rng)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert not np.array_equal(out, frame)


def test_cli_train_skips_unreadable_images_and_counts_them(cli, tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    for c, colour in enumerate(((0, 0, 255), (255, 0, 0))):
        d = tmp_path / "data" / f"class{c}"
        d.mkdir(parents=True)
        for i in range(6):
            img = np.clip(np.full((16, 16, 3), colour) + rng.integers(-20, 20, (16, 16, 3)), 0, 255)
            cv2.imwrite(str(d / f"{i}.png"), img.astype(np.uint8))
    (tmp_path / "data" / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "data" / "class1" / "empty.png").write_bytes(b"")
    out = tmp_path / "m.keras"
    r = cli("train", tmp_path / "data", "-o", out, "--epochs", "1", "--image-size", "16", "--batch-size", "4")
    assert r.code == 0, r
    assert "2 unreadable skipped" in r.out and "train accuracy" in r.out and "val accuracy" in r.out
    assert "(final model, inference mode, no augmentation; Keras' epoch figures" in r.out  # why it differs from Keras' epochs
    training = json.loads((tmp_path / "m.keras.edgekit.json").read_text())["training"]
    gap = training["last_epoch_accuracy"] - training["train_accuracy"]
    assert ("far above the final model's" in r.err) == (gap > 0.15), training
    assert "skipped 2 unreadable image(s)" in r.err
    meta = json.loads((tmp_path / "m.keras.edgekit.json").read_text())
    assert meta["training"]["images"] == 12 and meta["training"]["skipped"] == 2
    assert out.is_file()
    # an existing model is refused without --force, and kept
    before = out.read_bytes()
    r = cli("train", tmp_path / "data", "-o", out, "--epochs", "1")
    assert_one_line_error(r, "already exists", "--force")
    assert out.read_bytes() == before


@pytest.mark.parametrize(
    "layout, fragment",
    [
        (None, "does not exist"),
        ({}, "holds no images"),
        ({"only": 3}, "at least 2"),
        ({"a": 2, "b": 0}, "at least 2"),
    ],
)
def test_cli_train_bad_data_folder(cli, tmp_path, layout, fragment):
    import cv2

    data = tmp_path / "data"
    if layout is not None:
        data.mkdir()
        for name, n in layout.items():
            (data / name).mkdir()
            for i in range(n):
                cv2.imwrite(str(data / name / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    r = cli("train", data, "-o", tmp_path / "m.keras", "--epochs", "1")
    assert_one_line_error(r, fragment)
    assert not list(tmp_path.glob("m.keras*"))


def test_cli_train_only_one_class_readable(cli, tmp_path):
    import cv2

    data = tmp_path / "data"
    (data / "good").mkdir(parents=True)
    (data / "bad").mkdir()
    for i in range(3):
        cv2.imwrite(str(data / "good" / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
        (data / "bad" / f"{i}.png").write_bytes(b"garbage")
    r = cli("train", data, "-o", tmp_path / "m.keras", "--epochs", "1")
    assert_one_line_error(r, "1 class", "at least 2")
    assert not list(tmp_path.glob("m.keras*"))


def test_cli_train_bad_options(cli, tmp_path, digits):
    r = cli("train", digits / "train", "-o", tmp_path / "m.onnx")
    assert_one_line_error(r, ".keras")
    r = cli("train", digits / "train", "-o", tmp_path / "m.keras", "--val-split", "1.5")
    assert_one_line_error(r, "--val-split")
    r = cli("train", digits / "train", "-o", tmp_path / "m.keras", "--image-size", "0")
    assert_one_line_error(r, "--image-size", "0 is not in the range 8<=x<=4096")
    assert r.code == 2


def test_imagenet_weights_offline_fail_fast(monkeypatch, tmp_path):
    """No cached weights and no network: a clear ModelError within seconds, not a hang."""
    from edgekit.errors import ModelError
    from edgekit.host import archs

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(archs, "WEIGHTS_HOST", ("192.0.2.1", 443))  # TEST-NET-1: never routable
    start = time.monotonic()
    with pytest.raises(ModelError, match="cannot download imagenet weights for mobilenetv2"):
        archs.build_model(archs.get_arch("mobilenetv2"), 96, 3, weights="imagenet")
    assert time.monotonic() - start < 30


def test_each_arch_builds_with_its_preprocessing():
    from edgekit.host.archs import ARCHS, build_model

    for name, arch in ARCHS.items():
        model = build_model(arch, 32 if name == "small" else 64, 4)
        assert model.output_shape == (None, 4)
        prep = arch.preprocess(64)
        white = prep.hwc(np.full((64, 64, 3), 255, np.uint8))
        black = prep.hwc(np.zeros((64, 64, 3), np.uint8))
        assert white.shape == (64, 64, 3) and (white > black).all()
    mobilenet = ARCHS["mobilenetv2"].preprocess(8)
    assert np.allclose(mobilenet.hwc(np.zeros((8, 8, 3), np.uint8)), -1.0)
    assert np.allclose(mobilenet.hwc(np.full((8, 8, 3), 255, np.uint8)), 1.0)


def test_cli_arch_choices_match_the_api():
    """The CLI lists the architectures without importing edgekit.host; both lists must agree."""
    from edgekit.cli.train import ARCHS as cli_archs
    from edgekit.host.archs import ARCHS

    assert tuple(cli_archs) == tuple(ARCHS)


def test_backbone_weights_from_a_file(tmp_path):
    from edgekit.errors import ModelError, UsageError
    from edgekit.host import import_tf
    from edgekit.host.archs import build_model, get_arch

    _, keras = import_tf()
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3))
    backbone.save_weights(tmp_path / "backbone.weights.h5")
    model = build_model(get_arch("mobilenetv2"), 64, 3, weights=str(tmp_path / "backbone.weights.h5"))
    want = backbone.get_layer("Conv1").get_weights()[0]
    assert np.array_equal(model.get_layer("Conv1").get_weights()[0], want)
    with pytest.raises(UsageError, match="does not exist"):
        build_model(get_arch("mobilenetv2"), 64, 3, weights=str(tmp_path / "missing.h5"))
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(ModelError, match="cannot load .*junk.h5 weights for mobilenetv2"):
        build_model(get_arch("mobilenetv2"), 64, 3, weights=str(tmp_path / "junk.h5"))
    with pytest.raises(UsageError, match="no pretrained weights"):
        build_model(get_arch("small"), 32, 3, weights="imagenet")
