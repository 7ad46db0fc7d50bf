"""Export a Keras/TF model to a TensorRT-ready ONNX bundle.

source -> tf2onnx (NCHW input, named dynamic batch) -> graph passes -> op-support check for the target
-> TF vs ONNX Runtime parity -> ``model.onnx`` + ``edgekit.json``, written atomically.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from edgekit import __version__
from edgekit.atomic import atomic_dir, check_output_dir, sha256_file
from edgekit.bundle import SCHEMA_VERSION, Bundle
from edgekit.errors import InputError, ModelError, UsageError
from edgekit.jsonfile import read_json
from edgekit.graph.targets import DEFAULT_TARGET, get_target
from edgekit.preprocess import Preprocess
from edgekit.host.probe import probe_inputs
from edgekit.progress import heartbeat

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CONSTANT_OUTPUT = 1e-6  # output spread across probe photos at or below which a model ignores its input
TOOLS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnx-graphsurgeon")


def export_bundle(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    target: str = DEFAULT_TARGET,
    batch: int | None = None,
    opset: int | None = None,
    allow_unsupported: bool = False,
    force: bool = False,
    tolerance: float = 1e-4,
    labels: list[str] | None = None,
    preprocess: Preprocess | dict | str | None = None,
    samples: int = 8,
    seed: int = 0,
    unsafe_load: bool = False,
    nms: dict | None = None,
    task: str | None = None,
    outputs: tuple[str, str] | None = None,
    output_format: dict | None = None,
) -> Bundle:
    """Convert ``model`` to a bundle at ``out`` for ``target``; return the loaded bundle.

    Labels and preprocessing come from the sidecar ``train`` wrote (``<model>.edgekit.json``) unless
    ``labels``/``preprocess`` are given; ``preprocess`` is a Preprocess, its dict (size defaults to the
    model's) or a ``--preprocess`` value (:func:`edgekit.preprocess.named`). Without either, it is found
    (:mod:`edgekit.host.scaling`: the model's own scaling, or a stock keras.applications network) or
    export refuses with a UsageError naming ``--preprocess``; labels are ``0..N-1``. ``batch`` fixes
    the batch size (default: dynamic). ``unsafe_load`` loads Lambda layers (see
    :func:`edgekit.host.convert.load`). Third-party output is held back (:func:`edgekit.quiet.captured`).

    A detector (``task="detect"``, sidecar ``"task": "detection"``, or a graph ending in TensorFlow NMS, which is cut)
    gets the pre-plugin ``model.onnx`` plus ``model.trt.onnx`` with EfficientNMS_TRT for TensorRT;
    ``nms`` overrides :class:`edgekit.nms.NmsParams` fields (score_threshold, iou_threshold, …).
    ``outputs`` names a detector's (boxes, scores) outputs among the model's (else the sidecar's
    ``boxes_output``/``scores_output``, else outputs called ``boxes`` and ``scores``, else the one ending in 4
    is the boxes). ``output_format`` describes its raw outputs (``box_format``, ``box_units``,
    ``score_activation``, ``background``: :class:`edgekit.graph.detector_outputs.OutputFormat`; fields not
    given come from the sidecar), converted to the contract inside the graph.
    """
    from edgekit.quiet import captured

    with captured():
        return _export(model, out, target=target, batch=batch, opset=opset, allow_unsupported=allow_unsupported,
                       force=force, tolerance=tolerance, labels=labels, preprocess=preprocess, samples=samples,
                       seed=seed, unsafe_load=unsafe_load, nms=nms, task=task, outputs=outputs,
                       output_format=output_format)


def _export(model, out, *, target, batch, opset, allow_unsupported, force, tolerance, labels, preprocess, samples,
            seed, unsafe_load, nms, task, outputs, output_format) -> Bundle:
    from edgekit.graph.passes import Passes
    from edgekit.graph.support import check
    from edgekit.host import convert

    tgt = get_target(target)
    opset = opset or tgt.default_opset
    if not tgt.min_opset <= opset <= tgt.max_opset:
        raise UsageError(f"--opset {opset} is outside {tgt.name}'s range {tgt.min_opset}-{tgt.max_opset}")
    if opset > convert.TF2ONNX_MAX_OPSET:
        raise UsageError(f"tf2onnx converts up to opset {convert.TF2ONNX_MAX_OPSET}; got --opset {opset}")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be at least 1, got {batch}")
    if tolerance <= 0:
        raise UsageError(f"--tolerance must be positive, got {tolerance}")
    out = check_output_dir(out, force)
    model = Path(model)
    fmt = convert.source_format(model)
    meta = _sidecar(model)
    if task is not None:  # --task: "detect" or "classify", as train names them
        meta["task"] = "detection" if task == "detect" else "classification"
    explicit_outputs = outputs
    raw, outputs = _detector_outputs(meta, model, output_format, outputs)
    if raw.given and meta.get("task") == "classification":
        raise UsageError(f"{raw.first_given} describes a detector's outputs; this model is a classifier "
                         "(task classification)")
    labels = labels or meta.get("labels")
    given = preprocess if preprocess is not None else meta.get("preprocess")
    if isinstance(given, Preprocess):
        given = given.to_dict()

    if meta.get("task") == "detection":  # edgekit's detector: its box-decoding layer must be registered to load
        from edgekit.host.detector import decode_boxes_layer

        decode_boxes_layer()
    source = convert.load(model, unsafe=unsafe_load)
    named = outputs
    if not outputs and meta.get("task") == "detection" and {"boxes", "scores"} <= set(source.output_names):
        outputs = ("boxes", "scores")  # named as the contract names them (edgekit's own detectors are)
    if outputs and len(source.output_names) > len(outputs) and convert.ends_in_tf_nms(source):
        # a TensorFlow NMS's outputs (boxes, scores, classes, counts) are read as they are: none is dropped
        if named:
            where = ("--boxes-output/--scores-output" if named == explicit_outputs
                     else f'"boxes_output"/"scores_output" in {model.name}.edgekit.json')
            raise UsageError(f"{where} name a detector's raw outputs; this graph ends in TensorFlow NMS, "
                             "whose outputs export reads as they are")
        outputs = None
    if outputs:  # --boxes-output/--scores-output: a detector's outputs by name
        meta["task"] = "detection"
        source.select_outputs(list(outputs))
    if source.detector_nms is not None:  # an anchor detector adapted: a detector, with its own NMS's parameters
        if raw.given:
            raise UsageError(f"{raw.first_given} describes a detector's raw outputs; export decodes "
                             f"this keras-hub detector's outputs itself")
        meta["task"] = "detection"
        nms = {**source.detector_nms, **(nms or {})}
    height, width = _input_size(source, given, model)

    log.info("converting %s (%s) to ONNX opset %d for %s (TensorRT %s)",
             model.name, fmt, opset, tgt.name, tgt.tensorrt)
    with heartbeat("converting with tf2onnx"):
        onnx_model = convert.to_onnx(source, height, width, batch, opset)
    from edgekit.host import export_detection as det

    tf_nms = det.has_tf_nms(onnx_model)
    if tf_nms and meta.get("task") == "classification":
        said = "--task classify" if task is not None else f'"task": "classification" in {model.name}.edgekit.json'
        raise UsageError(f"{said}, but this graph ends in TensorFlow NMS: it is a detector (--task detect)")
    detection = meta.get("task") == "detection" or tf_nms
    if raw.given and (tf_nms or not detection):
        raise UsageError(f"{raw.first_given} describes a detector's raw outputs (boxes, scores); "
                         + ("this graph ends in TensorFlow NMS, whose outputs export reads as they are" if tf_nms
                            else "this model is not a detector (--task detect, or \"task\": \"detection\" "
                                 "in its sidecar)"))
    cut = None
    if detection:
        onnx_model, passes, cut = det.pre_plugin_graph(onnx_model, convert.INPUT_NAME, batch, tgt.supported_ops,
                                                        named=bool(outputs), fmt=raw,
                                                        output_names=source.output_names)
        n_out = onnx_model.graph.output[1].type.tensor_type.shape.dim[2].dim_value
        params = det.nms_params(cut, nms)
    else:
        if nms:
            raise UsageError("NMS options apply to detectors only (--task detect, \"task\": \"detection\" in the "
                             "sidecar, or a graph ending in TensorFlow NMS)")
        if len(onnx_model.graph.output) != 1:
            raise ModelError(f"{model} has {len(onnx_model.graph.output)} outputs; a classifier has one "
                             "(a detector needs --task detect, or \"task\": \"detection\" in its sidecar, "
                             "or a TensorFlow NMS)")
        out_op = _last_op(onnx_model)
        out_name, meaning = ("probs", "probabilities") if out_op == "Softmax" else ("logits", "logits")
        passes = Passes(onnx_model).clean(tgt.supported_ops).finish([convert.INPUT_NAME], [out_name], batch or "batch")
        onnx_model = passes.model()
        n_out = _output_width(onnx_model)
    prep, origin = _preprocess(given, source, onnx_model, height, width)
    if labels is None:
        labels = [str(i) for i in range(n_out)]
        log.warning("no labels recorded for %s (no sidecar from `edgekit train`); using 0..%d: pass --labels "
                    "FILE_OR_LIST to name them", model.name, n_out - 1)
    if len(labels) != n_out:
        hint = ""
        if detection and cut is None:
            hint = ("; labels name the classes without the background column" if raw.background != "none" else
                    "; a background column among the scores? --background first|last drops it"
                    if len(labels) == n_out - 1 else "")
        raise ModelError(f"{model} has {n_out} {'classes' if detection else 'outputs'} but {len(labels)} labels{hint}")

    trt_model = _with_plugin(onnx_model, params, tgt) if detection else onnx_model
    report = check(trt_model, tgt)
    for p in report.warnings:
        log.warning("%s %s: %s", p.op, p.node, p.message)
    if not allow_unsupported:
        report.raise_if_unsupported()
    elif report.errors:
        log.warning("%s; writing the bundle anyway (--allow-unsupported)", report.summary())

    if detection:
        error, spread, samples = det.parity(source, onnx_model, prep, batch, samples, seed, cut, raw, bool(outputs))
    else:
        error, spread, samples = _parity(source, onnx_model, prep, batch, samples, seed)
    if not error <= tolerance:
        raise ModelError(f"ONNX Runtime differs from TensorFlow by {error:.3g} > tolerance {tolerance:g}")
    log.info("parity: max abs error %.3g (tolerance %g)", error, tolerance)
    if cut is not None and cut.per_class_cap is not None:  # parity held on the probe images; it may not elsewhere
        log.warning("%s", cut.per_class_note())
    if spread <= CONSTANT_OUTPUT:
        log.warning("%s gives the same output for %d different images (spread %.2g): the parity check "
                    "proves little, and the model cannot tell images apart (untrained weights?)",
                    model.name, samples, spread)

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "task": "detection" if detection else meta.get("task", "classification"),
        "labels": list(labels),
        "input": {"name": convert.INPUT_NAME, "shape": [batch or "batch", 3, height, width],
                  "layout": "NCHW", "dtype": "float32"},
        "preprocess": prep.to_dict(),
        "preprocess_origin": origin,
        "outputs": (
            [{"name": "boxes", "meaning": "boxes"}, {"name": "scores", "meaning": "scores"}] if detection
            else [{"name": out_name, "meaning": meaning, "shape": [batch or "batch", n_out]}]
        ),
        "models": {},
        "source": {"path": str(model.resolve()), "format": fmt, "sha256": sha256_file(model)},
        "opset": opset,
        "target": report.to_dict(),
        "parity": {"max_abs_error": float(error), "tolerance": tolerance, "samples": samples},
        "passes": [{"name": name, "changes": changes} for name, changes in passes.applied],
        "tools": tool_versions(),
    }
    if detection:
        manifest["nms"] = params.to_dict()
        if cut is not None:
            manifest["nms_cut"] = cut.to_dict()
        elif not raw.is_contract:
            manifest["detector_outputs"] = raw.to_dict()
    import onnx

    with atomic_dir(out, force=force) as tmp:
        onnx.save(onnx_model, tmp / MODEL_FILE)
        bundle = Bundle(tmp, manifest)
        bundle.add_model("fp32", tmp / MODEL_FILE, MODEL_FILE)
        if detection:
            from edgekit.graph.nms import attach_plugin_model

            attach_plugin_model(bundle, "fp32")
        bundle.validate()
        bundle.save()
    return Bundle.load(out)


def tool_versions() -> dict:
    """Versions of edgekit and of the conversion tools installed (tensorflow-cpu counts as tensorflow)."""
    versions = {"edgekit": __version__}
    for name in TOOLS:
        version = _installed(name) or (_installed("tensorflow-cpu") if name == "tensorflow" else None)
        if version:
            versions[name] = version
    return versions


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


SIDECAR_FIELDS = ("task", "labels", "preprocess", "outputs", "training", "box_format", "box_units",
                  "score_activation", "background", "boxes_output", "scores_output")


def _sidecar(model: Path) -> dict:
    """The sidecar's fields (``{}`` without one); InputError for a field of the wrong type, a warning for
    a field export does not read (a misspelt one would otherwise be ignored without a word)."""
    import difflib

    from edgekit.host.train import sidecar_path

    path = sidecar_path(model)
    if not path.is_file():
        return {}
    meta = read_json(path, InputError, f"corrupt sidecar {path}")
    if not isinstance(meta, dict):
        raise InputError(f"corrupt sidecar {path}: not a JSON object")
    task = meta.get("task")
    if task is not None and task not in ("detection", "classification"):
        raise InputError(f'"task" in {path.name} must be "detection" or "classification", got {task!r}')
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) and x for x in labels)):
        raise InputError(f'"labels" in {path.name} must be a list of strings, one per class, got {labels!r}')
    for key in meta:
        if key not in SIDECAR_FIELDS:
            close = difflib.get_close_matches(str(key), SIDECAR_FIELDS, n=1)
            log.warning("%s: field %r is not one export reads (ignored)%s", path.name, key,
                        f'; did you mean "{close[0]}"?' if close else f"; it reads {', '.join(SIDECAR_FIELDS)}")
    return meta


def _detector_outputs(meta: dict, model: Path, given: dict | None, outputs):
    """The detector's OutputFormat (``given`` over the sidecar's fields) and its (boxes, scores) output names
    (``outputs``, else the sidecar's ``boxes_output``/``scores_output``)."""
    from edgekit.graph.detector_outputs import OutputFormat
    from edgekit.host.train import sidecar_path

    side = sidecar_path(model).name
    fmt = OutputFormat.from_sources((meta, f'"{{field}}" in {side}'), (given or {}, "--{option}"))
    if outputs or not (meta.get("boxes_output") or meta.get("scores_output")):
        return fmt, outputs
    names = (meta.get("boxes_output"), meta.get("scores_output"))
    if not all(isinstance(n, str) and n for n in names):
        raise InputError(f'{side}: "boxes_output" and "scores_output" go together, each an output\'s name')
    return fmt, names


def _with_plugin(model, params, tgt):
    """``model`` with its TensorRT NMS appended, for the op check (what TensorRT will parse)."""
    import onnx_graphsurgeon as gs

    from edgekit.graph.nms import append_nms
    from edgekit.graph.support import trt_version

    graph = gs.import_onnx(model)
    append_nms(graph, params, trt_version(tgt))
    return gs.export_onnx(graph)


def _input_size(source, given, model: Path) -> tuple[int, int]:
    """The model's (height, width): its fixed input size, else the given preprocessing's size."""
    size = given.get("size") if isinstance(given, dict) else None
    if size is None:
        if not (source.height and source.width):
            raise UsageError(f"{model} has no fixed input size; give the preprocessing a size")
        return source.height, source.width
    height, width = (int(v) for v in size)
    if (source.height, source.width) not in ((height, width), (None, None)):
        raise ModelError(f"{model} takes {source.height}x{source.width} images but its preprocessing says "
                         f"{height}x{width}")
    return height, width


def _preprocess(given, source, onnx_model, height: int, width: int) -> tuple[Preprocess, str]:
    """The bundle's Preprocess (NCHW) and where it came from (see :mod:`edgekit.host.scaling`)."""
    from edgekit.host.scaling import leading_affine, resolve

    affine = leading_affine(onnx_model)
    fields, origin = resolve(given, source, affine)
    fields = {k: v for k, v in fields.items() if k != "size"}
    prep = Preprocess.from_dict({**fields, "size": (height, width), "layout": "NCHW"})
    if origin != "given":
        log.info("%s: %s", source.path.name, origin)
    elif affine is not None and (prep.scale != 1.0 or prep.mean != (0.0, 0.0, 0.0)):
        layers = ", ".join(source.in_graph_preprocessing) or "its graph"
        log.warning("%s scales its own input (%s: %s) and its preprocessing scales too (scale %g, mean %s): "
                    "pixels are scaled twice unless the model expects that", source.path.name, layers, affine,
                    prep.scale, list(prep.mean))
    return prep, origin


def _last_op(model) -> str | None:
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return producers.get(model.graph.output[0].name)


def _output_width(model) -> int:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2:
        raise ModelError(f"model output has rank {len(dims)}; a classifier outputs [batch, classes]")
    if not dims[1].dim_value:
        raise ModelError("model output has no fixed number of classes")
    return dims[1].dim_value


def _parity(source, onnx_model, prep: Preprocess, batch: int | None, samples: int, seed: int
            ) -> tuple[float, float, int]:
    """Max abs difference between TF and ONNX Runtime on preprocessed photo crops, the spread of
    TensorFlow's outputs across those frames (max - min, largest over outputs), and their count."""
    import onnxruntime as ort

    nhwc, nchw = probe_inputs(prep, batch, samples, seed)
    n = len(nhwc)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: nchw})[0]
    want = source.run(nhwc)
    if got.shape != want.shape:
        raise ModelError(f"ONNX output shape {got.shape} differs from TensorFlow's {want.shape}")
    spread = float(np.max(np.ptp(want.reshape(len(want), -1), axis=0))) if n > 1 else float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - want))), spread, n
