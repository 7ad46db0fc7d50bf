import click

CALIB_METHODS = ("entropy", "percentile", "minmax", "auto")  # edgekit.quant.qdq.METHODS, and auto


@click.command("export")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--target", default="jetpack-6.1", show_default=True,
              help="JetPack (jetpack-5.1, jp6.1 …) or TensorRT (tensorrt-8.6, trt-10.3 …) version to check for.")
@click.option("--batch", type=int, default=None, help="Fix the batch size [default: dynamic, named 'batch'].")
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17, or the target's maximum if lower].")
@click.option("--allow-unsupported", is_flag=True, help="Write the bundle even if the target cannot run it.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True, help="Max abs TF vs ONNX Runtime difference.")
@click.option("--labels", "labels_arg", default=None,
              help="Labels for a model without a sidecar: a file (one per line) or a comma-separated list.")
@click.option("--preprocess", "preprocess_arg", default=None,
              help="Preprocessing for a model without a sidecar: an arch preset (small: RGB [0,1]; mobilenetv2: "
                   "[-1,1]; resnet50: BGR mean-subtracted; efficientnetb0: raw 0-255) or a JSON file.")
@click.option("--int8", is_flag=True, help="Also add an INT8 (Q/DQ) model, calibrated on --calib-images.")
@click.option("--calib-images", type=click.Path(), default=None, help="Calibration image folder for --int8.")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="auto", show_default=True,
              help="Calibration method for --int8 (auto tries each and keeps the closest to FP32).")
@click.option("--calib-count", default=500, show_default=True, help="Calibration images to use for --int8.")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Detectors: NMS score threshold `run` uses [default: the TensorFlow NMS's, else 0.25].")
@click.option("--eval-score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Detectors: NMS score threshold for mAP (validate, the INT8 gate) and the TensorRT plugin "
                   "[default: 0.001].")
@click.option("--iou-threshold", type=click.FloatRange(0, 1), default=None,
              help="Detectors: NMS IoU threshold [default: the TensorFlow NMS's, else 0.5].")
@click.option("--max-detections", type=click.IntRange(min=1), default=None,
              help="Detectors: detections kept per image [default: the TensorFlow NMS's, else 100].")
@click.option("--class-agnostic", is_flag=True,
              help="Detectors: suppress overlapping boxes across classes (TensorRT 8.6+).")
@click.option("--force", is_flag=True, help="Replace the bundle folder if it exists.")
def command(model, out, target, batch, opset, allow_unsupported, tolerance, labels_arg, preprocess_arg, int8,
            calib_images, calib_method, calib_count, score_threshold, eval_score_threshold, iou_threshold,
            max_detections, class_agnostic, force):
    """Convert MODEL (.keras, .h5 or a SavedModel folder) to a TensorRT-ready ONNX bundle.

    The graph is cleaned, checked op by op against the target TensorRT, and compared with TensorFlow
    in ONNX Runtime; labels and preprocessing come from MODEL.edgekit.json written by `edgekit train`.
    """
    import sys
    from pathlib import Path

    from edgekit.errors import InputError, UsageError

    if int8 and not calib_images:
        raise UsageError("--int8 needs --calib-images DIR")
    if calib_images and not int8:
        raise UsageError("--calib-images is only used with --int8")
    if calib_images and not Path(calib_images).exists():
        raise InputError(f"calibration images {calib_images} do not exist")
    labels = None
    if labels_arg:
        path = Path(labels_arg)
        try:
            lines = path.read_text("utf-8").splitlines() if path.is_file() else labels_arg.split(",")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read labels from {labels_arg}: {exc}") from exc
        labels = [s.strip() for s in lines if s.strip()]
    preprocess = preprocess_arg
    if preprocess_arg and Path(preprocess_arg).is_file():
        import json

        try:
            preprocess = json.loads(Path(preprocess_arg).read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{preprocess_arg} is not a JSON preprocessing spec: {exc}") from exc
        if not isinstance(preprocess, dict):
            raise InputError(f"{preprocess_arg} is not a JSON object")

    from edgekit.host.export import export_bundle

    nms = {"score_threshold": score_threshold, "eval_score_threshold": eval_score_threshold,
           "iou_threshold": iou_threshold, "max_detections": max_detections, "class_agnostic": class_agnostic or None}
    bundle = export_bundle(
        model, out, target=target, batch=batch, opset=opset, allow_unsupported=allow_unsupported,
        force=force, tolerance=tolerance, labels=labels, preprocess=preprocess,
        nms={k: v for k, v in nms.items() if v is not None} or None,
    )
    m = bundle.manifest
    click.echo(
        f"wrote {bundle.path}: opset {m['opset']}, {m['target']['name']} (TensorRT {m['target']['tensorrt']}) "
        f"{m['target']['verdict']}, parity max abs error {m['parity']['max_abs_error']:.2g}"
    )
    if int8:
        from edgekit.quant.quantize import quantize_bundle

        quantize_bundle(bundle.path, calib_images, method=calib_method, num_images=calib_count,
                        progress=sys.stderr.isatty())
        click.echo(f"added INT8 and FP16 models to {bundle.path}")
