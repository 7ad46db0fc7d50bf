"""The detection branch of export: a detector -> pre-plugin graph (``boxes``, ``scores``) + EfficientNMS_TRT model.

A detector is a model whose sidecar says ``"task": "detection"`` (outputs boxes [B, N, 4] corners
normalised to the input and scores [B, N, C] probabilities, or raw outputs converted to them in the
graph: :mod:`edgekit.graph.detector_outputs`), or any model whose graph ends in a
TensorFlow NMS, which is cut off (:func:`edgekit.graph.nms.cut_tf_nms`) and replaced by the plugin
on TensorRT and by :mod:`edgekit.nms` on ONNX Runtime. NMS parameters not given at export come from
the cut TensorFlow NMS, else from :class:`edgekit.nms.NmsParams`' defaults.
"""

from __future__ import annotations

import logging

import numpy as np

from edgekit.errors import ModelError
from edgekit.nms import NmsParams, efficient_nms

log = logging.getLogger(__name__)



def has_tf_nms(model) -> bool:
    """True when the converted graph (subgraphs included) holds an ONNX NonMaxSuppression."""
    from edgekit.graph.support import op_histogram

    return op_histogram(model).get("NonMaxSuppression", 0) > 0


def pre_plugin_graph(onnx_model, input_name: str, batch, supported_ops, named: bool = False, fmt=None,
                     output_names=None):
    """The cleaned pre-plugin graph (``onnx.ModelProto``), its Passes, and the NMS Cut (None for a native
    detector). ``named``: the outputs are (boxes, scores) in that order, as the user named them. ``fmt``
    (:class:`edgekit.graph.detector_outputs.OutputFormat`) describes a native detector's raw outputs,
    converted to the contract inside the graph. ``output_names``: the model's names of the graph's outputs,
    in order (what --boxes-output/--scores-output take), for messages."""
    import onnx_graphsurgeon as gs

    from edgekit.graph.detector_outputs import OutputFormat, check_raw_shapes, convert
    from edgekit.graph.nms import BOXES, SCORES, cut_tf_nms, find_nms
    from edgekit.graph.passes import Passes

    graph = gs.import_onnx(onnx_model)
    cut = None
    if find_nms(graph):
        cut = cut_tf_nms(graph)
        log.info("%s", cut.summary())
    else:
        if len(graph.outputs) != 2:
            raise ModelError(f"a detector exports two outputs (boxes [B, N, 4], scores [B, N, C]); this one has "
                             f"{len(graph.outputs)} and no TensorFlow NMS to cut")
        if not named:
            graph.outputs = _boxes_first(graph.outputs, output_names)
    passes = Passes(graph).clean(supported_ops)
    boxes, scores = _output_values(passes.graph)
    if cut is not None:
        cut.candidates(boxes.shape[1])
    else:
        fmt = fmt or OutputFormat()
        check_raw_shapes(boxes.shape, scores.shape, fmt)  # before a conversion could hide a wrong shape
        _, _, height, width = passes.graph.inputs[0].shape
        passes.to_detection_contract(fmt, height, width)
        boxes, scores = convert(boxes, scores, fmt, height, width)
        if not fmt.is_contract:
            log.info("detector outputs converted to the contract: %s", fmt.describe())
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ModelError(f"detector outputs must be boxes [B, N, 4] and scores [B, N, C]; got boxes "
                         f"{list(boxes.shape)} and scores {list(scores.shape)}")
    passes.finish([input_name], [BOXES, SCORES], batch or "batch")
    for tensor, value in zip(passes.graph.outputs, (boxes, scores)):
        tensor.shape, tensor.dtype = [batch or "batch", *value.shape[1:]], np.float32
    model = passes.model()
    return model, passes, cut


