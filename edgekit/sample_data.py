"""A small real image set that the host install brings along: scikit-learn's handwritten digits.

1,797 scanned digits (8x8, 17 grey levels; UCI "Optical Recognition of Handwritten Digits") are
upscaled and written as a class-per-folder image set, split into ``train/`` and a held-out ``val/``,
plus ``val.mp4``: the held-out digits as a video, with their labels in ``val.labels.txt``.
"""

from __future__ import annotations

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
