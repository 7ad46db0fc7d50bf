"""Small real image sets that the host install brings along: scikit-learn's handwritten digits.

1,797 scanned digits (8x8, 17 grey levels; UCI "Optical Recognition of Handwritten Digits") are
upscaled and written as a class-per-folder image set, split into ``train/`` and a held-out ``val/``,
plus ``val.mp4``: the held-out digits as a video, with their labels in ``val.labels.txt``.

For detection (:func:`write_detection_sample_data`) the digits are pasted on random crops of
scikit-learn's two real photos, with their boxes, in YOLO and COCO layouts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgekit.atomic import atomic_dir
from edgekit.errors import EdgekitError, UsageError

MAX_SIZE = 1024  # the digits are 8x8 scans: larger only costs memory and disk


def load_digits_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 grey images of ``size`` x ``size`` and their labels 0-9."""
    import cv2

    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise EdgekitError("the sample data needs scikit-learn: pip install 'edgekit[host]'") from exc
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.float32)
    big = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_CUBIC) for im in images])
    return np.clip(big, 0, 255).astype(np.uint8), digits.target.astype(np.int64)


def write_sample_data(
    out: str | os.PathLike,
    size: int = 32,
    val_fraction: float = 0.2,
    video_size: int = 128,
    fps: int = 15,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write ``train/``, ``val/``, ``val.mp4`` and ``val.labels.txt`` under ``out``; return it."""
    import cv2

    if not 8 <= size <= MAX_SIZE:
        raise UsageError(f"--image-size must be between 8 and {MAX_SIZE}, got {size}")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-split must be between 0 and 1 (exclusive), got {val_fraction}")
    images, labels = load_digits_images(size)
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(round(len(images) * val_fraction))
    splits = {"val": order[:n_val], "train": order[n_val:]}
    with atomic_dir(out, force=force) as tmp:
        for split, idx in splits.items():
            for i in idx:
                folder = tmp / split / str(labels[i])
                folder.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(folder / f"{i:04d}.png"), images[i]):
                    raise EdgekitError(f"cannot write images under {out}")
        val = sorted(splits["val"])
        writer = cv2.VideoWriter(str(tmp / "val.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (video_size, video_size))
        if not writer.isOpened():
            raise EdgekitError("this OpenCV cannot write mp4v video")
        for i in val:
            frame = cv2.resize(images[i], (video_size, video_size), interpolation=cv2.INTER_NEAREST)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        writer.release()
        (tmp / "val.labels.txt").write_text("".join(f"{labels[i]}\n" for i in val))
    return Path(out)


# ---- detection ----------------------------------------------------------------------------------
DETECT_SCENE = (240, 320)  # (height, width) of the detection scenes: 4:3, like most cameras
DETECT_COUNTS = {"train": 480, "val": 120}


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two real photos (china.jpg, flower.jpg) as BGR images, read with OpenCV."""
    import cv2

    try:
        import sklearn
    except ImportError as exc:
        raise EdgekitError("the sample data needs scikit-learn: pip install 'edgekit[host]'") from exc
    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    photos = [cv2.imread(str(folder / name)) for name in ("china.jpg", "flower.jpg")]
    if any(p is None for p in photos):
        raise EdgekitError(f"cannot read scikit-learn's sample photos in {folder}")
    return photos


def _scene(photos, digits, labels, pool, rng, size) -> tuple[np.ndarray, list]:
    """One scene: a random crop of a photo with 1-4 digits from ``pool`` pasted as ink; their boxes."""
    import cv2

    h, w = size
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    ch, cw = int(ph * scale), int(min(pw, ph * scale * w / h))
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    scene = cv2.resize(photo[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    if rng.random() < 0.5:
        scene = scene[:, ::-1]
    objects = []
    for _ in range(rng.integers(1, 5)):
        i = pool[rng.integers(len(pool))]
        side = int(rng.integers(h // 5, h * 2 // 5))
        alpha = cv2.resize(digits[i], (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
        ys, xs = np.nonzero(alpha > 0.25)
        for _attempt in range(20):
            oy, ox = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            box = [ox + xs.min(), oy + ys.min(), ox + xs.max() + 1, oy + ys.max() + 1]
            if all(_overlap(box, o[1]) == 0 for o in objects):
                break
        else:
            continue
        region = scene[oy : oy + side, ox : ox + side]
        dark = region.mean() > 110
        ink = rng.uniform(0, 70, 3) if dark else rng.uniform(185, 255, 3)
        a = np.clip(alpha * 1.3, 0, 1)[..., None]
        scene[oy : oy + side, ox : ox + side] = region * (1 - a) + ink * a
        objects.append((int(labels[i]), [float(v) for v in box]))
    noise = rng.normal(0, 4, scene.shape)
    return np.clip(scene + noise, 0, 255).astype(np.uint8), objects


def _overlap(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def write_detection_sample_data(
    out: str | os.PathLike,
    size: int = DETECT_SCENE[1],
    fps: int = 5,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """A small real-image detection set: scikit-learn's handwritten digits pasted as ink on random crops
    of its two real photos, with their boxes, ``size`` pixels wide (4:3).

    ``out`` gets the same scenes twice: ``yolo/`` (data.yaml, images/, labels/) and ``coco/``
    (annotations/instances_{train,val}.json, train/, val/); and ``val.mp4`` (the val scenes, one per
    frame) with their boxes in ``val.boxes.json``. Train and val scenes use different digit scans.
    """
    import cv2

    if not 64 <= size <= MAX_SIZE:
        raise UsageError(f"--image-size must be between 64 and {MAX_SIZE} for detection, got {size}")
    scene_size = (size * 3 // 4, size)
    photos = sample_photos()
    digits, labels = load_digits_images(32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    n_val = len(digits) // 5
    pools = {"val": order[:n_val], "train": order[n_val:]}
    names = [str(d) for d in range(10)]
    with atomic_dir(out, force=force) as tmp:
        yolo, coco = tmp / "yolo", tmp / "coco"
        (yolo / "data.yaml").parent.mkdir(parents=True)
        (yolo / "data.yaml").write_text(
            "# edgekit sample detection set: handwritten digits on real photos\n"
            "path: .\ntrain: images/train\nval: images/val\n"
            f"nc: {len(names)}\nnames: [{', '.join(repr(n) for n in names)}]\n"
        )
        (coco / "annotations").mkdir(parents=True)
        scenes = {}
        for split, count in DETECT_COUNTS.items():
            doc = {"images": [], "annotations": [],
                   "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
            for folder in (yolo / "images" / split, yolo / "labels" / split, coco / split):
                folder.mkdir(parents=True)
            scenes[split] = []
            for k in range(count):
                image, objects = _scene(photos, digits, labels, pools[split], rng, scene_size)
                scenes[split].append((image, objects))
                name = f"{split}_{k:04d}.jpg"
                h, w = scene_size
                for path in (yolo / "images" / split / name, coco / split / name):
                    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 85]):
                        raise EdgekitError(f"cannot write images under {out}")
                (yolo / "labels" / split / f"{name[:-4]}.txt").write_text("".join(
                    f"{c} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                    f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}\n" for c, b in objects
                ))
                doc["images"].append({"id": k + 1, "file_name": name, "width": w, "height": h})
                for c, b in objects:
                    doc["annotations"].append({
                        "id": len(doc["annotations"]) + 1, "image_id": k + 1, "category_id": c + 1, "iscrowd": 0,
                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
                    })
            (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
        writer = cv2.VideoWriter(str(tmp / "val.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                 (scene_size[1], scene_size[0]))
        if not writer.isOpened():
            raise EdgekitError("this OpenCV cannot write mp4v video")
        for image, _ in scenes["val"]:
            writer.write(image)
        writer.release()
        truth = [[{"class": c, "label": names[c], "box": b} for c, b in objects] for _, objects in scenes["val"]]
        (tmp / "val.boxes.json").write_text(json.dumps(truth))
    return Path(out)