def _boxes_first(outputs: list, names=None) -> list:
    """(boxes, scores): the output whose last dimension is 4 first; ModelError when both end in 4, naming
    them by ``names`` (the model's names, which --boxes-output/--scores-output take) where given."""
    if all(_is_boxes(t) for t in outputs):
        names = list(names) if names and len(names) == len(outputs) else [t.name for t in outputs]
        shapes = [f"[{', '.join(str(d) if isinstance(d, int) else '?' for d in t.shape)}]" for t in outputs]
        raise ModelError(f"both detector outputs end in 4 ({', '.join(f'{n} {s}' for n, s in zip(names, shapes))}): "
                         "say which holds the boxes with --boxes-output NAME --scores-output NAME")
    return sorted(outputs, key=lambda t: not _is_boxes(t))


def _output_values(graph) -> list[np.ndarray]:
    """The graph's outputs for one blank image, computed by ONNX Runtime: their true shapes.

    Shape inference cannot see through a TensorFlow reshape to ``tf.shape(x)[0]``; N and C are fixed
    for a fixed input size, and the plugin and the runners need them.
    """
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    model = gs.export_onnx(graph.copy())
    shape = [d if isinstance(d, int) else 1 for d in graph.inputs[0].shape]
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run([t.name for t in graph.outputs], {graph.inputs[0].name: np.zeros(shape, np.float32)})
    except Exception as exc:  # onnxruntime raises untyped errors
        raise ModelError(f"ONNX Runtime cannot run the detector graph: {exc}") from exc


def nms_params(cut, overrides: dict | None) -> NmsParams:
    """Export's NMS parameters: those given, else the cut TensorFlow NMS's, else the defaults."""
    values = {}
    if cut is not None:
        if cut.iou_threshold is not None:
            values["iou_threshold"] = round(cut.iou_threshold, 6)
        if cut.score_threshold is not None and 0.0 <= cut.score_threshold <= 1.0:  # TF's default is -inf
            values["score_threshold"] = round(cut.score_threshold, 6)
            values["eval_score_threshold"] = min(NmsParams.eval_score_threshold, values["score_threshold"])
        if cut.max_detections:
            values["max_detections"] = int(cut.max_detections)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return NmsParams(**values)


def parity(source, model, prep, batch, samples: int, seed: int, cut, fmt=None, named: bool = False
           ) -> tuple[float, float, int]:
    """Max abs difference between TensorFlow and ONNX Runtime (+ edgekit's NMS for a cut model), the
    spread of the class scores across the photo crops (max - min, largest over scores; 0: the model
    ignores its input), and the frame count.

    A native detector is compared output by output (boxes, scores), TensorFlow's raw outputs converted
    as ``fmt`` says (:func:`edgekit.graph.detector_outputs.convert`, what the graph's added ops do);
    ``named``: TensorFlow gives (boxes, scores) in that order. A model with TensorFlow NMS is
    compared on detections: ONNX Runtime's boxes/scores through :func:`edgekit.nms.efficient_nms`
    at the TensorFlow NMS's own thresholds against TensorFlow's NMS outputs; a different number of
    detections, or different classes, is a ModelError.
    """
    import onnxruntime as ort

    from edgekit.host.probe import probe_inputs

    nhwc, nchw = probe_inputs(prep, batch, samples, seed)
    n = len(nhwc)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["boxes", "scores"], {session.get_inputs()[0].name: nchw})
    spread = float(np.max(np.ptp(scores.reshape(n, -1), axis=0))) if n > 1 else float("inf")
    want = source.run(nhwc)
    want = want if isinstance(want, list) else [want]
    if cut is None:
        from edgekit.graph.detector_outputs import OutputFormat, convert

        if named and len(want) == 2:
            tf_boxes, tf_scores = want
        else:
            tf_boxes = next((o for o in want if o.ndim == 3 and o.shape[-1] == 4), None)
            tf_scores = next((o for o in want if o is not tf_boxes), None)
        if tf_boxes is None or tf_scores is None:
            raise ModelError(f"a detector outputs boxes [B, N, 4] and scores [B, N, C]; TensorFlow gives "
                             f"{', '.join(str(list(o.shape)) for o in want)}")
        tf_boxes, tf_scores = convert(tf_boxes, tf_scores, fmt or OutputFormat(), *nhwc.shape[1:3])
        for name, onnx_out, tf_out in (("boxes", boxes, tf_boxes), ("scores", scores, tf_scores)):
            if onnx_out.shape != tf_out.shape:
                raise ModelError(f"detector output {name}: ONNX Runtime gives {list(onnx_out.shape)}, "
                                 f"TensorFlow {list(tf_out.shape)}")
        return float(max(np.abs(boxes - tf_boxes).max(), np.abs(scores - tf_scores).max())), spread, n
    tf = tf_nms_outputs(want)
    dets = efficient_nms(boxes, scores, score_threshold=cut.score_threshold or 0.0,
                         iou_threshold=cut.iou_threshold or 0.5, max_output_boxes=tf["detection_boxes"].shape[1])
    if cut.clip_boxes:
        np.clip(dets["detection_boxes"], 0.0, 1.0, out=dets["detection_boxes"])
    try:
        return detection_difference(dets, tf), spread, n
    except ModelError as exc:
        note = cut.per_class_note()
        raise ModelError(f"{exc}; {note}" if note else str(exc)) from exc


