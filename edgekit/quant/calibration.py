"""Calibration sets: images from a folder or a video, prepared by the bundle's one Preprocess.

A :class:`CalibrationSet` is a list of *items* (image files, or frame numbers of a video) chosen and
shuffled with a seed; pixels are read only when iterated, one batch at a time, behind a progress bar.
Every image becomes a tensor through ``Preprocess.__call__`` — the same function the runtime loop
calls on camera frames — so INT8 ranges are measured on exactly what the model will see.

Image policy (decoding is :func:`edgekit.images.read_image`'s): grey, 16-bit and alpha images are
converted to 8-bit BGR as at run time; unreadable or oversized files are skipped with a warning and
counted; a set with fewer than :data:`MIN_IMAGES` usable images is refused, one with fewer than
:data:`RECOMMENDED_IMAGES` is used with a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from edgekit.errors import InputError, UsageError
from edgekit.images import IMAGE_EXTENSIONS, ImageReader, list_images
from edgekit.preprocess import Preprocess

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"})
MIN_IMAGES = 16
RECOMMENDED_IMAGES = 100


@dataclass(frozen=True)
class Item:
    """One calibration image: a file, or frame ``frame`` of the video ``path``; ``label`` if known."""

    path: Path
    frame: int | None = None
    label: int | None = None


@dataclass
class CalibrationSet:
    """Chosen calibration items and the Preprocess that turns their pixels into model tensors."""

    source: Path
    items: list[Item]
    preprocess: Preprocess
    progress: bool = True
    holdout: int = 0  # how many of the items (the last ones) are held out for the gate
    role: str = "calibration"  # what the images are for, in messages ("validation" for validate)
    skipped: int = field(default=0, init=False)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labelled(self) -> bool:
        """Whether every item has a label (a class-per-folder set named by the bundle's labels)."""
        return bool(self.items) and all(item.label is not None for item in self.items)

    def split(self) -> tuple["CalibrationSet", "CalibrationSet"]:
        """(calibration, held out): the last ``holdout`` items are held out for the accuracy gate."""
        cut = len(self.items) - self.holdout
        return replace(self, items=self.items[:cut], holdout=0), replace(self, items=self.items[cut:], holdout=0)

    def take(self, n: int) -> "CalibrationSet":
        """The first ``n`` items."""
        return replace(self, items=self.items[:n], holdout=0)

    def frames(self) -> Iterator[tuple[Item, np.ndarray]]:
        """Yield (item, uint8 BGR frame) lazily; unreadable images are skipped and counted."""
        self.skipped = 0
        files = [i for i in self.items if i.frame is None]
        if files:
            by_path = {i.path: i for i in files}
            reader = ImageReader(list(by_path))
            for path, image in reader:
                yield by_path[path], image
            self.skipped += reader.skipped
        frames = [i for i in self.items if i.frame is not None]
        if frames:
            yield from _video_frames(frames)

    def batches(self, batch_size: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (tensor batch, labels) in item order, the tensors made by ``self.preprocess``."""
        tensors, labels = [], []
        with _progress(self.frames(), len(self), f"{self.role} images", self.progress) as frames:
            for item, frame in frames:
                tensors.append(self.preprocess(frame))
                labels.append(-1 if item.label is None else item.label)
                if len(tensors) == batch_size:
                    yield np.stack(tensors), np.array(labels, np.int64)
                    tensors, labels = [], []
        if tensors:
            yield np.stack(tensors), np.array(labels, np.int64)
        if self.skipped:
            log.warning("%d of %d %s images could not be read and were skipped", self.skipped, len(self), self.role)

    def tensors(self, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """All tensors and labels at once (for held-out sets small enough to keep in memory)."""
        parts = list(self.batches(batch_size))
        if not parts:
            raise InputError(f"no readable images in {self.source}")
        return np.concatenate([t for t, _ in parts]), np.concatenate([lab for _, lab in parts])


def calibration_set(
    source: str | os.PathLike,
    preprocess: Preprocess,
    num_images: int = 500,
    holdout: int = 0,
    every: int = 10,
    seed: int = 0,
    labels: list[str] | None = None,
    progress: bool = True,
) -> CalibrationSet:
    """Choose up to ``num_images`` (+ ``holdout``) images from a folder (recursive) or a video.

    A set smaller than that holds out at most a fifth of itself; fewer than :data:`MIN_IMAGES` left
    for calibration is an error.
    Frames of a video are sampled every ``every`` frames. Items are shuffled with ``seed``. With
    ``labels`` (the bundle's), a folder whose subfolders are all label names is read as labelled, so
    the held-out part can measure accuracy, not only agreement.
    """
    source = Path(source)
    if num_images < 1 or holdout < 0 or every < 1:
        raise UsageError("--num-images and --every must be positive and the hold-out not negative")
    if source.is_file():
        if source.suffix.lower() not in VIDEO_EXTENSIONS:
            kind = "an image" if source.suffix.lower() in IMAGE_EXTENSIONS else "not a video"
            raise InputError(f"calibration source {source} is {kind}; give a folder of images or a video file")
        pool = [Item(source, frame=i) for i in range(0, _frame_count(source), every)]
    else:
        pool = _folder_items(source, labels)
    if not pool:
        raise InputError(f"{source} holds no calibration images (jpg, png, bmp, or video frames)")
    order = np.random.default_rng(seed).permutation(len(pool))
    if len(pool) < num_images + holdout:  # a small set: hold out at most a fifth of it
        holdout = max(0, min(holdout, len(pool) // 5, len(pool) - MIN_IMAGES))
    chosen = [pool[i] for i in order[: num_images + holdout]]
    n_cal = len(chosen) - holdout
    more = (f"; a video gives more with a smaller --every (now {every}: one frame in {every})"
            if source.is_file() and every > 1 else "")
    if n_cal < MIN_IMAGES:
        raise InputError(
            f"{source} gives only {max(n_cal, 0)} calibration images after holding out {holdout}; "
            f"at least {MIN_IMAGES} are needed ({num_images} asked, {RECOMMENDED_IMAGES}+ recommended){more}"
        )
    if n_cal < min(num_images, RECOMMENDED_IMAGES):
        log.warning(
            "only %d calibration images (%d+ recommended): INT8 ranges may not cover what the camera sees%s",
            n_cal, RECOMMENDED_IMAGES, more,
        )
    return CalibrationSet(source, chosen, preprocess, progress, holdout)


def _folder_items(folder: Path, labels: list[str] | None) -> list[Item]:
    paths = list_images(folder)
    classes = {name: i for i, name in enumerate(labels or [])}
    subs = {p.relative_to(folder).parts[0] for p in paths if len(p.relative_to(folder).parts) > 1}
    labelled = bool(classes) and bool(subs) and subs <= set(classes) and all(
        len(p.relative_to(folder).parts) > 1 for p in paths
    )
    if labelled:
        return [Item(p, label=classes[p.relative_to(folder).parts[0]]) for p in paths]
    return [Item(p) for p in paths]


def _open_video(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path} is not a readable video")
    return cap


def _frame_count(path: Path) -> int:
    """Frames in a video, counted by grabbing (container frame counts are often wrong)."""
    cap = _open_video(path)
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise InputError(f"{path} is not a readable video (no frames)")
    return n


def _video_frames(items: list[Item]) -> Iterator[tuple[Item, np.ndarray]]:
    """Decode the wanted frames in one sequential pass per video (in item order of frame number)."""
    from edgekit.images import to_bgr8

    for path in dict.fromkeys(i.path for i in items):
        wanted = {i.frame: i for i in items if i.path == path}
        cap = _open_video(path)
        try:
            n, last = 0, max(wanted)
            while n <= last and cap.grab():
                if n in wanted:
                    ok, frame = cap.retrieve()
                    if ok:
                        yield wanted[n], to_bgr8(frame)
                n += 1
        finally:
            cap.release()


class _progress:
    """A click progress bar on a terminal, a line every few seconds otherwise, or the bare iterable."""

    def __init__(self, iterable, length: int, label: str, enabled: bool):
        self.iterable, self.length, self.label, self.enabled = iterable, length, label, enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return self.iterable
        import click

        from edgekit.progress import Lines
        from edgekit.quiet import live_stderr

        stream = live_stderr()
        if not stream.isatty():
            return Lines(self.iterable, self.length, self.label)
        self.bar = click.progressbar(self.iterable, length=self.length, label=self.label, file=stream)
        return self.bar.__enter__()

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


class DataReader(CalibrationDataReader):
    """An onnxruntime ``CalibrationDataReader`` over a calibration set, one batch per collection.

    ``get_next`` serves one batch, then ``None`` until ``next_batch()``: a calibrator's
    ``collect_data`` called once per batch merges as it goes, so memory stays bounded (and
    histogram calibrators never see batches of unequal size together); ``done`` says when the whole
    set has been read; ``rewind()`` starts over.
    """

    def __init__(self, cal: CalibrationSet, input_name: str, batch_size: int = 32):
        self.cal, self.input_name, self.batch_size = cal, input_name, batch_size
        self.rewind()

    def rewind(self) -> None:
        self._batches = self.cal.batches(self.batch_size)
        self._pending = next(self._batches, None)
        self._served = False

    @property
    def done(self) -> bool:
        return self._pending is None

    def next_batch(self) -> None:
        self._served = False

    def get_next(self) -> dict | None:
        if self._pending is None or self._served:
            return None
        tensors, _ = self._pending
        self._pending = next(self._batches, None)
        self._served = True
        return {self.input_name: tensors}

    def __len__(self) -> int:
        return -(-len(self.cal) // self.batch_size)
