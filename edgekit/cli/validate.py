import click

from edgekit.cli.options import Number


@click.command("validate")
@click.argument("bundle", type=click.Path())
@click.option("--images", "images", required=True, type=click.Path(),
              help="Labelled images: one subfolder per class, named by the bundle's labels; for a detector, a YOLO/COCO "
                   "dataset (its val split) or a folder with one COCO json.")
@click.option("--max-drop", type=Number(min=0), default=1.0, show_default=True,
              help="Largest allowed top-1 (detectors: mAP@0.5) drop of FP16/INT8 below FP32, in points; exit code 3 beyond it.")
@click.option("--out", type=click.Path(), default=None,
              help="Folder for validation.json and validation.png [default: the bundle].")
@click.option("--tensorrt/--no-tensorrt", default=True, show_default=True,
              help="Also run TensorRT engines when TensorRT is available here.")
def command(bundle, images, max_drop, out, tensorrt):
    """Accuracy gate: every model of BUNDLE on labelled images, per precision (detectors: COCO mAP).

    Each judged model's verdict is recorded in the bundle's manifest: a model that fails is refused by
    build, bench, run and service install (unless --allow-failed-gate); a later pass makes it usable again.
    """
    from edgekit.cli import say
    from edgekit.quant.gate import validate

    report = validate(bundle, images, max_drop=max_drop, out=out, tensorrt=tensorrt, check=False)
    click.echo(report.summary())
    say(f"wrote validation.json and validation.png to {out or bundle}")
    report.check()
