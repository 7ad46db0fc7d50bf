"""The accuracy gate for detection bundles: COCO mAP@0.5:0.95 and mAP@0.5 per model, with pycocotools.

Every model runs at the bundle's *eval* score threshold (``nms.eval_score_threshold``, ~0.001) and
``nms.max_detections``, as COCO evaluation wants. On labelled images (a COCO json or a YOLO
``images/`` + ``labels/`` folder) the metric is mAP against the labels; without labels it is mAP@0.5
against the FP32 model's detections at the run threshold (agreement). A reduced precision fails
when its mAP@0.5 drops more than ``max_drop`` points (percent) below FP32's with confidence: the
lower end of the drop's 90% bootstrap interval over the images (:mod:`edgekit.quant.det_bootstrap`)
is above ``max_drop``. The interval is reported; one that straddles ``max_drop`` is named uncertain.

:mod:`edgekit.quant.gate` dispatches here for ``task == "detection"``; reports share its Result
fields (``accuracy`` holds mAP@0.5, ``map`` mAP@0.5:0.95) so quantize and validate treat both alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.bundle import Bundle, gate_basis
from edgekit.errors import EdgekitError, InputError, some
from edgekit.images import ImageReader
from edgekit.nms import NmsParams, efficient_nms
from edgekit.quant.det_bootstrap import drop_interval, matches
from edgekit.quant.report import MODEL_PRECISION, Report, Result, batched_outputs, median_latency_ms

log = logging.getLogger(__name__)

METRIC = "map50"


@dataclass
class DetectionResult(Result):
    """A gate row for a detector: ``accuracy`` is mAP@0.5 (percent) on labels, ``map`` mAP@0.5:0.95."""

    map: float | None = None
    drop_interval: tuple | None = None  # 90% bootstrap interval of the drop (points) over the images


@dataclass
class DetectionReport(Report):
    """The gate's verdict for a detection bundle (metric ``map50``)."""

    metric: str = METRIC
    results: list = field(default_factory=list)

    def summary(self) -> str:
        """The table: mAP on labels, or (no labels: a quantize hold-out) mAP@0.5 against FP32's detections."""
        if self.labelled:
            lines = [f"{'model':<16}{'backend':<13}{'mAP50 %':>8}{'mAP %':>8}{'agree %':>9}{'ms':>8}  gate"]
        else:
            lines = [f"{'model':<16}{'backend':<13}{'mAP50 % vs FP32 detections':>27}{'ms':>8}  gate"]
        for r in self.results:
            if r.skipped:
                lines.append(f"{r.name:<16}{r.backend:<13}  skipped: {r.skipped}")
                continue
            gate = "ref" if r.passed is None else ("pass" if r.passed else f"FAIL (-{r.drop:.2f} pts)")
            if r.drop_interval is not None:
                low, high = r.drop_interval
                uncertain = " uncertain: more images would settle it" if low <= self.max_drop < high else ""
                gate += f" (drop {r.drop:.2f}, 90% interval {low:.2f}..{high:.2f}{uncertain})"
            figures = (f"{_fmt(r.accuracy, 8)}{_fmt(r.map, 8)}{_fmt(r.agreement, 9)}" if self.labelled
                       else _fmt(r.agreement, 27))
            lines.append(f"{r.name:<16}{r.backend:<13}{figures}{_fmt(r.latency_ms, 8, 3)}  {gate}")
        return "\n".join(lines)


