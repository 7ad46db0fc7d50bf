"""Detection datasets: YOLO and COCO readers, bad annotations counted, unusable sets refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import assert_one_line_error


def _image(path, size=(48, 64)):
    import cv2

    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def make_yolo(root, labels=None, names=("cat", "dog")):
    """A tiny YOLO folder: 3 images per split, 48x64; ``labels`` maps image stem -> label text."""
    names_yaml = "[" + ", ".join(names) + "]"
    root.mkdir(parents=True)
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names_yaml}\n")
    default = {"a": "0 0.5 0.5 0.25 0.5\n", "b": "1 0.25 0.25 0.1 0.2\n0 0.75 0.5 0.2 0.2\n", "c": None}
    for split in ("train", "val"):
        for stem, text in {**default, **(labels or {})}.items():
            _image(root / "images" / split / f"{stem}.png")
            if text is not None:
                (root / "labels" / split).mkdir(parents=True, exist_ok=True)
                (root / "labels" / split / f"{stem}.txt").write_text(text)
    return root


def make_coco(root, annotations=None):
    """A tiny COCO folder: 2 images per split (48x64), category ids 3 (cat) and 7 (dog)."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        for name in ("x.png", "y.png"):
            _image(root / split / name)
        doc = {
            "images": [{"id": 1, "file_name": "x.png", "width": 64, "height": 48},
                       {"id": 2, "file_name": "y.png", "width": 64, "height": 48}],
            "annotations": annotations or [
                {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 30], "iscrowd": 0},
                {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 64, 48], "iscrowd": 0},
                {"id": 3, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            ],
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        }
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def test_yolo_boxes_in_pixels_and_background_images(tmp_path):
    from edgekit.data.detection import read_detection_set

    ds = read_detection_set(make_yolo(tmp_path / "yolo"))
    assert ds.format == "yolo" and ds.classes == ["cat", "dog"]
    train = {s.path.stem: s for s in ds.splits["train"]}
    assert train["a"].size == (48, 64)
    np.testing.assert_allclose(train["a"].boxes, [[24, 12, 40, 36]])  # cx .5*64, w .25*64; cy .5*48, h .5*48
    assert train["b"].classes.tolist() == [1, 0]
    np.testing.assert_allclose(train["b"].boxes[0], [12.8, 7.2, 19.2, 16.8], atol=1e-4)
    assert len(train["c"].boxes) == 0  # no label file: background
    assert ds.boxes("val") == 3 and not any(ds.skipped.values())


def test_roboflow_layout_with_paths_relative_to_a_split_folder(tmp_path):
    from edgekit.data.detection import read_detection_set

    root = make_yolo(tmp_path / "yolo")
    for split, name in (("train", "train"), ("val", "valid")):
        (root / name).mkdir(exist_ok=True)
        (root / "images" / split).rename(root / name / "images")
        (root / "labels" / split).rename(root / name / "labels")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: {0: cat, 1: dog}\n")
    ds = read_detection_set(root)
    assert ds.classes == ["cat", "dog"] and ds.boxes("train") == ds.boxes("val") == 3
    assert all(s.path.parent == root / "valid" / "images" for s in ds.splits["val"])


def test_coco_categories_by_id_and_crowd_ignored(tmp_path):
    from edgekit.data.detection import read_detection_set

    ds = read_detection_set(make_coco(tmp_path / "coco"))
    assert ds.format == "coco" and ds.classes == ["cat", "dog"]  # sorted by category id: 3, 7
    samples = {s.path.name: s for s in ds.splits["val"]}
    np.testing.assert_allclose(samples["x.png"].boxes, [[10, 5, 30, 35]])
    assert samples["x.png"].classes.tolist() == [1]
    assert samples["y.png"].classes.tolist() == [0]  # the crowd region is not an object


