import click

from edgekit.cli.options import int8_kwargs, int8_options


@click.command("quantize")
@click.argument("bundle", type=click.Path())
@int8_options
def command(bundle, calib_images, **options):
    """Add INT8 (Q/DQ, for TensorRT 8-11) and FP16 models to BUNDLE, calibrated on --calib-images and
    gated on held-out images.

    A model that fails the gate is kept but marked unusable, and the exit code is 3.
    """
    from edgekit.cli import is_quiet, say
    from edgekit.errors import UsageError
    from edgekit.quant.quantize import quantize_bundle

    if not calib_images:
        raise UsageError("quantize needs --calib-images DIR_OR_VIDEO")
    quantize_bundle(bundle, calib_images, progress=not is_quiet(), **int8_kwargs(options))
    say(f"quantized {bundle}")
