import click


@click.command("sample-data")
@click.argument("out", type=click.Path())
@click.option("--image-size", default=32, show_default=True, help="Side of the written images, in pixels.")
@click.option("--val-split", default=0.2, show_default=True, help="Fraction held out in val/ (and val.mp4).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def command(out, image_size, val_split, force):
    """Write the sample image set (scikit-learn's real handwritten digits) to OUT.

    OUT gets train/ and val/ (one folder per digit) and val.mp4, the held-out digits as a video.
    """
    from edgekit.cli import say
    from edgekit.sample_data import write_sample_data

    path = write_sample_data(out, size=image_size, val_fraction=val_split, force=force)
    say(f"wrote sample data to {path} (train/, val/, val.mp4)")