def _fmt(value, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


# ---- running models -----------------------------------------------------------------------------
def _raw(runner, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``boxes``, ``scores`` of a pre-plugin model on all of ``x``, and the median batch-1 latency (ms)."""
    parts = batched_outputs(runner, x, batch_size)
    boxes = np.concatenate([p["boxes"] for p in parts]).astype(np.float32)
    scores = np.concatenate([p["scores"] for p in parts]).astype(np.float32)
    return boxes, scores, median_latency_ms(runner, x)


def _nms(boxes, scores, params: NmsParams, threshold: float) -> dict:
    return efficient_nms(boxes, scores, score_threshold=threshold, iou_threshold=params.iou_threshold,
                         max_output_boxes=params.max_detections, class_agnostic=params.class_agnostic)


def fp32_reference(bundle: Bundle, x: np.ndarray, batch_size: int = 32) -> tuple[tuple, float]:
    """FP32's (boxes, scores) on ``x`` and its median batch-1 latency: what every model is scored against."""
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(bundle.model_path("fp32")) as runner:
        boxes, scores, ms = _raw(runner, x, batch_size)
    return (boxes, scores), ms


# ---- COCO evaluation ----------------------------------------------------------------------------
def coco_map(truth: list[np.ndarray], dets: dict, num_classes: int, size: tuple[int, int]) -> tuple[float, float]:
    """(mAP@0.5:0.95, mAP@0.5) in percent by pycocotools' COCOeval (see :func:`coco_stats`)."""
    stats = coco_stats(truth, dets, num_classes, size)
    return stats[0], stats[1]


def coco_stats(truth: list[np.ndarray], dets: dict, num_classes: int, size: tuple[int, int]) -> list[float]:
    """COCOeval's 12 summary figures in percent (mAP@0.5:0.95, @0.5, @0.75, small/medium/large, AR…);
    all 0 when there is no truth or no detection.

    ``truth``: per image an array of rows ``(class, x1, y1, x2, y2)`` in model-input pixels; ``dets``:
    the NMS plugin's outputs, boxes normalised to the model input of ``size`` (h, w).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    h, w = size
    gt = {"images": [{"id": i, "width": w, "height": h} for i in range(len(truth))],
          "categories": [{"id": c} for c in range(num_classes)], "annotations": []}
    for i, rows in enumerate(truth):
        for c, x1, y1, x2, y2 in np.asarray(rows, np.float64).reshape(-1, 5):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(c),
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                      "iscrowd": 0})
    rows = []
    for i in range(len(truth)):
        n = int(dets["num_detections"][i, 0])
        b = dets["detection_boxes"][i, :n].astype(np.float64) * [w, h, w, h]
        for (x1, y1, x2, y2), s, c in zip(b, dets["detection_scores"][i, :n], dets["detection_classes"][i, :n]):
            rows.append([i, x1, y1, x2 - x1, y2 - y1, float(s), int(c)])
    if not gt["annotations"] or not rows:
        return [0.0] * 12
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(np.asarray(rows, np.float64))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max(100, int(dets["detection_scores"].shape[1]))]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [max(0.0, float(v) * 100) for v in ev.stats]


def _as_truth(dets: dict, size: tuple[int, int]) -> list[np.ndarray]:
    """Detections as ground truth rows (class, x1, y1, x2, y2) in model-input pixels."""
    h, w = size
    out = []
    for i in range(dets["num_detections"].shape[0]):
        n = int(dets["num_detections"][i, 0])
        boxes = dets["detection_boxes"][i, :n] * [w, h, w, h]
        out.append(np.concatenate([dets["detection_classes"][i, :n, None].astype(np.float64), boxes], 1))
    return out


# ---- the gate -----------------------------------------------------------------------------------
def evaluate(
    bundle: Bundle,
    x: np.ndarray,
    y: list | None = None,
    max_drop: float = 1.0,
    models: list[str] | None = None,
    tensorrt: bool = True,
    batch_size: int = 32,
    reference: tuple | None = None,
) -> DetectionReport:
    """Run ``models`` (default: all but fp32) on ``x`` against FP32; ``y`` holds per-image truth rows or None."""
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.backends.select import open_runner, tensorrt_available

    params = NmsParams.from_dict(bundle.manifest.get("nms") or {})
    size = tuple(bundle.preprocess.size)
    num_classes = len(bundle.labels)
    labelled = y is not None
    report = DetectionReport(str(bundle.path), len(x), labelled, max_drop)
    (ref_boxes, ref_scores), ms = reference if reference is not None else fp32_reference(bundle, x, batch_size)
    ref_eval = _nms(ref_boxes, ref_scores, params, params.eval_score_threshold)
    pseudo = _as_truth(_nms(ref_boxes, ref_scores, params, params.score_threshold), size)
    if not labelled and not any(len(rows) for rows in pseudo):
        raise InputError(
            f"FP32 detects nothing above the run score threshold {params.score_threshold:g} on the {len(x)} gate "
            "images, so there is nothing to compare the other models with: gate on labelled images "
            "(--gate-images DATASET) or on images that show the objects"
        )
    ref_map = coco_map(y, ref_eval, num_classes, size) if labelled else None
    ref_matches = matches(y, ref_eval, size) if labelled else None

    def score(name, precision, backend, dets, ms, scores=None) -> DetectionResult:
        r = DetectionResult(name, precision, backend, latency_ms=ms)
        r.agreement = coco_map(pseudo, dets, num_classes, size)[1]
        if labelled:
            r.map, r.accuracy = coco_map(y, dets, num_classes, size)
        if scores is not None:
            err = np.abs(scores - ref_scores)
            r.max_abs_error, r.mean_abs_error = float(err.max()), float(err.mean())
        if precision != "fp32" or backend != "onnxruntime":
            r.drop = (ref_map[1] - r.accuracy) if labelled else (100.0 - r.agreement)
            r.drop_interval = drop_interval(ref_matches, matches(y if labelled else pseudo, dets, size), num_classes)
            r.passed = precision == "fp32" or r.drop_interval[0] <= max_drop
        return r

    report.results.append(score("fp32", "fp32", "onnxruntime", ref_eval, ms, ref_scores))
    for key in models or [k for k in bundle.models if k != "fp32"]:
        with OnnxRuntimeRunner(bundle.model_path(key)) as runner:
            boxes, scores, ms = _raw(runner, x, batch_size)
        dets = _nms(boxes, scores, params, params.eval_score_threshold)
        report.results.append(score(key, MODEL_PRECISION[key], "onnxruntime", dets, ms, scores))
    if not tensorrt:
        return report
    if not tensorrt_available():
        report.results.append(DetectionResult("tensorrt", "-", "tensorrt",
                                              skipped="TensorRT is not available on this machine"))
        return report
    for precision in ("fp32", "fp16", "int8"):
        if precision != "fp32" and not bundle.has_model(precision):
            continue
        try:
            # judging a model is how a failed one becomes usable again: run it whatever its last verdict
            with open_runner(bundle, "tensorrt", precision, allow_failed_gate=True,
                             score_threshold=params.eval_score_threshold) as runner:
                parts = [runner.infer(x[i : i + 1]) for i in range(len(x))]
                dets = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                ms = median_latency_ms(runner, x)
        except EdgekitError as exc:
            report.results.append(DetectionResult(f"tensorrt:{precision}", precision, "tensorrt", skipped=str(exc)))
            continue
        report.results.append(score(f"tensorrt:{precision}", precision, "tensorrt", dets, ms))
    return report


# ---- labelled images ----------------------------------------------------------------------------
def labelled_tensors(bundle: Bundle, images_dir: str | os.PathLike) -> tuple[np.ndarray, list[np.ndarray]]:
    """A labelled detection set as (tensors by the bundle's Preprocess, per-image truth in model-input pixels).

    ``images_dir`` is a YOLO or COCO dataset (:func:`edgekit.data.detection.read_detection_set`;
    its ``val`` split), or a folder holding one COCO json (``*.json``) with its images beside it or
    under ``images/``, read by pycocotools. Classes match the bundle's labels by name, else by index.
    """
    root = Path(images_dir)
    yaml_file = root.is_file() and root.suffix in (".yaml", ".yml")  # Ultralytics style: DATA/data.yaml
    if not (root.is_dir() or yaml_file):
        raise InputError(f"labelled images {root} do not exist (a YOLO/COCO dataset or a folder with a COCO json)")
    samples = _coco(root, bundle.labels) if not yaml_file and _coco_file(root) else _dataset(root, bundle.labels)
    if not samples:
        raise InputError(f"no labelled images in {root}")
    prep = bundle.preprocess
    h, w = prep.size
    reader = ImageReader([p for p, _ in samples])
    truth_by_path = dict(samples)
    tensors, truth = [], []
    for path, image in reader:
        tensors.append(prep(image))
        rows = truth_by_path[path]
        boxes = prep.boxes_to_input(rows[:, 1:], image.shape[:2]) * (w, h, w, h)
        boxes = np.clip(boxes, 0, (w, h, w, h))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        truth.append(np.concatenate([rows[keep, :1], boxes[keep]], 1))
    if reader.skipped:
        log.warning("%d labelled images could not be read and were skipped", reader.skipped)
    if not tensors:
        raise InputError(f"no readable images in {root}")
    return np.stack(tensors), truth


def _coco_file(root: Path) -> Path | None:
    found = sorted(root.glob("*.json"))
    return found[0] if found else None


def _dataset(root: Path, labels: list[str]) -> list[tuple[Path, np.ndarray]]:
    """(image path, rows (class, x1, y1, x2, y2) in image pixels) of a YOLO/COCO dataset's val split."""
    from edgekit.data.detection import read_detection_set

    dataset = read_detection_set(root, splits=("val",))
    to_class = _class_map(dataset.classes, labels, root)
    samples = []
    for s in dataset.splits["val"]:
        classes = np.array([to_class[int(c)] for c in s.classes], np.float64).reshape(-1, 1)
        samples.append((s.path, np.concatenate([classes, np.asarray(s.boxes, np.float64).reshape(-1, 4)], 1)))
    return samples


def _class_map(names: list[str], labels: list[str], where: Path) -> dict:
    if all(n in labels for n in names):
        return {i: labels.index(n) for i, n in enumerate(names)}
    if len(names) <= len(labels):
        return {i: i for i in range(len(names))}
    raise InputError(f"{where}: classes {some(names)} are neither the bundle's labels nor {len(labels)} or fewer")


def _coco(root: Path, labels: list[str]) -> list[tuple[Path, np.ndarray]]:
    """(image path, rows (class, x1, y1, x2, y2) in image pixels) from one COCO json, loaded by pycocotools."""
    from pycocotools.coco import COCO

    from edgekit.data.detection import coco_json

    path = _coco_file(root)
    doc = coco_json(path)  # ids, file names and duplicates checked: one line, not a pycocotools traceback
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = doc
            coco.createIndex()
    except (OSError, ValueError, KeyError, TypeError, AssertionError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not a COCO annotation file: {exc}") from exc
    cats = {c["id"]: c.get("name", str(c["id"])) for c in coco.loadCats(coco.getCatIds())}
    if all(name in labels for name in cats.values()):
        to_class = {cid: labels.index(name) for cid, name in cats.items()}
    elif all(isinstance(cid, int) and 0 <= cid < len(labels) for cid in cats):
        to_class = {cid: cid for cid in cats}
    else:
        raise InputError(f"{path}: categories {some(sorted(map(str, cats.values())))} are neither the bundle's labels "
                         f"nor ids 0..{len(labels) - 1}")
    samples, unknown = [], 0
    for info in coco.loadImgs(coco.getImgIds()):
        name = info["file_name"]
        file = next((p for p in (root / name, root / "images" / name) if p.is_file()), None)
        if file is None:
            log.warning("%s: image %s not found; skipped", path.name, name)
            continue
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=info["id"])) if not a.get("iscrowd")]
        unknown += sum(a.get("category_id") not in to_class for a in anns)
        rows = [(to_class[a["category_id"]], a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                 a["bbox"][1] + a["bbox"][3]) for a in anns if a.get("category_id") in to_class]
        samples.append((file, np.asarray(rows, np.float64).reshape(-1, 5)))
    if unknown:
        log.warning("%s: %d annotation(s) of unknown categories skipped", path.name, unknown)
    return samples


def chart(report: DetectionReport, path: Path) -> None:
    """mAP@0.5 (or agreement) and latency per model, as classification's chart shows top-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.results if not r.skipped]
    names = [f"{r.name}\n{r.backend}" for r in rows]
    values = [(r.accuracy if report.labelled else r.agreement) or 0.0 for r in rows]
    colours = ["#888888" if r.passed is None else ("#2a9d4b" if r.passed else "#d1453b") for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(rows) * 2), 3.6))
    ax1.bar(names, values, color=colours)
    ax1.set_ylim(0, 100.5)
    ax1.set_ylabel(f"{gate_basis(METRIC, report.labelled)} (%)")
    ax1.set_title(f"{gate_basis(METRIC, report.labelled)} on {report.images} images (max drop {report.max_drop:g})", fontsize=9)
    for i, v in enumerate(values):
        ax1.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax2.bar(names, [r.latency_ms or 0 for r in rows], color=colours)
    ax2.set_ylabel("latency, batch 1 (ms, median)")
    ax2.set_title("latency")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def head_nodes(model) -> set[str]:
    """Nodes of the box-decode and score heads: from the ``boxes``/``scores`` outputs back to the last weighted layers.

    They stay float in the Q/DQ model (TensorRT runs them in FP16/FP32): quantized box coordinates and
    scores move detections across the IoU and score thresholds.
    """
    from edgekit.quant.qdq import WEIGHTED_OPS

    producers = {out: node for node in model.graph.node for out in node.output}
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output if o.name in ("boxes", "scores")]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type not in WEIGHTED_OPS:
            stack.extend(node.input)
    return seen
