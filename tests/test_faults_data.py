"""Issue 19 items 7-8 (and 13's named skips): bad dataset values give counted, named skips or one
clear line, never an internal error; duplicate ids and malformed names are refused."""

from __future__ import annotations

import json
import logging

import pytest

from edgekit.data.detection import read_detection_set
from edgekit.errors import InputError, some
from test_detection_data import make_coco, make_yolo


def _edit_coco(root, edit):
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    return root


# ---- 7. internal errors on bad values ------------------------------------------------------------
@pytest.mark.parametrize("cls", ["nan", "inf", "-inf", "1e400"])
def test_7_yolo_class_id_not_finite_is_a_counted_named_skip(tmp_path, cls, caplog):
    root = make_yolo(tmp_path / "y", labels={"a": f"{cls} 0.5 0.5 0.2 0.2\n"})
    with caplog.at_level(logging.WARNING, logger="edgekit"):
        ds = read_detection_set(root)
    assert ds.skipped["train"]["unknown class id"] == 1
    assert "a.png (unknown class id)" in caplog.text


@pytest.mark.parametrize("field,value", [("image_id", [1]), ("image_id", {"id": 1}),
                                         ("category_id", [7]), ("category_id", {"id": 7}), ("category_id", "7")])
def test_7_coco_annotation_ids_of_the_wrong_kind_are_skipped_not_a_crash(tmp_path, field, value):
    def edit(doc):
        doc["annotations"][0][field] = value
    ds = read_detection_set(_edit_coco(make_coco(tmp_path / "c"), edit))
    if field == "category_id":  # image 1's only box: its image is skipped, counted by reason
        assert ds.skipped["val"]["unknown class id"] == 1
    else:  # an annotation of no listed image: ignored, image 1 is background
        assert len(ds.splits["val"]) == 2 and ds.boxes("val") == 1


@pytest.mark.parametrize("entry,value,words", [
    ("images", {"id": [1]}, "images[0].id is [1]"),
    ("images", {"id": {"a": 1}}, "images[0].id"),
    ("images", {"file_name": 5}, "file_name is 5"),
    ("images", {"file_name": None}, "file_name is None"),
    ("categories", {"id": [7]}, "categories[0].id"),
    ("categories", {"id": "7"}, "mix number and string ids"),
])
def test_7_coco_image_and_category_values_of_the_wrong_kind_are_one_line(tmp_path, entry, value, words):
    def edit(doc):
        doc[entry][0].update(value)
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        read_detection_set(_edit_coco(make_coco(tmp_path / "c"), edit))


def test_7_bad_coco_values_through_validate_and_train_are_one_line(tmp_path, tiny_bundle, cli):
    from conftest import assert_one_line_error

    root = _edit_coco(make_coco(tmp_path / "c"), lambda doc: doc["images"][0].update(file_name=None))
    assert_one_line_error(cli("train", root, "-o", tmp_path / "m.keras", "--task", "detect", "--epochs", "1"),
                          "file_name is None")


# ---- 8. silently wrong data refused --------------------------------------------------------------
def test_8_coco_duplicate_image_ids_are_refused(tmp_path):
    def edit(doc):
        doc["images"][1]["id"] = doc["images"][0]["id"]
    with pytest.raises(InputError, match=r"images\[1\] repeats id 1 of images\[0\]"):
        read_detection_set(_edit_coco(make_coco(tmp_path / "c"), edit))


def test_8_coco_duplicate_category_ids_and_names_are_refused(tmp_path):
    def same_id(doc):
        doc["categories"].append({"id": 7, "name": "bird"})
    with pytest.raises(InputError, match="repeats id 7"):
        read_detection_set(_edit_coco(make_coco(tmp_path / "a"), same_id))

    def same_name(doc):
        doc["categories"][1]["name"] = "dog"
    with pytest.raises(InputError, match="category names given twice: dog"):
        read_detection_set(_edit_coco(make_coco(tmp_path / "b"), same_name))


@pytest.mark.parametrize("names,words", [("[[a, b], c]", "names[0] is ['a', 'b']"), ("[a, null]", "names[1] is None"),
                                         ("{0: a, 1: null}", "names[1] is None"), ("[a, a]", "given twice: a")])
def test_8_yolo_names_nested_null_or_twice_are_refused(tmp_path, names, words):
    root = make_yolo(tmp_path / "y")
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names}\n")
    with pytest.raises(InputError) as info:
        read_detection_set(root)
    assert words in str(info.value)


def test_8_long_name_lists_in_errors_show_a_count():
    assert some([f"c{i}" for i in range(20)]) == "c0, c1, c2, c3, c4, c5, c6, c7, … (20 in all)"
    assert some(["a", "b"]) == "a, b"


def test_8_detection_gate_class_error_counts_the_names(tmp_path):
    from edgekit.quant.detection_gate import _class_map

    with pytest.raises(InputError, match=r"\(20 in all\)"):
        _class_map([f"n{i}" for i in range(20)], ["a", "b"], tmp_path)


# ---- 13. skipped annotations named: the first few, all with -v -----------------------------------
def test_13_skipped_images_are_named_first_few_then_all_at_debug(tmp_path, caplog):
    labels = {f"bad{i}": "9 0.5 0.5 0.2 0.2\n" for i in range(7)}
    root = make_yolo(tmp_path / "y", labels=labels)
    with caplog.at_level(logging.DEBUG, logger="edgekit"):
        read_detection_set(root)
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "train" in r.getMessage())
    assert "bad0.png (unknown class id)" in warning and "and 2 more (-v names all)" in warning
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "train" in r.getMessage()]
    assert any("bad6.png" in m for m in debug)
