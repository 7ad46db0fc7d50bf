import click


@click.command("quantize")
@click.argument("bundle", type=click.Path())
@click.option("--images", "images", required=True, type=click.Path(),
              help="Calibration images: a folder (searched recursively; jpg, png, bmp) or a video file.")
@click.option("--method", type=click.Choice(["auto", "entropy", "percentile", "minmax"]), default="auto",
              show_default=True, help="How activation ranges are chosen (auto: the one closest to FP32).")
@click.option("--num-images", default=500, show_default=True, help="Calibration images to use (warns below 100).")
@click.option("--holdout", default=200, show_default=True,
              help="Images held out of calibration to gate the result (0: no gate).")
@click.option("--gate-images", type=click.Path(), default=None,
              help="A labelled folder (one subfolder per label; for a detector a YOLO/COCO dataset) to gate on "
                   "instead of held-out images.")
@click.option("--max-drop", default=1.0, show_default=True,
              help="Largest allowed top-1 (detectors: mAP@0.5) drop, in points.")
@click.option("--every", default=10, show_default=True, help="Sample a video every N frames.")
@click.option("--seed", default=0, show_default=True, help="Shuffling seed.")
@click.option("--keep-float", multiple=True, metavar="NODE", help="Leave this node in float (repeatable).")
@click.option("--fp16/--no-fp16", default=True, show_default=True, help="Also add an FP16 model (TensorRT 11).")
@click.option("--cpu-variant", is_flag=True,
              help="Also add an INT8 model only ONNX Runtime on the CPU uses: asymmetric uint8 activations, "
                   "ReLUs fused, all but the score head quantized "
                   "(MobileNetV2 128x128 on x86: 1.2-1.7x FP32 at batch 1, 2.2-2.5x at 32).")
def command(bundle, images, method, num_images, holdout, gate_images, max_drop, every, seed, keep_float, fp16,
            cpu_variant):
    """Add INT8 (Q/DQ, for TensorRT 8-11) and FP16 models to BUNDLE, gated on held-out images.

    A model that fails the gate is kept but marked unusable, and the exit code is 3.
    """
    import sys

    from edgekit.quant.quantize import quantize_bundle

    quantize_bundle(
        bundle, images, method=method, num_images=num_images, holdout=holdout, gate_images=gate_images,
        max_drop=max_drop, fp16=fp16, cpu_variant=cpu_variant, keep_float=keep_float, every=every, seed=seed,
        progress=sys.stderr.isatty(),
    )
    click.echo(f"quantized {bundle}")
