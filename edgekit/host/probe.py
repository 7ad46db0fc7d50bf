"""Inputs that probe a converted model: the frames both parity checks (classifier, detector) feed
TensorFlow and ONNX Runtime.

They are crops of real photos (scikit-learn's two, which the host install brings), so a trained model
answers them as it answers a camera, and a model that gives the same output for all of them does
ignore its input; uniform random noise is what no camera sees, and saturates trained models alike.
"""

from __future__ import annotations

import numpy as np

from edgekit.preprocess import Preprocess


def photo_frames(size: tuple[int, int], count: int, seed: int) -> list[np.ndarray]:
    """``count`` different uint8 BGR frames of ``size`` (height, width): random crops of the sample
    photos, at random scales, some mirrored."""
    import cv2

    from edgekit.sample_data import sample_photos

    rng = np.random.default_rng(seed)
    photos = sample_photos()
    h, w = size
    frames = []
    for i in range(count):
        photo = photos[i % len(photos)]
        ph, pw = photo.shape[:2]
        side = rng.uniform(0.25, 1.0) * min(ph, pw * h / w)  # crop height, with the model's aspect ratio
        ch, cw = max(1, int(side)), max(1, int(side * w / h))
        y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
        crop = photo[y : y + ch, x : x + cw]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        frames.append(cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_AREA))
    return frames


def probe_inputs(prep: Preprocess, batch: int | None, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` (else ``samples``) photo frames of the model's size, preprocessed as TensorFlow's
    NHWC input and as the bundle's input, for the parity checks."""
    frames = photo_frames(prep.size, batch or max(1, samples), seed)
    return np.stack([prep.hwc(f) for f in frames]).astype(np.float32), prep.batch(frames)
