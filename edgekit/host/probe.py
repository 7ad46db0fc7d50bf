"""Inputs that probe a converted model: the frames both parity checks (classifier, detector) feed
TensorFlow and ONNX Runtime."""

from __future__ import annotations

import numpy as np

from edgekit.preprocess import Preprocess


def random_inputs(prep: Preprocess, batch: int | None, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` (else ``samples``) random uint8 frames of the model's size, preprocessed as TensorFlow's
    NHWC input and as the bundle's input, for the parity checks."""
    rng = np.random.default_rng(seed)
    h, w = prep.size
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(batch or max(1, samples))]
    return np.stack([prep.hwc(f) for f in frames]).astype(np.float32), prep.batch(frames)
