"""Train a Keras detector of :mod:`edgekit.host.detector` on a YOLO or COCO folder.

Images are letterboxed with the one :class:`~edgekit.preprocess.Preprocess` the bundle will carry
(``resize: letterbox``) and their boxes mapped the same way. The pyramid detectors train in a
tf.data pipeline with box-aware augmentation (:mod:`edgekit.host.augment`) and task-aligned,
IoU-aware losses (:mod:`edgekit.host.det_loss`); ``small-v1`` trains as it always did (static
centre targets, focal loss, :func:`augment_detection`). Writes ``.keras`` plus the sidecar ``<model>.edgekit.json`` with ``"task": "detection"``,
labels and preprocessing for export (which records the NMS parameters: :class:`edgekit.nms.NmsParams`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import numpy as np

from edgekit.data.detection import read_detection_set
from edgekit.host.train import check_training_output, save_model
from edgekit.images import ImageReader
from edgekit.nms import NmsParams

log = logging.getLogger(__name__)

RECALL_IOU = 0.5
PLAIN_DIVISOR = 6  # the last epochs // 6 train without augmentation (as Ultralytics' close_mosaic)


def train_detector(
    data_dir,
    out,
    *,
    arch: str = "small",
    image_size: int = 160,
    epochs: int = 30,
    batch_size: int = 16,
    weights: str = "none",
    seed: int = 0,
    augment: bool = True,
    flip: bool = True,
    learning_rate: float | None = None,
    force: bool = False,
    verbose: int | None = None,
) -> dict:
    """Train a detector on ``data_dir`` (YOLO or COCO layout) and write it to ``out``; return counts and
    the val recall and precision figures (see :func:`recall_precision`). ``flip``: mirror training
    images left-right (leave it off for classes a mirror changes)."""
    from edgekit.host.detector import build_detector, check_image_size, detector_arch, grid_of, head_for, losses

    out = check_training_output(out, epochs, batch_size, force)
    spec = detector_arch(arch)
    check_image_size(spec, image_size)
    prep = dataclasses.replace(spec.preprocess(image_size), resize="letterbox")
    dataset = read_detection_set(data_dir)
    n_classes = len(dataset.classes)
    splits = {split: _load(samples, prep) for split, samples in dataset.splits.items()}

    from edgekit.host import import_tf

    _, keras = import_tf()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_detector(spec, image_size, n_classes, weights)
    grid = grid_of(model)
    head = head_for(spec)
    lr = learning_rate or _default_lr(head, weights)
    legacy = head is not None and head.legacy
    plain_epochs = epochs // PLAIN_DIVISOR if augment and not legacy else 0
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    log.info("training a %s detector on %s (%s, %d classes) for %d epochs", arch, dataset.root, dataset.format,
             n_classes, epochs)
    for line in dataset.report().splitlines():
        log.info("  %s", line)
    if legacy:
        make = _dataset_class(keras)
        fit_data = make(*splits["train"], prep, grid, n_classes, batch_size, augment, rng)
        val_data = make(*splits["val"], prep, grid, n_classes, batch_size, False, rng)
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * len(fit_data), warmup_steps=0)
        model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=10.0), loss=losses())
        model.fit(fit_data, validation_data=val_data, epochs=epochs, verbose=verbose)
    else:
        from edgekit.host.augment import Augment

        _fit_aligned(keras, model, splits["train"], prep, epochs, batch_size,
                     Augment(flip=flip) if augment else None, lr, seed, verbose, plain_epochs=plain_epochs)

    frames, boxes, classes = splits["val"]
    pred_boxes, pred_scores = model.predict(np.stack([prep.hwc(f) for f in frames]), batch_size=batch_size, verbose=0)
    params = NmsParams()  # what export records and `run` applies by default
    val_recall, val_precision = recall_precision(pred_boxes, pred_scores, boxes, classes, params)
    skipped = {split: sum(c.values()) for split, c in dataset.skipped.items()}
    result = {
        "model": str(out),
        "task": "detection",
        "arch": arch,
        "weights": weights,
        "format": dataset.format,
        "labels": list(dataset.classes),
        "images": {split: len(s[0]) for split, s in splits.items()},
        "boxes": {split: dataset.boxes(split) for split in splits},
        "skipped": skipped,
        "epochs": epochs,
        "augment": {"on": augment, "flip": flip and augment, "plain_epochs": plain_epochs},
        "image_size": image_size,
        "val_recall": val_recall,
        "val_precision": val_precision,
        "score_threshold": params.score_threshold,
    }
    save_model(model, out, {
        "task": "detection", "labels": list(dataset.classes), "preprocess": prep.to_dict(),
        "outputs": [{"name": "boxes", "meaning": "boxes"}, {"name": "scores", "meaning": "scores"}],
        "training": {k: v for k, v in result.items() if k not in ("model", "labels", "task")},
    })
    return result


def _default_lr(head, weights: str) -> float:
    """Adam's initial rate: 6e-3 for the pyramid heads (bench_detector: +4-5 mAP over 3e-3 on the sample set
    at 30 epochs, two seeds), 3e-3 for small-v1, 1e-3 for a Keras application, 1e-4 from pretrained weights."""
    if weights != "none":
        return 1e-4
    if head is None:
        return 1e-3
    return 3e-3 if head.legacy else 6e-3


def _fit_aligned(keras, model, train, prep, epochs, batch_size, augment, lr, seed, verbose, config=None,
                 plain_epochs=0):
    """Train a pyramid detector: tf.data batches (the last ``plain_epochs`` unaugmented), task-aligned
    targets from the current predictions, quality focal + CIoU losses, Adam with a one-epoch warm-up then
    cosine decay."""
    import time

    import tensorflow as tf

    from edgekit.host.augment import detection_batches
    from edgekit.host.det_loss import LossConfig, detection_loss
    from edgekit.host.detector import grid_of

    frames, boxes, classes = train
    steps = -(-len(frames) // batch_size)
    warmup = min(steps, max(epochs * steps // 5, 1))
    schedule = keras.optimizers.schedules.CosineDecay(lr / 10, decay_steps=max(epochs * steps - warmup, 1),
                                                      warmup_target=lr, warmup_steps=warmup)
    optimizer = keras.optimizers.Adam(schedule, clipnorm=10.0)
    trainer = keras.Model(model.inputs[0], [model.get_layer("boxes").output, model.get_layer("logits").output])
    variables = trainer.trainable_variables
    optimizer.build(variables)
    centers = tf.constant(grid_of(model).centers())

    @tf.function
    def step(x, gt_boxes, gt_classes):
        with tf.GradientTape() as tape:
            pred_boxes, logits = trainer(x, training=True)
            loss, parts = detection_loss(logits, pred_boxes, gt_boxes, gt_classes, centers, config or LossConfig())
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return tf.stack([loss, parts["cls"], parts["box"]])

    data = detection_batches(frames, boxes, classes, prep, batch_size, augment, epochs, seed, plain_epochs)
    totals, start = np.zeros(3), time.monotonic()
    for i, (x, gt_boxes, gt_classes) in enumerate(data):
        totals += step(x, gt_boxes, gt_classes).numpy()
        if (i + 1) % steps == 0:
            if verbose:
                loss, cls, box = totals / steps
                print(f"epoch {(i + 1) // steps}/{epochs}: loss {loss:.4f} (class {cls:.4f}, box {box:.4f}) "
                      f"{time.monotonic() - start:.0f} s", flush=True)
            totals[:] = 0


def _load(samples, prep):
    """Letterboxed uint8 frames and their boxes normalised to the model input (unreadable images dropped)."""
    by_path = {s.path: s for s in samples}
    frames, boxes, classes = [], [], []
    for path, image in ImageReader(list(by_path)):
        s = by_path[path]
        frames.append(prep.resized(image))
        boxes.append(prep.boxes_to_input(s.boxes, image.shape[:2]))
        classes.append(s.classes)
    return np.stack(frames), boxes, classes


def augment_detection(frame: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng, min_visible: float = 0.5):
    """A random scale/shift and brightness/contrast change of a uint8 frame and its normalised boxes.

    Boxes less than ``min_visible`` inside the result are dropped. No flips: they change digits and text.
    """
    import cv2

    from edgekit.preprocess import LETTERBOX_FILL

    h, w = frame.shape[:2]
    s = rng.uniform(0.75, 1.25)
    tx, ty = rng.uniform(-0.15, 0.15, 2) * (w, h) + (1 - s) * np.array([w, h]) / 2
    m = np.array([[s, 0, tx], [0, s, ty]], np.float32)
    out = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(LETTERBOX_FILL,) * 3)
    gain, bias = rng.uniform(0.75, 1.25), rng.uniform(-25, 25)
    out = np.clip(out.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    moved = boxes * s + np.array([tx / w, ty / h, tx / w, ty / h], np.float32)
    clipped = np.clip(moved, 0.0, 1.0)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    keep = (area(clipped) >= min_visible * area(moved)) & (clipped[:, 2] - clipped[:, 0] > 1 / w) & \
        (clipped[:, 3] - clipped[:, 1] > 1 / h)
    return out, clipped[keep], classes[keep]


def recall_precision(pred_boxes, pred_scores, boxes, classes, params: NmsParams,
                     iou: float = RECALL_IOU) -> tuple[float | None, float | None]:
    """Training-progress figures (not the mAP gate): after NMS at ``params``' run threshold, the fraction
    of ground-truth boxes found (a detection of the same class with IoU >= ``iou``) and the fraction of
    detections that found one; None where there is nothing to divide by."""
    from edgekit.nms import efficient_nms

    dets = efficient_nms(pred_boxes, pred_scores, score_threshold=params.score_threshold,
                         iou_threshold=params.iou_threshold, max_output_boxes=params.max_detections,
                         class_agnostic=params.class_agnostic)
    found = right = total = n_dets = 0
    for i, (gb, gc) in enumerate(zip(boxes, classes)):
        n = int(dets["num_detections"][i, 0])
        total, n_dets = total + len(gb), n_dets + n
        if n and len(gb):
            hit = (box_iou(gb, dets["detection_boxes"][i, :n]) >= iou) & (gc[:, None] == dets["detection_classes"][i, :n])
            found += int(hit.any(1).sum())
            right += int(hit.any(0).sum())
    return (found / total if total else None), (right / n_dets if n_dets else None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[len(a), len(b)]`` of corner boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _dataset_class(keras):
    from edgekit.host.detector import assign_targets

    class Batches(keras.utils.PyDataset):
        """Batches of preprocessed (and, for training, augmented) images with their grid targets."""

        def __init__(self, frames, boxes, classes, prep, grid, n_classes, batch_size, augment, rng):
            super().__init__()
            self.frames, self.boxes, self.classes = frames, boxes, classes
            self.prep, self.grid, self.n_classes = prep, grid, n_classes
            self.batch_size, self.augment, self.rng = batch_size, augment, rng
            self.index = np.arange(len(frames))
            if augment:
                self.rng.shuffle(self.index)

        def __len__(self):
            return -(-len(self.index) // self.batch_size)

        def __getitem__(self, i):
            xs, box_t, score_t = [], [], []
            for j in self.index[i * self.batch_size : (i + 1) * self.batch_size]:
                frame, boxes, classes = self.frames[j], self.boxes[j], self.classes[j]
                if self.augment:
                    frame, boxes, classes = augment_detection(frame, boxes, classes, self.rng)
                scores, box = assign_targets(boxes, classes, self.grid, self.n_classes)
                xs.append(self.prep.hwc(frame))
                score_t.append(scores)
                box_t.append(box)
            return np.stack(xs), {"boxes": np.stack(box_t), "scores": np.stack(score_t)}

        def on_epoch_end(self):
            if self.augment:
                self.rng.shuffle(self.index)

    return Batches
