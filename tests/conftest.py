"""Shared fixtures. Models are trained and converted once per session and reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

REPO = Path(__file__).resolve().parents[1]


class CliResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def cli(capsys):
    """Run ``edgekit ARGS`` in this process; returns code, stdout and stderr."""
    from edgekit.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def assert_one_line_error(result: CliResult, *fragments: str) -> None:
    """A user error: non-zero exit, one ``edgekit: error:`` line, no traceback, naming ``fragments``."""
    assert result.code != 0, result
    assert "Traceback" not in result.err, result
    errors = [line for line in result.err.splitlines() if line.startswith("edgekit: error:")]
    assert len(errors) == 1, result
    for fragment in fragments:
        assert fragment in errors[0], result


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The ONNX-only colour classifier as an fp32 bundle (no TensorFlow needed)."""
    from edgekit.tiny import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The sample image set (real handwritten digits): train/, val/, val.mp4."""
    from edgekit.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("digits") / "data")


@pytest.fixture(scope="session")
def trained_model(digits, tmp_path_factory):
    """A small CNN trained for a few epochs on the digits (a .keras file with its sidecars)."""
    pytest.importorskip("tensorflow")
    from edgekit.host.train import train

    out = tmp_path_factory.mktemp("trained") / "digits.keras"
    train(digits / "train", out, epochs=4, batch_size=64, image_size=32, seed=0)
    return out


@pytest.fixture(scope="session")
def fp32_bundle(trained_model, tmp_path_factory):
    """The trained digits model exported to a bundle for JetPack 6.1."""
    from edgekit.bundle import Bundle
    from edgekit.host.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "digits"
    export_bundle(trained_model, out, target="jetpack-6.1")
    return Bundle.load(out)


@pytest.fixture(scope="session")
def colour_media():
    """Writers of solid-colour videos and image folders whose tiny_bundle labels are known."""
    import cv2
    import numpy as np

    bgr = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}

    class ColourMedia:
        @staticmethod
        def frame(label, size=(48, 64)):
            return np.full((*size, 3), bgr[label], np.uint8)

        @staticmethod
        def labels(n, run=1):
            """n labels cycling red, green, blue, each repeated ``run`` times."""
            return [list(bgr)[(i // run) % 3] for i in range(n)]

        @classmethod
        def video(cls, path, labels, fps=15.0, size=(48, 64)):
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
            for label in labels:
                writer.write(cls.frame(label, size))
            writer.release()
            return path

        @classmethod
        def folder(cls, path, labels, size=(48, 64)):
            path.mkdir(parents=True, exist_ok=True)
            for i, label in enumerate(labels):
                cv2.imwrite(str(path / f"{i:04d}.png"), cls.frame(label, size))
            return path

    return ColourMedia


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Engines and ``auto``'s measured timings go to a folder of this test session, not ~/.cache/edgekit."""
    import os

    old = os.environ.get("EDGEKIT_CACHE_DIR")
    os.environ["EDGEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgekit-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEKIT_CACHE_DIR", None)
    else:
        os.environ["EDGEKIT_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _reset_edgekit_logging():
    """A CLI run points the ``edgekit`` logger at that test's (later closed) stderr; undo it after each test."""
    yield
    import logging

    logger = logging.getLogger("edgekit")
    logger.handlers[:] = []
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def int8_bundle(fp32_bundle, digits, tmp_path_factory):
    """The trained digits bundle plus INT8 (Q/DQ) and FP16 models, calibrated on digits/train
    (method auto; the held-out part of train gates it). digits/val stays unseen for the tests."""
    import shutil

    from edgekit.bundle import Bundle
    from edgekit.quant.quantize import quantize_bundle

    out = tmp_path_factory.mktemp("int8") / "digits"
    shutil.copytree(fp32_bundle.path, out)
    quantize_bundle(out, digits / "train", num_images=500, holdout=200, progress=False)
    return Bundle.load(out)


@pytest.fixture(scope="session")
def detect_data(tmp_path_factory):
    """The sample detection set (digits pasted on real photos): yolo/, coco/, val.mp4, val.boxes.json."""
    from edgekit.sample_data import write_detection_sample_data

    return write_detection_sample_data(tmp_path_factory.mktemp("detect") / "data")


@pytest.fixture(scope="session")
def track_sample(tmp_path_factory):
    """The tracking sample: track.mp4 (cards walking over a real photo), track.truth.json, cards.bundle."""
    from edgekit.sample_tracking import write_tracking_sample

    return write_tracking_sample(tmp_path_factory.mktemp("track") / "data")
