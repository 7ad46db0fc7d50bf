from __future__ import annotations

import click

from edgekit.cli.options import Number


@click.command("sample-data")
@click.argument("out", type=click.Path())
@click.option("--task", type=click.Choice(["classify", "detect", "track"]), default="classify", show_default=True,
              help="classify: digits in class folders; detect: digits pasted on real photos, with boxes; "
                   "track: a video of moving cards with true tracks and line crossings, and their detector.")
@click.option("--image-size", type=int, help="Side of the written images, in pixels [classify 32; detect 320 wide, 4:3].")
@click.option("--val-split", type=Number(0, 1, max_open=True), help="Fraction held out in val/ (and val.mp4) [0.2]; classify only.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def command(out, task, image_size, val_split, force):
    """Write a sample image set made from scikit-learn's real handwritten digits to OUT.

    \b
    classify: OUT gets train/ and val/ (one folder per digit) and val.mp4, the held-out digits as a video.
    detect:   OUT gets yolo/ and coco/ (the same scenes in both layouts), val.mp4 (the val scenes)
              and val.boxes.json (their boxes).
    track:    OUT gets track.mp4 (cards moving over a real photo), track.truth.json (their tracks,
              the line door and its true crossings) and cards.bundle (a tiny detector of the cards).
    """
    from edgekit.cli import say
    from edgekit.errors import UsageError
    from edgekit.sample_data import DETECT_SCENE, write_detection_sample_data, write_sample_data

    if task == "track":
        if val_split is not None or image_size is not None:
            raise UsageError("--val-split and --image-size are not for --task track (its video is 320x240)")
        from edgekit.sample_tracking import write_tracking_sample

        path = write_tracking_sample(out, force=force)
        say(f"wrote the tracking sample to {path} (track.mp4, track.truth.json, cards.bundle)")
        return
    if task == "detect":
        if val_split is not None:
            raise UsageError("--val-split is for --task classify; the detection set has fixed train/val splits")
        size = DETECT_SCENE[1] if image_size is None else image_size
        path = write_detection_sample_data(out, size=size, force=force)
        say(f"wrote sample detection data to {path} (yolo/, coco/, val.mp4, val.boxes.json)")
        return
    path = write_sample_data(out, size=32 if image_size is None else image_size,
                             val_fraction=0.2 if val_split is None else val_split, force=force)
    say(f"wrote sample data to {path} (train/, val/, val.mp4)")
