"""Detection datasets: a YOLO or COCO folder -> one list of (image, pixel boxes, class ids) per split.

* YOLO (Ultralytics/Roboflow): ``DATA/data.yaml`` (or the YAML file itself) with ``names`` (and optionally ``path``, ``train``,
  ``val``), ``images/{train,val}/*`` and ``labels/{train,val}/*.txt`` (``class cx cy w h``, normalised).
  An image without a label file is background.
* COCO: ``DATA/annotations/instances_{train,val}*.json`` with the images in ``DATA/{train,val}*/``.

Every image is decoded once here (its size and readability). An image with a bad annotation (unknown
class, box outside the image or empty, malformed line) or that cannot be read is skipped and counted
by reason; a dataset left with no usable split is refused with one clear line. Pure Python, numpy and
OpenCV: no TensorFlow.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import InputError, some
from edgekit.jsonfile import read_json
from edgekit.images import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
TOLERANCE = 0.01  # boxes may overshoot the image by this fraction of its side (then are clipped)


@dataclass
class Sample:
    """One image: its path, size (height, width), boxes ``[k, 4]`` as pixel corners and class ids ``[k]``."""

    path: Path
    size: tuple[int, int]
    boxes: np.ndarray
    classes: np.ndarray


@dataclass
class DetectionSet:
    """A read dataset: class names, samples per split and the images skipped per split and reason."""

    root: Path
    format: str  # "yolo" or "coco"
    classes: list[str]
    splits: dict[str, list[Sample]]
    skipped: dict[str, Counter] = field(default_factory=dict)

    def boxes(self, split: str) -> int:
        return sum(len(s.boxes) for s in self.splits[split])

    def report(self) -> str:
        """One line per split: images, boxes and what was skipped."""
        lines = []
        for split, samples in self.splits.items():
            line = f"{split}: {len(samples)} images, {self.boxes(split)} boxes"
            if self.skipped.get(split):
                line += "; skipped " + describe(self.skipped[split])
            lines.append(line)
        return "\n".join(lines)


class Skips(Counter):
    """Skipped images counted by reason, with their file names in order (``files``: (name, reason))."""

    def __init__(self):
        super().__init__()
        self.files: list[tuple[str, str]] = []

    def add(self, why: str, path: Path) -> None:
        self[why] += 1
        self.files.append((path.name, why))


SHOWN = 5  # skipped files named in the warning; all of them with -v


def describe(counts: Counter) -> str:
    """``Counter({"unknown class id": 2, ...})`` -> ``"2 images with unknown class ids, ..."``."""
    parts = [f"{n} image{'s' if n != 1 else ''} ({reason})" for reason, n in counts.most_common()]
    return ", ".join(parts)


def read_detection_set(data_dir: str | os.PathLike, splits: tuple = SPLITS) -> DetectionSet:
    """Read ``splits`` of a YOLO (``data.yaml``) or COCO (``annotations/``) folder; InputError when it is
    unusable (``validate`` reads only the val split)."""
    root = Path(data_dir)
    if root.is_file() and root.suffix in (".yaml", ".yml"):  # Ultralytics style: DATA/data.yaml
        dataset = read_yolo(root.parent, splits, root)
    elif not root.is_dir():
        raise InputError(f"{root} is not a folder" if root.exists() else f"{root} does not exist")
    elif (root / "data.yaml").is_file() or (root / "data.yml").is_file():
        dataset = read_yolo(root, splits)
    elif (root / "annotations").is_dir():
        dataset = read_coco(root, splits)
    else:
        raise InputError(
            f"{root} is neither a YOLO dataset (data.yaml, images/, labels/) "
            "nor a COCO dataset (annotations/instances_train.json, train/)"
        )
    _check_usable(dataset)
    return dataset


def _check_usable(dataset: DetectionSet) -> None:
    for split, samples in dataset.splits.items():
        if dataset.boxes(split):
            continue
        skipped = dataset.skipped.get(split)
        why = f"every annotated image was skipped: {describe(skipped)}" if skipped else "it has no boxes"
        raise InputError(f"{dataset.root}: the {split} split is unusable ({len(samples)} images kept; {why})")
    for split, skipped in dataset.skipped.items():
        if skipped:
            files = getattr(skipped, "files", [])
            named = ", ".join(f"{name} ({why})" for name, why in files[:SHOWN])
            more = f" and {len(files) - SHOWN} more (-v names all)" if len(files) > SHOWN else ""
            log.warning("%s %s: skipped %s%s", dataset.root.name, split, describe(skipped),
                        f": {named}{more}" if named else "")
            for name, why in files[SHOWN:]:
                log.debug("%s %s: skipped %s (%s)", dataset.root.name, split, name, why)


def _readable_size(path: Path, skipped: Skips) -> tuple[int, int] | None:
    try:
        return read_image(path).shape[:2]
    except ImageReadError:
        skipped.add("unreadable image", path)
        return None


def _check_boxes(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    """Pixel corners clipped to the image, or None and why they are bad."""
    h, w = size
    if len(boxes) == 0:
        return boxes, None
    if not np.isfinite(boxes).all():
        return None, "malformed annotation"
    if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
        return None, "empty box"
    lo = -TOLERANCE * np.array([w, h, w, h])
    hi = (1 + TOLERANCE) * np.array([w, h, w, h])
    if ((boxes < lo) | (boxes > hi)).any():
        return None, "box outside the image"
    return np.clip(boxes, 0, [w, h, w, h]).astype(np.float32), None


# ---- YOLO -------------------------------------------------------------------------------------
def read_yolo(root: Path, names: tuple = SPLITS, spec_path: Path | None = None) -> DetectionSet:
    """Read a YOLO-layout folder (see the module docstring), described by ``spec_path`` (default its data.yaml)."""
    import yaml

    if spec_path is None:
        spec_path = root / "data.yaml" if (root / "data.yaml").is_file() else root / "data.yml"
    try:
        spec = yaml.safe_load(spec_path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read {spec_path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(spec, dict):
        raise InputError(f"{spec_path} is not a YAML mapping")
    classes = _yolo_names(spec.get("names"), spec_path)
    base = Path(spec["path"]) if isinstance(spec.get("path"), str) else root
    base = base if base.is_absolute() else root / base
    splits, skipped = {}, {}
    for split in names:
        images_dir = _yolo_split_dir(spec, split, base, root, spec_path)
        splits[split], skipped[split] = _read_yolo_split(images_dir, _labels_dir(images_dir), classes, split)
    return DetectionSet(root, "yolo", classes, splits, skipped)


def _yolo_names(names, where: Path) -> list[str]:
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            keys = None
        if keys != list(range(len(names))):
            raise InputError(f"{where}: names must be numbered 0..N-1")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise InputError(f"{where} has no class names (a 'names:' list)")
    bad = [i for i, n in enumerate(names) if isinstance(n, bool) or not isinstance(n, (str, int)) or str(n).strip() == ""]
    if bad:
        raise InputError(f"{where}: names[{bad[0]}] is {names[bad[0]]!r}, not a class name (a list of strings)")
    if len(set(map(str, names))) != len(names):
        twice = sorted({str(n) for n in names if list(map(str, names)).count(str(n)) > 1})
        raise InputError(f"{where}: class names given twice: {some(twice)}")
    return [str(n) for n in names]


def _yolo_split_dir(spec: dict, split: str, base: Path, root: Path, where: Path) -> Path:
    value = spec.get(split, f"images/{split}")
    if not isinstance(value, str):
        raise InputError(f"{where}: {split} must be one folder (image lists are not supported)")
    candidates = [base / value, root / value]
    if value.startswith("../"):  # Roboflow writes paths relative to a folder below the dataset
        candidates.append(root / value[3:])
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise InputError(f"{root}: the {split} split is missing (no folder {value})")


def _labels_dir(images_dir: Path) -> Path:
    """Ultralytics' rule: the last ``images`` path component becomes ``labels``."""
    parts = list(images_dir.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return images_dir


def _read_yolo_split(images_dir: Path, labels_dir: Path, classes: list[str], split: str):
    images = list_images(images_dir)
    if not images:
        raise InputError(f"the {split} split is empty: no images in {images_dir}")
    label_files = [labels_dir / p.relative_to(images_dir).with_suffix(".txt") for p in images]
    if not any(f.is_file() for f in label_files):
        raise InputError(f"the {split} split has no labels: no .txt label files in {labels_dir} for {images_dir}")
    samples, skipped = [], Skips()
    for path, label_file in zip(images, label_files):
        size = _readable_size(path, skipped)
        if size is None:
            continue
        rows, why = _yolo_rows(label_file, len(classes)) if label_file.is_file() else (np.zeros((0, 5)), None)
        if why is None:
            h, w = size
            cx, cy, bw, bh = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
            boxes = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
            boxes, why = _check_boxes(boxes, size)
        if why is not None:
            skipped.add(why, path)
            continue
        samples.append(Sample(path, size, boxes.astype(np.float32), rows[:, 0].astype(np.int64)))
    return samples, skipped


def _yolo_rows(label_file: Path, n_classes: int) -> tuple[np.ndarray, str | None]:
    """``[k, 5]`` rows (class, cx, cy, w, h) of a label file; polygons become their bounding box."""
    try:
        text = label_file.read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return np.zeros((0, 5)), "unreadable label file"
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            return np.zeros((0, 5)), "malformed label line"
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < n_classes:
            return np.zeros((0, 5)), "unknown class id"
        if len(values) == 5:
            rows.append(values)
        elif len(values) >= 7 and len(values) % 2 == 1:  # a segmentation polygon: x1 y1 x2 y2 ...
            xs, ys = values[1::2], values[2::2]
            x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
            rows.append([cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
        else:
            return np.zeros((0, 5)), "malformed label line"
    return np.asarray(rows, np.float64).reshape(-1, 5), None


# ---- COCO -------------------------------------------------------------------------------------
def read_coco(root: Path, names: tuple = SPLITS) -> DetectionSet:
    """Read a COCO-layout folder (see the module docstring); classes are the train categories by id."""
    classes, category_index = None, None
    splits, skipped = {}, {}
    for split in names:
        ann_path = _coco_annotations(root, split)
        doc = coco_json(ann_path)
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        if classes is None:
            classes = [c["name"] if isinstance(c.get("name"), str) and c["name"].strip() else str(c["id"]) for c in cats]
            twice = sorted({n for n in classes if classes.count(n) > 1})
            if twice:
                raise InputError(f"{ann_path}: category names given twice: {some(twice)}")
            category_index = {c["id"]: i for i, c in enumerate(cats)}
            if not classes:
                raise InputError(f"{ann_path} has no categories")
        images_dir = root / ann_path.stem[len("instances_"):]
        if not images_dir.is_dir():
            raise InputError(f"the {split} split is missing: no folder {images_dir} for {ann_path.name}")
        splits[split], skipped[split] = _read_coco_split(doc, images_dir, category_index, split, ann_path)
    return DetectionSet(root, "coco", classes, splits, skipped)


def _coco_annotations(root: Path, split: str) -> Path:
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if not found:
        raise InputError(f"the {split} split is missing: no {root / 'annotations'}/instances_{split}.json")
    if len(found) > 1:
        raise InputError(f"several {split} annotation files in {root / 'annotations'}: "
                         f"{', '.join(p.name for p in found)}")
    return found[0]


def coco_json(path: Path) -> dict:
    """A COCO instances file, its categories and images checked (id kinds, duplicates, file names)."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise InputError(f"{path} is not COCO instances JSON (needs images, annotations and categories lists)")
    _check_entries(doc["categories"], "categories", "id", path)
    _check_entries(doc["images"], "images", "id", path)
    for i, im in enumerate(doc["images"]):
        name = im.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{path}: images[{i}].file_name is {name!r}, not a file name")
    return doc


def _check_entries(entries: list, what: str, key: str, path: Path) -> None:
    """Each entry a dict whose ``key`` is an int or a string, all of one type and none twice; else one line."""
    kinds, seen = set(), {}
    for i, entry in enumerate(entries):
        value = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise InputError(f"{path}: {what}[{i}].{key} is {value!r}; ids are numbers or strings")
        kinds.add(type(value))
        if value in seen:
            raise InputError(f"{path}: {what}[{i}] repeats {key} {value!r} of {what}[{seen[value]}]; ids must be unique")
        seen[value] = i
    if len(kinds) > 1:
        raise InputError(f"{path}: {what} mix number and string ids; use one kind")


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _read_coco_split(doc: dict, images_dir: Path, category_index: dict, split: str, ann_path: Path):
    if not doc["images"]:
        raise InputError(f"the {split} split is empty: {ann_path.name} lists no images")
    per_image: dict = {im["id"]: [] for im in doc["images"]}
    bad: dict = {}
    orphans = 0
    for ann in doc["annotations"]:
        if not isinstance(ann, dict) or not _is_id(ann.get("image_id")) or ann["image_id"] not in per_image:
            orphans += 1
            continue
        if ann.get("iscrowd"):
            continue  # crowd regions are "ignore" areas, not objects
        image_id = ann["image_id"]
        bbox = ann.get("bbox")
        if not _is_id(ann.get("category_id")) or ann["category_id"] not in category_index:
            bad.setdefault(image_id, "unknown class id")
        elif not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            bad.setdefault(image_id, "malformed annotation")
        else:
            x, y, w, h = bbox
            per_image[image_id].append(([x, y, x + w, y + h], category_index[ann["category_id"]]))
    if orphans:
        log.warning("%s: %d annotation(s) refer to no listed image; ignored", ann_path.name, orphans)
    if not any(per_image.values()) and not bad:
        raise InputError(f"the {split} split has no labels: {ann_path.name} holds no annotations")
    samples, skipped = [], Skips()
    for im in doc["images"]:
        path = images_dir / im["file_name"]
        if im["id"] in bad:
            skipped.add(bad[im["id"]], path)
            continue
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.add("missing image", path)
            continue
        size = _readable_size(path, skipped)
        if size is None:
            continue
        anns = per_image[im["id"]]
        boxes = np.asarray([a[0] for a in anns], np.float64).reshape(-1, 4)
        boxes, why = _check_boxes(boxes, size)
        if why is not None:
            skipped.add(why, path)
            continue
        samples.append(Sample(path, size, boxes, np.asarray([a[1] for a in anns], np.int64)))
    return samples, skipped