def test_bad_images_are_skipped_and_counted(tmp_path, caplog):
    from edgekit.data.detection import read_detection_set

    root = make_yolo(tmp_path / "yolo", {"d": "5 0.5 0.5 0.1 0.1\n", "e": "0 1.4 0.5 0.2 0.2\n", "f": "0 0.5 x 0.1\n"})
    (root / "images" / "train" / "g.png").write_bytes(b"not a png")
    (root / "labels" / "train" / "g.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    ds = read_detection_set(root)
    assert sorted(s.path.stem for s in ds.splits["train"]) == ["a", "b", "c"]
    assert ds.skipped["train"] == {"unknown class id": 1, "box outside the image": 1, "malformed label line": 1,
                                   "unreadable image": 1}
    assert "skipped" in caplog.text and "unknown class id" in ds.report()


def test_sample_detection_data_reads_the_same_in_both_layouts(detect_data):
    from edgekit.data.detection import read_detection_set

    yolo, coco = read_detection_set(detect_data / "yolo"), read_detection_set(detect_data / "coco")
    assert yolo.classes == coco.classes == [str(d) for d in range(10)]
    for split in ("train", "val"):
        assert len(yolo.splits[split]) == len(coco.splits[split]) > 50
        for a, b in zip(yolo.splits[split], coco.splits[split]):
            assert a.path.name == b.path.name and a.size == b.size == (240, 320)
            np.testing.assert_allclose(a.boxes, b.boxes, atol=0.01)  # YOLO text keeps 6 decimals
            assert a.classes.tolist() == b.classes.tolist()
    truth = json.loads((detect_data / "val.boxes.json").read_text())
    assert len(truth) == len(coco.splits["val"])
    np.testing.assert_allclose([o["box"] for o in truth[0]], coco.splits["val"][0].boxes)


def _train(cli, data, tmp_path):
    return cli("train", data, "--task", "detect", "-o", tmp_path / "m.keras", "--epochs", "1")


def test_no_labels_is_one_line(cli, tmp_path):
    root = make_yolo(tmp_path / "yolo")
    shutil.rmtree(root / "labels" / "train")
    assert_one_line_error(_train(cli, root, tmp_path), "train split has no labels")


def test_wrong_class_ids_everywhere_is_one_line(cli, tmp_path):
    root = make_yolo(tmp_path / "yolo", {"a": "2 0.5 0.5 0.1 0.1\n", "b": "7 0.5 0.5 0.1 0.1\n"})
    assert_one_line_error(_train(cli, root, tmp_path), "train split is unusable", "unknown class id")


def test_boxes_out_of_range_everywhere_is_one_line(cli, tmp_path):
    root = make_yolo(tmp_path / "yolo", {"a": "0 0.5 0.5 1.5 0.1\n", "b": "1 -0.5 0.5 0.1 0.1\n"})
    assert_one_line_error(_train(cli, root, tmp_path), "unusable", "box outside the image")


def test_empty_split_is_one_line(cli, tmp_path):
    root = make_yolo(tmp_path / "yolo")
    for p in (root / "images" / "val").iterdir():
        p.unlink()
    assert_one_line_error(_train(cli, root, tmp_path), "val split is empty")


def test_missing_split_and_unknown_layout_are_one_line(cli, tmp_path):
    root = make_yolo(tmp_path / "yolo")
    shutil.rmtree(root / "images" / "val")
    assert_one_line_error(_train(cli, root, tmp_path), "val split is missing")
    (tmp_path / "plain").mkdir()
    assert_one_line_error(_train(cli, tmp_path / "plain", tmp_path), "neither a YOLO dataset", "nor a COCO dataset")


def test_coco_bad_annotations_are_one_line(cli, tmp_path):
    root = make_coco(tmp_path / "unknown", [{"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]}])
    assert_one_line_error(_train(cli, root, tmp_path), "unusable", "unknown class id")
    root = make_coco(tmp_path / "outside", [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [60, 1, 20, 5]}])
    assert_one_line_error(_train(cli, root, tmp_path), "unusable", "box outside the image")
    root = make_coco(tmp_path / "corrupt")
    (root / "annotations" / "instances_val.json").write_text("{not json")
    assert_one_line_error(_train(cli, root, tmp_path), "cannot read", "instances_val.json")


def test_val_split_option_is_refused_for_detection(cli, tmp_path):
    root = make_yolo(tmp_path / "yolo")
    result = cli("train", root, "--task", "detect", "-o", tmp_path / "m.keras", "--val-split", "0.1")
    assert_one_line_error(result, "--val-split is for --task classify")


@pytest.mark.parametrize("size", [100, 4])
def test_detector_image_size_must_fit_the_stride(cli, tmp_path, size):
    root = make_yolo(tmp_path / "yolo")
    result = cli("train", root, "--task", "detect", "-o", tmp_path / "m.keras", "--image-size", size)
    assert_one_line_error(result, "--image-size")
