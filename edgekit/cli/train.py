import click

ARCHS = ("small", "mobilenetv2", "resnet50", "efficientnetb0")  # edgekit.host.archs.ARCHS, without importing it


@click.command("train")
@click.argument("data_dir", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Model file to write (.keras).")
@click.option("--arch", type=click.Choice(ARCHS), default="small", show_default=True, help="Architecture.")
@click.option("--weights", default="none", show_default=True,
              help="none, imagenet, or a weights file (Keras applications only).")
@click.option("--image-size", default=32, show_default=True, help="Square input side, in pixels.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--val-split", default=0.2, show_default=True, help="Fraction of each class held out for validation.")
@click.option("--learning-rate", type=float, default=None,
              help="Initial Adam learning rate, cosine-decayed [small 3e-3; others 1e-3, 1e-4 pretrained].")
@click.option("--no-augment", is_flag=True, help="Train without augmentation (random shifts, rotation, brightness).")
@click.option("--seed", default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace the model if it exists.")
def command(data_dir, out, arch, weights, image_size, epochs, batch_size, val_split, learning_rate, no_augment, seed,
            force):
    """Train an image classifier on DATA_DIR (one subfolder per class: jpg, png, bmp).

    Writes the model and, beside it, MODEL.edgekit.json (labels and preprocessing) for `edgekit export`.
    """
    from edgekit.cli import is_quiet, say
    from edgekit.host.train import train

    r = train(
        data_dir, out, arch=arch, image_size=image_size, epochs=epochs, batch_size=batch_size,
        val_split=val_split, weights=weights, seed=seed, augment=not no_augment,
        learning_rate=learning_rate, force=force, verbose=0 if is_quiet() else None,
    )
    val = "n/a" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
    skipped = f", {r['skipped']} unreadable skipped" if r["skipped"] else ""
    say(
        f"trained {arch} on {r['images']} images ({len(r['labels'])} classes{skipped}): "
        f"train accuracy {r['train_accuracy']:.4f}, val accuracy {val} (final model, inference mode, no "
        f"augmentation; Keras' epoch figures average augmented batches in training mode)"
    )
    say(f"wrote {out}")
