"""Reading images and labelled image folders: every image becomes an 8-bit, 3-channel BGR array."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
MAX_PIXELS = 64_000_000  # larger images are refused rather than exhausting a small device's memory


class ImageReadError(InputError):
    """One image file that cannot be read."""


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Normalise a decoded image (gray, BGRA, 16-bit, float) to uint8 HxWx3 BGR."""
    import cv2

    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"unsupported image shape {image.shape}")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as uint8 BGR; raise ImageReadError when it cannot be decoded."""
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"cannot read {path}: {exc.strerror}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageReadError(f"{path} is not a readable image")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ImageReadError(f"{path} is too large ({image.shape[1]}x{image.shape[0]} pixels)")
    try:
        return to_bgr8(image)
    except ValueError as exc:
        raise ImageReadError(f"{path}: {exc}") from exc


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (sorted); an error if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist")
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@dataclass(frozen=True)
class LabelledFolder:
    """A folder with one subfolder per class: ``classes`` sorted, ``samples`` as (path, class index)."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]


def labelled_folder(folder: str | os.PathLike, min_classes: int = 2) -> LabelledFolder:
    """Scan a class-per-subfolder image folder; refuse a missing, empty or single-class one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist")
    classes, samples = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = list_images(sub)
        if images:
            samples.extend((path, len(classes)) for path in images)
            classes.append(sub.name)
    if not samples:
        raise InputError(f"{folder} holds no images in class subfolders (jpg, png, bmp)")
    if len(classes) < min_classes:
        raise InputError(
            f"{folder} has {len(classes)} class folder(s) with images; at least {min_classes} are needed"
        )
    return LabelledFolder(folder, classes, samples)


class ImageReader:
    """Iterate ``(path, image)`` over readable images; unreadable ones are skipped with a warning.

    ``skipped`` counts them as iteration goes: ``reader = ImageReader(paths); for p, im in reader: ...;
    reader.skipped``.
    """

    def __init__(self, paths):
        self.paths = paths
        self.skipped = 0

    def __iter__(self):
        for path in self.paths:
            try:
                image = read_image(path)
            except ImageReadError as exc:
                self.skipped += 1
                log.warning("skipping %s", exc)
                continue
            yield path, image
