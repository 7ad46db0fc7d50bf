"""Box-aware augmentation and batching of detection training data in a tf.data pipeline.

Frames come letterboxed to the model input (uint8, OpenCV's BGR), boxes normalised to it. Each
training image is zoomed in or out around a random window (pixels outside the image take the
letterbox fill), optionally mirrored left-right, and jittered in brightness, contrast and saturation;
its boxes follow the same mapping and those less than ``min_visible`` inside the result are dropped.
Batches carry the ground truth padded to the most boxes any image has: boxes ``[B, M, 4]``, classes
``[B, M]`` (-1 for padding), the form :mod:`edgekit.host.det_loss` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.preprocess import LETTERBOX_FILL


@dataclass(frozen=True)
class Augment:
    """What training changes; ``flip`` False for classes a mirror changes (digits, text, arrows)."""

    zoom: tuple[float, float] = (0.6, 1.4)  # >1 zooms in (objects grow), <1 out
    shift: float = 0.1  # extra random offset of the window, a fraction of its side
    flip: bool = True
    brightness: float = 0.15  # fraction of full scale
    contrast: tuple[float, float] = (0.75, 1.25)
    saturation: tuple[float, float] = (0.6, 1.4)
    min_visible: float = 0.6


def pad_truth(boxes: list, classes: list) -> tuple[np.ndarray, np.ndarray]:
    """Per-image boxes and classes -> ``[K, M, 4]`` float32 and ``[K, M]`` int32 (-1 padding), M >= 1."""
    m = max([len(b) for b in boxes] + [1])
    out_b = np.zeros((len(boxes), m, 4), np.float32)
    out_c = np.full((len(boxes), m), -1, np.int32)
    for i, (b, c) in enumerate(zip(boxes, classes)):
        out_b[i, : len(b)] = b
        out_c[i, : len(c)] = c
    return out_b, out_c


def augment_image(image, boxes, classes, config: Augment, seed):
    """One augmented image (float32 0..255, HxWx3) with its boxes ``[M, 4]`` and classes ``[M]``
    (dropped boxes get class -1 and zero corners). ``seed``: a stateless seed, shape [2]."""
    import tensorflow as tf

    rand = lambda i, lo=0.0, hi=1.0, shape=(): tf.random.stateless_uniform(  # noqa: E731
        shape, seed + [0, i], lo, hi)
    size = tf.shape(image)[:2]
    side = 1.0 / rand(1, *config.zoom)  # the window's side, as a fraction of the image
    lo, hi = tf.minimum(0.0, 1.0 - side), tf.maximum(0.0, 1.0 - side)
    offset = rand(2, shape=(2,)) * (hi - lo) + lo + rand(3, -config.shift, config.shift, (2,)) * side
    x0, y0 = offset[0], offset[1]
    window = tf.stack([y0, x0, y0 + side, x0 + side])[None]
    image = tf.image.crop_and_resize(image[None], window, [0], size, extrapolation_value=float(LETTERBOX_FILL))[0]
    moved = (boxes - tf.stack([x0, y0, x0, y0])) / side
    if config.flip:
        mirror = rand(4) < 0.5
        image = tf.where(mirror, image[:, ::-1], image)
        moved = tf.where(mirror, tf.stack([1 - moved[:, 2], moved[:, 1], 1 - moved[:, 0], moved[:, 3]], 1), moved)
    clipped = tf.clip_by_value(moved, 0.0, 1.0)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    keep = ((classes >= 0) & (area(clipped) >= config.min_visible * area(moved))
            & (clipped[:, 2] - clipped[:, 0] > 2 / w) & (clipped[:, 3] - clipped[:, 1] > 2 / h))
    classes = tf.where(keep, classes, -1)
    boxes = tf.where(keep[:, None], clipped, 0.0)
    x = image / 255.0
    x = tf.image.adjust_saturation(x, rand(5, *config.saturation))  # HSV saturation: any channel order
    mean = tf.reduce_mean(x)
    x = (x - mean) * rand(6, *config.contrast) + mean + rand(7, -config.brightness, config.brightness)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0, boxes, classes


def detection_batches(frames: np.ndarray, boxes: list, classes: list, prep, batch_size: int,
                      augment: Augment | None = None, epochs: int = 1, seed: int = 0, plain_epochs: int = 0):
    """A tf.data dataset of ``(inputs, gt_boxes, gt_classes)`` batches over ``epochs`` passes: ``frames``
    (uint8 BGR, letterboxed by ``prep``) normalised as ``prep`` says; with ``augment``, shuffled and
    augmented afresh every pass but the last ``plain_epochs`` (shuffled only; deterministic for a ``seed``)."""
    import tensorflow as tf

    gt_boxes, gt_classes = pad_truth(boxes, classes)
    std = np.asarray(prep.std, np.float32)
    gain, bias = tf.constant(prep.scale / std), tf.constant(-np.asarray(prep.mean, np.float32) / std)
    rgb = prep.color == "RGB"
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(len(frames)) if augment is not None else np.arange(len(frames))
                       for _ in range(epochs)])
    frames_t, boxes_t, classes_t = tf.constant(frames), tf.constant(gt_boxes), tf.constant(gt_classes)

    def prepare(epoch, index):
        x = tf.cast(tf.gather(frames_t, index), tf.float32)
        b, c = tf.gather(boxes_t, index), tf.gather(classes_t, index)
        if rgb:
            x = x[..., ::-1]
        if augment is not None:
            seed_i = tf.stack([epoch + seed, tf.cast(index, tf.int64)])
            x, b, c = tf.cond(epoch < epochs - plain_epochs, lambda: augment_image(x, b, c, augment, seed_i),
                              lambda: (x, b, c))
        return x * gain + bias, b, c

    def one_pass(epoch):
        indices = tf.data.Dataset.from_tensor_slices(tf.gather(orders, epoch))
        return indices.map(lambda i: prepare(epoch, i), num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True).batch(batch_size)

    return tf.data.Dataset.range(epochs).flat_map(one_pass).prefetch(2)
