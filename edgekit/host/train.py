"""Train a Keras image classifier on a folder with one subfolder per class.

Images are read with :mod:`edgekit.images` and prepared with the one :class:`~edgekit.preprocess.Preprocess`
the bundle will carry; augmentation happens only here, in the training input pipeline. The model is
written as ``.keras`` plus a sidecar ``<model>.edgekit.json`` (task, labels, preprocessing) that
:func:`edgekit.host.export.export_bundle` picks up.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

from edgekit.atomic import check_output_dir, check_writable, copy_file, temp_dir, write_json
from edgekit.errors import InputError, UsageError
from edgekit.host.archs import build_model, get_arch
from edgekit.images import ImageReader, labelled_folder

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".keras", ".h5")


def sidecar_path(model: str | os.PathLike) -> Path:
    """The sidecar written next to a model: ``<model>.edgekit.json``."""
    return Path(str(Path(model)) + ".edgekit.json")


def train(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    arch: str = "small",
    image_size: int = 32,
    epochs: int = 10,
    batch_size: int = 32,
    val_split: float = 0.2,
    weights: str = "none",
    seed: int = 0,
    augment: bool = True,
    learning_rate: float | None = None,
    force: bool = False,
    verbose: int | None = None,
) -> dict:
    """Train ``arch`` on ``data_dir`` and write the model to ``out``; return accuracies and counts.

    ``weights`` is ``none``, ``imagenet`` or a weights file (Keras applications only). ``verbose``
    is Keras' (default: a progress bar on a terminal, one line per epoch otherwise).
    """
    out = check_training_output(out, epochs, batch_size, force)
    if not 0.0 <= val_split < 1.0:
        raise UsageError(f"--val-split must be in [0, 1), got {val_split}")
    spec = get_arch(arch)
    spec.check_image_size(image_size)  # before the images are read
    prep = spec.preprocess(image_size)
    folder = labelled_folder(data_dir)
    frames, ys, skipped = _load(folder, prep)

    rng = np.random.default_rng(seed)
    train_idx, val_idx = _split(ys, val_split, rng)
    from edgekit.host import import_tf

    _, keras = import_tf()
    keras.utils.set_random_seed(seed)
    model = build_model(spec, image_size, len(folder.classes), weights)
    make = _dataset_class(keras)
    fit_data = make(frames, ys, train_idx, prep, batch_size, augment, rng)
    lr = learning_rate or (1e-4 if weights != "none" else 3e-3 if spec.application is None else 1e-3)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * len(fit_data))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    val_data = make(frames, ys, val_idx, prep, batch_size, False, rng) if len(val_idx) else None
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    log.info(
        "training %s on %d images (%d classes; %d train, %d val) for %d epochs",
        arch, len(ys), len(folder.classes), len(train_idx), len(val_idx), epochs,
    )
    history = model.fit(fit_data, validation_data=val_data, epochs=epochs, verbose=verbose)
    epoch_acc = float(history.history["accuracy"][-1])

    clean_train = make(frames, ys, train_idx, prep, batch_size, False, rng)
    train_acc = float(model.evaluate(clean_train, verbose=0, return_dict=True)["accuracy"])
    val_acc = float(model.evaluate(val_data, verbose=0, return_dict=True)["accuracy"]) if val_data else None

    result = {
        "model": str(out),
        "arch": arch,
        "weights": weights,
        "labels": list(folder.classes),
        "images": len(ys),
        "skipped": skipped,
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "epochs": epochs,
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "last_epoch_accuracy": epoch_acc,
    }
    if epoch_acc - train_acc > GAP_WARNING:
        log.warning(
            "the last epoch's accuracy (%.2f, averaged over augmented batches with the model in training mode) is "
            "far above the final model's (%.2f, inference mode, no augmentation): its BatchNorm statistics have not "
            "settled; train more --epochs (or with --weights imagenet)", epoch_acc, train_acc)
    save_model(model, out, {"task": "classification", "labels": list(folder.classes), "preprocess": prep.to_dict(),
                            "training": {k: v for k, v in result.items() if k not in ("model", "labels")}})
    return result


def check_training_output(out: str | os.PathLike, epochs: int, batch_size: int, force: bool) -> Path:
    """``out`` as a Path, checked before any training: a model suffix, sane counts, not in the way, writable."""
    out = Path(out)
    if out.suffix not in MODEL_SUFFIXES:
        raise UsageError(f"model output must end in {' or '.join(MODEL_SUFFIXES)}, got {out.name}")
    if epochs < 1 or batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    check_output_dir(out, force)
    check_writable(out)
    return out


def save_model(model, out: Path, sidecar: dict) -> None:
    """Write the Keras ``model`` to ``out`` atomically, then its sidecar (what ``export`` reads)."""
    with temp_dir("edgekit-train") as tmp:
        saved = Path(tmp) / f"model{out.suffix}"
        model.save(saved)
        copy_file(saved, out)
    write_json(sidecar_path(out), sidecar)


GAP_WARNING = 0.15  # last epoch's accuracy minus the final model's on the same images, above which train warns


def _load(folder, prep):
    """Decode and resize every image once (uint8); unreadable ones are skipped and counted."""
    label_of = dict(folder.samples)
    frames, ys = [], []
    images = ImageReader(label_of)
    for path, image in images:
        frames.append(prep.resized(image))
        ys.append(label_of[path])
    skipped = images.skipped
    if skipped:
        log.warning("skipped %d unreadable image(s) in %s", skipped, folder.root)
    present = len(set(ys))
    if present < 2:
        raise InputError(f"{folder.root} has readable images in {present} class(es); at least 2 are needed")
    return np.stack(frames), np.asarray(ys, np.int64), skipped


def _split(ys: np.ndarray, val_split: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``val_split`` of each class (at least one when it has two or more) to validation."""
    train, val = [], []
    for c in np.unique(ys):
        idx = rng.permutation(np.flatnonzero(ys == c))
        n_val = int(round(len(idx) * val_split))
        if val_split > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return rng.permutation(np.asarray(train, np.int64)), np.asarray(sorted(val), np.int64)


def augment_frame(frame: np.ndarray, rng) -> np.ndarray:
    """A random small rotation/scale/shift and brightness/contrast change of a uint8 BGR frame.

    No flips: they change the meaning of digits, text and many signs.
    """
    import cv2

    h, w = frame.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-10, 10), rng.uniform(0.9, 1.1))
    m[:, 2] += rng.uniform(-0.08, 0.08, 2) * (w, h)
    out = cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    return np.clip(out.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)


def _dataset_class(keras):
    class Batches(keras.utils.PyDataset):
        """Batches of preprocessed (and, for training, augmented) images; reshuffled every epoch."""

        def __init__(self, frames, ys, index, prep, batch_size, augment, rng):
            super().__init__()
            self.frames, self.ys, self.index = frames, ys, np.array(index)
            self.prep, self.batch_size, self.augment, self.rng = prep, batch_size, augment, rng
            if augment:
                self.rng.shuffle(self.index)

        def __len__(self):
            return -(-len(self.index) // self.batch_size)

        def __getitem__(self, i):
            idx = self.index[i * self.batch_size : (i + 1) * self.batch_size]
            frames = (augment_frame(self.frames[j], self.rng) if self.augment else self.frames[j] for j in idx)
            return np.stack([self.prep.hwc(f) for f in frames]), self.ys[idx]

        def on_epoch_end(self):
            if self.augment:
                self.rng.shuffle(self.index)

    return Batches
