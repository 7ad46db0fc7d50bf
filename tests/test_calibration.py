"""Calibration sets: folders and videos, seeded choice, the one Preprocess, bad inputs."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from edgekit.errors import InputError
from edgekit.images import read_image
from edgekit.preprocess import Preprocess
from edgekit.quant.calibration import MIN_IMAGES, DataReader, calibration_set

PREP = Preprocess(size=(32, 32), color="RGB", scale=1 / 255)


def _noise_folder(path, n, size=(40, 30), nested=True, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = path / (f"sub{i % 3}" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        ext = (".png", ".jpg", ".bmp")[i % 3]
        cv2.imwrite(str(folder / f"{i:04d}{ext}"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return path


def test_folder_is_recursive_seeded_and_split(tmp_path):
    folder = _noise_folder(tmp_path / "imgs", 60)
    (folder / "notes.txt").write_text("not an image")
    a = calibration_set(folder, PREP, num_images=40, holdout=10, seed=1, progress=False)
    b = calibration_set(folder, PREP, num_images=40, holdout=10, seed=1, progress=False)
    c = calibration_set(folder, PREP, num_images=40, holdout=10, seed=2, progress=False)
    assert len(a) == 50 and [i.path for i in a.items] == [i.path for i in b.items]
    assert [i.path for i in a.items] != [i.path for i in c.items]
    assert {i.path.suffix for i in a.items} == {".png", ".jpg", ".bmp"}  # found in subfolders
    cal, held = a.split()
    assert len(cal) == 40 and len(held) == 10
    assert not {i.path for i in cal.items} & {i.path for i in held.items}
    x, _ = held.tensors()
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.float32


def test_labelled_folder_named_by_labels_gives_labels(digits):
    labels = [str(d) for d in range(10)]
    cal = calibration_set(digits / "val", PREP, num_images=50, labels=labels, progress=False)
    assert cal.labelled
    assert all(item.path.parent.name == labels[item.label] for item in cal.items)
    unlabelled = calibration_set(digits / "val", PREP, num_images=50, labels=["cat", "dog"], progress=False)
    assert not unlabelled.labelled


def test_tensors_are_made_by_the_bundle_preprocess(tmp_path, monkeypatch):
    """Every calibration tensor is Preprocess.__call__ of the decoded image, nothing else."""
    folder = _noise_folder(tmp_path / "imgs", 20, size=(50, 70))
    cal = calibration_set(folder, PREP, num_images=20, progress=False)
    calls = []
    original = Preprocess.__call__

    def spy(self, frame):
        out = original(self, frame)
        calls.append(out)
        return out

    monkeypatch.setattr(Preprocess, "__call__", spy)
    x, _ = cal.tensors(batch_size=8)
    assert len(calls) == 20
    np.testing.assert_array_equal(x, np.stack(calls))
    monkeypatch.undo()
    for item, tensor in zip(cal.items, x, strict=True):
        np.testing.assert_array_equal(tensor, PREP(read_image(item.path)))


def test_calibration_and_runtime_loop_share_preprocessing(tiny_bundle, tmp_path, monkeypatch):
    """The runtime loop feeds the model exactly the tensors calibration measures ranges on."""
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.stream import postprocess
    from edgekit.stream.pipeline import Pipeline
    from edgekit.stream.capture import Capture
    from edgekit.stream.sources import open_source

    folder = _noise_folder(tmp_path / "imgs", 18, size=(90, 120), nested=False)
    fed = []

    class Recording(OnnxRuntimeRunner):
        def infer_impl(self, batch):
            fed.extend(batch)
            return super().infer_impl(batch)

    runner = Recording(tiny_bundle.model_path())
    Pipeline(tiny_bundle, Capture(open_source(folder)), runner, postprocess.for_bundle(tiny_bundle)).run()
    cal = calibration_set(folder, tiny_bundle.preprocess, num_images=18, progress=False)
    x, _ = cal.tensors()
    assert len(fed) == 18
    assert sorted(t.tobytes() for t in fed) == sorted(t.tobytes() for t in x)


def test_video_sampled_every_n_frames(digits):
    labels = (digits / "val.labels.txt").read_text().split()
    cal = calibration_set(digits / "val.mp4", PREP, num_images=1000, every=5, progress=False)
    assert len(cal) == len(range(0, len(labels), 5))
    assert {i.frame % 5 for i in cal.items} == {0}
    x, _ = cal.tensors()
    assert x.shape == (len(cal), 3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_not_a_video_and_an_image_file(tmp_path, digits):
    fake = tmp_path / "clip.mp4"
    fake.write_bytes(b"this is not a video")
    with pytest.raises(InputError, match="not a readable video"):
        calibration_set(fake, PREP, progress=False)
    image = next((digits / "val" / "3").iterdir())
    with pytest.raises(InputError, match="give a folder of images or a video"):
        calibration_set(image, PREP, progress=False)


def test_empty_tiny_and_small_folders(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no calibration images"):
        calibration_set(tmp_path / "empty", PREP, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        calibration_set(tmp_path / "missing", PREP, progress=False)
    tiny = _noise_folder(tmp_path / "tiny", MIN_IMAGES - 6)
    with pytest.raises(InputError, match=f"at least {MIN_IMAGES} are needed"):
        calibration_set(tiny, PREP, progress=False)
    small = _noise_folder(tmp_path / "small", 60)
    with caplog.at_level(logging.WARNING, logger="edgekit"):
        cal = calibration_set(small, PREP, num_images=500, holdout=200, progress=False)
    assert "only" in caplog.text and "recommended" in caplog.text
    assert cal.holdout == 12 and len(cal) == 60  # a small set holds out a fifth of itself


def test_grey_16bit_and_huge_images(tmp_path, caplog, monkeypatch):
    """Grey and 16-bit images are converted as at run time; unreadable ones are skipped and counted."""
    import edgekit.images

    folder = _noise_folder(tmp_path / "imgs", 20, nested=False)
    grey = np.full((30, 40), 200, np.uint8)
    cv2.imwrite(str(folder / "grey.png"), grey)
    cv2.imwrite(str(folder / "deep.png"), np.full((30, 40, 3), 50000, np.uint16))
    cv2.imwrite(str(folder / "huge.png"), np.zeros((400, 400, 3), np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    monkeypatch.setattr(edgekit.images, "MAX_PIXELS", 100_000)
    cal = calibration_set(folder, PREP, num_images=100, progress=False)
    with caplog.at_level(logging.WARNING, logger="edgekit"):
        x, _ = cal.tensors()
    assert len(x) == 22 and cal.skipped == 2
    assert "2 of 24 calibration images could not be read" in caplog.text
    by_name = {item.path.name: item for item in cal.items}
    order = [i.path.name for i in cal.items if i.path.name not in ("huge.png", "broken.jpg")]
    np.testing.assert_allclose(x[order.index("grey.png")], 200 / 255, rtol=1e-6)
    np.testing.assert_allclose(x[order.index("deep.png")], (50000 >> 8) / 255, rtol=1e-6)
    assert "huge.png" in by_name


def test_data_reader_serves_one_batch_per_collection(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader

    folder = _noise_folder(tmp_path / "imgs", 20)
    reader = DataReader(calibration_set(folder, PREP, num_images=20, progress=False), "input", batch_size=8)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 3
    sizes = []
    while not reader.done:
        reader.next_batch()
        first = reader.get_next()
        assert reader.get_next() is None  # one batch per collect_data call
        sizes.append(len(first["input"]))
    assert sizes == [8, 8, 4]
    reader.rewind()
    assert not reader.done and reader.get_next()["input"].shape == (8, 3, 32, 32)


def test_histograms_of_a_saturated_tensor():
    """A sigmoid stuck at 1.0 (untrained EfficientNet): onnxruntime's float32 bins over [min, max] fail,
    edgekit's collector bins [0, max] in float64 and widens by whole bins for a larger batch."""
    import numpy as np

    from edgekit.quant.qdq import AbsHistogramCollector

    saturated = np.array([0.99999994, 1.0] * 50, np.float32)
    collector = AbsHistogramCollector(2048)
    collector.collect({"t": [saturated]})
    counts, edges, low, high = collector.histogram_dict["t"]
    assert counts.sum() == 100 and edges[0] == 0 and edges[-1] == pytest.approx(1.0)
    assert (low, high) == (pytest.approx(0.99999994), 1.0)
    collector.collect({"t": [np.array([-3.0, 0.5], np.float32)]})
    counts, edges, low, high = collector.histogram_dict["t"]
    assert counts.sum() == 102 and edges[-1] >= 3.0 and low == -3.0
    assert np.allclose(np.diff(edges), edges[1] - edges[0])  # whole bins of the first width
