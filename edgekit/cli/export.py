import click

from edgekit.cli.options import ALIAS_PARAMS, INT8_PARAMS, TARGET_HELP, Number, int8_kwargs, int8_options, positive
from edgekit.graph.detector_outputs import CHOICES


@click.command("export")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--target", default="jetpack-6.1", show_default=True, help=TARGET_HELP)
@click.option("--batch", type=int, default=None, help="Fix the batch size [default: dynamic, named 'batch'].")
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17, or the target's maximum if lower].")
@click.option("--allow-unsupported", is_flag=True, help="Write the bundle even if the target cannot run it.")
@click.option("--tolerance", type=positive(), default=1e-4, show_default=True, help="Max abs TF vs ONNX Runtime difference.")
@click.option("--labels", "labels_arg", default=None,
              help="Labels for a model without a sidecar: a file (one per line) or a comma-separated list.")
@click.option("--preprocess", "preprocess_arg", default=None,
              help="Preprocessing for a model without a sidecar, when export cannot find it: raw (RGB 0-255), unit "
                   "(RGB [0,1]), symmetric ([-1,1]), caffe (BGR, ImageNet mean subtracted), torch (ImageNet "
                   "mean/std), scale=S,mean=M1/M2/M3,std=S1/S2/S3,order=rgb|bgr, a keras.applications family "
                   "(mobilenet_v2, resnet, densenet …) or a JSON file.")
@click.option("--task", type=click.Choice(("classify", "detect")), default=None,
              help="What the model is, when it has no sidecar: detect = outputs boxes [B, N, 4] corners "
                   "normalised to the input and scores [B, N, C] probabilities (else say how they differ with "
                   "--box-format, --box-units, --score-activation, --background) [default: the sidecar's, else "
                   "classify, or detect for a graph ending in TensorFlow NMS].")
@click.option("--boxes-output", default=None, help="Detectors: the model output holding boxes [B, N, 4] (by name).")
@click.option("--scores-output", default=None, help="Detectors: the model output holding scores [B, N, C] (by name).")
@click.option("--box-format", type=click.Choice(CHOICES["box_format"]), default=None,
              help="Detectors: the boxes output's coordinates: corners x first (xyxy), corners y first (yxyx), "
                   "or centre and size (cxcywh) [default: the sidecar's box_format, else xyxy].")
@click.option("--box-units", type=click.Choice(CHOICES["box_units"]), default=None,
              help="Detectors: boxes as fractions of the input (normalised, 0..1) or in pixels of the model's "
                   "input [default: the sidecar's box_units, else normalised].")
@click.option("--score-activation", type=click.Choice(CHOICES["score_activation"]), default=None,
              help="Detectors: the scores output is logits to put through sigmoid or softmax (over its last "
                   "axis, background included), or none: already probabilities [default: the sidecar's "
                   "score_activation, else none].")
@click.option("--background", type=click.Choice(CHOICES["background"]), default=None,
              help="Detectors: the scores output's background column, dropped after the activation: first, "
                   "last or none [default: the sidecar's background, else none].")
@click.option("--unsafe-load", is_flag=True,
              help="Load a .keras model with Lambda layers (runs code stored in the file: only for files you trust).")
@click.option("--force", is_flag=True, help="Replace the bundle folder if it exists.")
@click.option("--score-threshold", type=Number(0, 1), default=None,
              help="Detectors: NMS score threshold `run` uses [default: the TensorFlow NMS's, else 0.25].")
@click.option("--eval-score-threshold", type=Number(0, 1), default=None,
              help="Detectors: NMS score threshold for mAP (validate, the INT8 gate) and the TensorRT plugin "
                   "[default: 0.001].")
@click.option("--iou-threshold", type=Number(0, 1), default=None,
              help="Detectors: NMS IoU threshold [default: the TensorFlow NMS's, else 0.5].")
@click.option("--max-detections", type=click.IntRange(min=1), default=None,
              help="Detectors: detections kept per image [default: the TensorFlow NMS's, else 100].")
@click.option("--class-agnostic", is_flag=True,
              help="Detectors: suppress overlapping boxes across classes (plugin: TensorRT 8.6+).")
@click.option("--nms", "nms_mode", type=click.Choice(["plugin", "native"]), default=None,
              help="Detectors: TensorRT's NMS, the EfficientNMS_TRT plugin or ONNX NonMaxSuppression (INMSLayer) "
                   "[default: native for TensorRT 10.12+ (the plugin is deprecated there), else plugin].")