def tf_nms_outputs(outputs: list) -> dict[str, np.ndarray]:
    """TensorFlow NMS outputs as the plugin's four: boxes ``[y1, x1, y2, x2]`` (rank 3, or rank 2 for one
    image), scores, classes (absent for single-class NMS: class 0), valid counts (absent for the unpadded
    ``non_max_suppression_v4/v5``: every row is valid)."""
    boxes = next((o for o in outputs if o.ndim in (2, 3) and o.shape[-1] == 4), None)
    if boxes is None:
        raise ModelError("cannot find the TensorFlow NMS's boxes among the model's outputs")
    boxes = boxes if boxes.ndim == 3 else boxes[None]
    rest = [o for o in outputs if o is not boxes and o.size != boxes.size]
    valid = next((o for o in rest if o.ndim <= 1 and o.size == boxes.shape[0]), None)
    per_box = [o.reshape(boxes.shape[:2]) for o in rest if o is not valid and o.size == boxes.shape[0] * boxes.shape[1]]
    if len(per_box) == 2:
        integral = [bool(np.all(o == np.round(o))) for o in per_box]
        classes, scores = (per_box[0], per_box[1]) if integral[0] and not integral[1] else (per_box[1], per_box[0])
    elif len(per_box) == 1:
        scores, classes = per_box[0], np.zeros(boxes.shape[:2])
    else:
        raise ModelError("cannot read the TensorFlow NMS outputs (boxes, scores, classes, valid detections)")
    counts = (np.asarray(valid).reshape(-1, 1) if valid is not None
              else np.full((boxes.shape[0], 1), boxes.shape[1]))
    return {"num_detections": counts.astype(np.int32),
            "detection_boxes": boxes[..., [1, 0, 3, 2]].astype(np.float32),
            "detection_scores": scores.astype(np.float32), "detection_classes": classes.astype(np.int32)}


def detection_difference(got: dict, want: dict) -> float:
    """Max abs difference of the valid boxes and scores; ModelError when counts or classes differ."""
    if not np.array_equal(got["num_detections"], want["num_detections"]):
        raise ModelError(f"edgekit's NMS keeps {got['num_detections'].ravel().tolist()} detections per image, "
                         f"TensorFlow's {want['num_detections'].ravel().tolist()}")
    worst = 0.0
    for b, n in enumerate(want["num_detections"].ravel()):
        if not np.array_equal(got["detection_classes"][b, :n], want["detection_classes"][b, :n]):
            raise ModelError(f"edgekit's NMS and TensorFlow's give different classes on sample {b}")
        if n:
            worst = max(worst, float(np.abs(got["detection_boxes"][b, :n] - want["detection_boxes"][b, :n]).max()),
                        float(np.abs(got["detection_scores"][b, :n] - want["detection_scores"][b, :n]).max()))
    return worst


def _is_boxes(tensor) -> bool:
    shape = tensor.shape or []
    return len(shape) == 3 and shape[-1] == 4
