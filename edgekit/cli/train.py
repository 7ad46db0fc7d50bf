from __future__ import annotations

import click

from edgekit.cli.options import Number

ARCHS = ("small", "mobilenetv2", "resnet50", "efficientnetb0")  # edgekit.host.archs.ARCHS, without importing it
DETECT_ARCHS = ("medium", "small-v1")  # edgekit.host.detector.HEADS beyond small: --task detect only
DEFAULTS = {"classify": {"image_size": 32, "epochs": 10, "batch_size": 32},
            "detect": {"image_size": 160, "epochs": 30, "batch_size": 16}}


@click.command("train")
@click.argument("data_dir", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Model file to write (.keras).")
@click.option("--task", type=click.Choice(tuple(DEFAULTS)), default="classify", show_default=True,
              help="classify: one subfolder per class; detect: a YOLO (data.yaml) or COCO (annotations/) folder.")
@click.option("--arch", type=click.Choice(ARCHS + DETECT_ARCHS), default="small", show_default=True,
              help="Architecture (backbone). Detectors: small (CPUs, Nanos), medium (wider, three levels: Orin), "
                   "small-v1 (the original single-level detector) or a Keras application.")
@click.option("--weights", default="none", show_default=True,
              help="none, imagenet, or a weights file (Keras applications only).")
@click.option("--image-size", type=click.IntRange(8, 4096), help="Square input side, in pixels [classify 32, detect 160].")
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the training set [classify 10, detect 30].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per training step [classify 32, detect 16].")
@click.option("--val-split", type=Number(0, 1, max_open=True),
              help="Fraction of each class held out for validation [0.2]; classify only (a detection set has val/).")
@click.option("--learning-rate", type=Number(0, 1, min_open=True), default=None,
              help="Initial Adam learning rate, cosine-decayed [classifiers: small 3e-3; detectors: small/medium 6e-3, small-v1 3e-3; Keras applications 1e-3, 1e-4 pretrained].")
@click.option("--no-augment", is_flag=True,
              help="Train without augmentation (random zoom and shift, colour; detect: left-right flips too).")
@click.option("--no-flip", is_flag=True,
              help="Detect: augment without left-right flips (for classes a mirror changes: digits, text, arrows).")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace the model if it exists.")
def command(data_dir, out, task, arch, weights, image_size, epochs, batch_size, val_split, learning_rate, no_augment,
            no_flip, seed, force):
    """Train an image classifier or an object detector on DATA_DIR.

    \b
    --task classify: DATA_DIR holds one subfolder per class (jpg, png, bmp).
    --task detect:   DATA_DIR is YOLO (data.yaml, images/{train,val}, labels/{train,val}; DATA/data.yaml works too)
                     or COCO (annotations/instances_{train,val}.json, {train,val}/).
    Writes the model and, beside it, MODEL.edgekit.json (task, labels, preprocessing) for `edgekit export`.
    """
    from edgekit.cli import is_quiet, say
    from edgekit.errors import UsageError

    from edgekit.atomic import refuse_inputs

    refuse_inputs({"-o": out}, {"DATA_DIR": data_dir, "--weights": weights})  # --force would replace them
    task = _task(data_dir, task)

    given = {"image_size": image_size, "epochs": epochs, "batch_size": batch_size}
    opts = {k: DEFAULTS[task][k] if v is None else v for k, v in given.items()}
    common = dict(arch=arch, weights=weights, seed=seed, augment=not no_augment, learning_rate=learning_rate,
                  force=force, verbose=0 if is_quiet() else None, **opts)
    if task == "detect":
        if val_split is not None:
            raise UsageError("--val-split is for --task classify; a detection dataset brings its own val split")
        from edgekit.host.train_detect import train_detector

        r = train_detector(data_dir, out, flip=not no_flip, **common)
        recall, precision = ("n/a" if v is None else f"{v:.3f}" for v in (r["val_recall"], r["val_precision"]))
        skipped = sum(r["skipped"].values())
        say(
            f"trained a {arch} detector on {r['images']['train']} images ({r['boxes']['train']} boxes, "
            f"{len(r['labels'])} classes{f', {skipped} bad images skipped' if skipped else ''}): "
            f"val recall {recall}, precision {precision} at IoU 0.5 after NMS at score {r['score_threshold']:g} "
            "(training-progress figures, not mAP)"
        )
    else:
        if arch in DETECT_ARCHS or no_flip:
            raise UsageError(f"{'--no-flip' if no_flip else f'--arch {arch}'} is for --task detect")
        from edgekit.host.train import train

        r = train(data_dir, out, val_split=0.2 if val_split is None else val_split, **common)
        val = "n/a" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        skipped = f", {r['skipped']} unreadable skipped" if r["skipped"] else ""
        say(
            f"trained {arch} on {r['images']} images ({len(r['labels'])} classes{skipped}): "
            f"train accuracy {r['train_accuracy']:.4f}, val accuracy {val} (final model, inference mode, no "
            f"augmentation; Keras' epoch figures average augmented batches in training mode)"
        )
    say(f"wrote {out}")


def _task(data_dir: str, task: str) -> str:
    """``--task`` as given, or ``detect`` when it was left out and DATA_DIR is a YOLO/COCO set (or its data.yaml)."""
    import logging
    from pathlib import Path

    root = Path(data_dir)
    detection = root.suffix in (".yaml", ".yml") or any((root / n).exists() for n in ("data.yaml", "data.yml", "annotations"))
    ctx = click.get_current_context()
    if not detection or task == "detect":
        return task
    if ctx.get_parameter_source("task") is not click.core.ParameterSource.DEFAULT:
        from edgekit.errors import UsageError

        raise UsageError(f"{data_dir} is a detection dataset (YOLO/COCO); train a detector with --task detect")
    logging.getLogger("edgekit.train").info("%s is a detection dataset: training a detector (--task detect)", data_dir)
    return "detect"