@click.option("--int8", is_flag=True, help="Also add INT8 and FP16 models, as `edgekit quantize` does, with its options:")
@int8_options
def command(model, out, target, batch, opset, allow_unsupported, tolerance, labels_arg, preprocess_arg, task,
            boxes_output, scores_output, box_format, box_units, score_activation, background, unsafe_load,
            score_threshold, eval_score_threshold, iou_threshold, max_detections, class_agnostic, nms_mode, force,
            int8, calib_images, **int8_opts):
    """Convert MODEL (.keras, .h5 or a SavedModel folder) to a TensorRT-ready ONNX bundle.

    The graph is cleaned, checked op by op against the target TensorRT, and compared with TensorFlow
    in ONNX Runtime; labels and preprocessing come from MODEL.edgekit.json written by `edgekit train`.
    """
    from pathlib import Path

    from edgekit.atomic import refuse_inputs
    from edgekit.cli import is_quiet, say
    from edgekit.errors import InputError, UsageError

    if iou_threshold == 0:  # before any conversion: TensorRT's NMS plugin validates iouThreshold > 0
        raise UsageError("--iou-threshold must be above 0 (TensorRT's NMS plugin refuses 0), got 0")
    refuse_inputs({"-o": out}, {"MODEL": model, "--calib-images": calib_images})  # --force would replace them
    if bool(boxes_output) != bool(scores_output):
        raise UsageError("--boxes-output and --scores-output go together")
    output_format = {"box_format": box_format, "box_units": box_units, "score_activation": score_activation,
                     "background": background}
    if task == "classify" and any(output_format.values()):
        given = next(k for k, v in output_format.items() if v)
        raise UsageError(f"--{given.replace('_', '-')} describes a detector's outputs; --task classify says "
                         "this model is a classifier")
    if int8 and not calib_images:
        raise UsageError("--int8 needs --calib-images DIR_OR_VIDEO")
    ctx = click.get_current_context()
    given = [p.opts[0] for p in ctx.command.params if p.name in INT8_PARAMS + ALIAS_PARAMS
             and ctx.get_parameter_source(p.name) is not click.core.ParameterSource.DEFAULT]
    if given and not int8:
        raise UsageError(f"{given[0]} is only used with --int8")
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
        from edgekit.jsonfile import read_json

        preprocess = read_json(preprocess_arg, InputError, f"{preprocess_arg} is not a JSON preprocessing spec")
        if not isinstance(preprocess, dict):
            raise InputError(f"{preprocess_arg} is not a JSON object")

    from edgekit.host.export import export_bundle

    nms = {"score_threshold": score_threshold, "eval_score_threshold": eval_score_threshold,
           "iou_threshold": iou_threshold, "max_detections": max_detections, "class_agnostic": class_agnostic or None,
           "tensorrt_nms": nms_mode}
    options = dict(target=target, batch=batch, opset=opset, allow_unsupported=allow_unsupported, tolerance=tolerance,
                   labels=labels, preprocess=preprocess, unsafe_load=unsafe_load,
                   nms={k: v for k, v in nms.items() if v is not None} or None, task=task,
                   outputs=(boxes_output, scores_output) if boxes_output or scores_output else None,
                   output_format={k: v for k, v in output_format.items() if v} or None)
    if not int8:
        bundle = export_bundle(model, out, force=force, **options)
        _wrote(bundle.manifest, out)
        return
    from edgekit.atomic import atomic_dir
    from edgekit.errors import GateError
    from edgekit.quant.quantize import quantize_bundle

    failed = None
    with atomic_dir(out, force=force) as staging:  # the old bundle stays until the new one is complete
        bundle = export_bundle(model, staging, force=True, **options)
        try:
            quantize_bundle(staging, calib_images, progress=not is_quiet(), bundle_name=str(out),
                            **int8_kwargs(int8_opts))
        except GateError as exc:  # a verdict: the bundle is complete, its failed model marked unusable
            failed = exc
    _wrote(bundle.manifest, out)
    if failed is not None:
        raise failed
    say(f"added INT8{' and FP16' if int8_opts['fp16'] else ''} models to {out}")


def _wrote(m: dict, out) -> None:
    from edgekit.cli import say

    say(
        f"wrote {out}: opset {m['opset']}, {m['target']['name']} (TensorRT {m['target']['tensorrt']}) "
        f"{m['target']['verdict']}, parity max abs error {m['parity']['max_abs_error']:.2g}"
    )
