"""The accuracy gate: every model of a bundle (and TensorRT engines, where TensorRT runs) on the same images.

Per precision it reports top-1 accuracy (labelled images), top-1 agreement with the FP32 model on
ONNX Runtime, max/mean absolute output error against it, and median batch-1 latency. A reduced
precision fails when its top-1 drops more than ``max_drop`` points below FP32; without labels the
disagreement rate stands in for the drop (an upper bound of it).

``validate`` records its verdict in each judged model's manifest entry (``validation``) and sets
``usable`` from it, so a failing model is refused by every later command and a passing one is
usable again (see ``select.choose_model``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edgekit.atomic import lock
from edgekit.bundle import Bundle
from edgekit.errors import EdgekitError, InputError, UsageError
from edgekit.quant.report import MODEL_PRECISION, Report, Result, batched_outputs, median_latency_ms

log = logging.getLogger(__name__)

REPORT_JSON = "validation.json"
REPORT_PNG = "validation.png"


def _run(runner, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """First output of ``runner`` on all of ``x``, and the median batch-1 latency in ms."""
    outputs = [next(iter(o.values())) for o in batched_outputs(runner, x, batch_size)]
    return np.concatenate(outputs).astype(np.float32).reshape(len(x), -1), median_latency_ms(runner, x)


def fp32_reference(bundle: Bundle, x: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, float]:
    """The FP32 model's outputs on ``x`` and its median batch-1 latency (ms): what every model is scored against."""
    if bundle.task == "detection":
        from edgekit.quant import detection_gate

        return detection_gate.fp32_reference(bundle, x, batch_size)
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(bundle.model_path("fp32")) as runner:
        return _run(runner, x, batch_size)


def evaluate(
    bundle: Bundle,
    x: np.ndarray,
    y: np.ndarray | None = None,
    max_drop: float = 1.0,
    models: list[str] | None = None,
    tensorrt: bool = True,
    batch_size: int = 32,
    reference: tuple[np.ndarray, float] | None = None,
) -> Report:
    """Run ``models`` (default: all in the bundle) on the tensors ``x`` against the FP32 reference.

    ``reference`` is :func:`fp32_reference` of the same bundle and ``x``, when the caller already has it.
    """
    if bundle.task == "detection":  # mAP instead of top-1
        from edgekit.quant import detection_gate

        return detection_gate.evaluate(bundle, x, y, max_drop, models, tensorrt, batch_size, reference)
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.backends import select

    labelled = y is not None and bool(np.all(y >= 0))
    report = Report(str(bundle.path), len(x), labelled, max_drop)
    ref, ms = reference if reference is not None else fp32_reference(bundle, x, batch_size)
    ref_top = ref.argmax(1)
    ref_acc = float(np.mean(ref_top == y) * 100) if labelled else None

    def score(name, precision, backend, out, ms) -> Result:
        top = out.argmax(1)
        r = Result(name, precision, backend, latency_ms=ms, agreement=float(np.mean(top == ref_top) * 100))
        r.accuracy = float(np.mean(top == y) * 100) if labelled else None
        err = np.abs(out - ref)
        r.max_abs_error, r.mean_abs_error = float(err.max()), float(err.mean())
        if precision != "fp32" or backend != "onnxruntime":
            r.drop = (ref_acc - r.accuracy) if labelled else (100.0 - r.agreement)
            r.passed = precision == "fp32" or r.drop <= max_drop
        return r

    report.results.append(score("fp32", "fp32", "onnxruntime", ref, ms))
    for key in models or [k for k in bundle.models if k != "fp32"]:
        with OnnxRuntimeRunner(bundle.model_path(key)) as runner:
            out, ms = _run(runner, x, batch_size)
        report.results.append(score(key, MODEL_PRECISION[key], "onnxruntime", out, ms))
    if not tensorrt:
        return report
    if not select.tensorrt_available():
        report.results.append(Result("tensorrt", "-", "tensorrt", skipped="TensorRT is not available on this machine"))
        return report
    from edgekit.backends.tensorrt.runner import TensorRTRunner

    for precision in ("fp32", "fp16", "int8"):
        if precision != "fp32" and not bundle.has_model(precision):
            continue
        # Judging a model is how a failed one becomes usable again, so failed gates are allowed here; the
        # profile covers the batches fed (batch_size, the last partial one, and 1 for latency).
        try:
            with TensorRTRunner.from_bundle(bundle, precision, batch=batch_size) as runner:  # judged, never refused
                out, ms = _run(runner, x, batch_size)
        except EdgekitError as exc:
            report.results.append(Result(f"tensorrt:{precision}", precision, "tensorrt", skipped=str(exc)))
            continue
        report.results.append(score(f"tensorrt:{precision}", precision, "tensorrt", out, ms))
    return report


def validation_records(report: Report, bundle: Bundle, at: str | None = None) -> dict[str, dict]:
    """``validation`` entries for each judged model of ``bundle`` (labelled reports only; fp32 has no gate).

    A model's verdict covers its ONNX Runtime row and the TensorRT engine built for its precision
    (``tensorrt:int8`` judges ``int8``, ``tensorrt:fp16`` judges ``fp16``); the worst row decides.
    """
    import datetime

    if not report.labelled:
        return {}
    at = at or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    reference = report.result("fp32")
    records = {}
    for key in bundle.models:
        if key == "fp32":
            continue
        rows = [r for r in report.results if not r.skipped and r.passed is not None
                and r.name in (key, f"tensorrt:{key}")]
        if not rows:
            continue
        worst = max(rows, key=lambda r: (not r.passed, r.drop))
        records[key] = {
            "passed": all(r.passed for r in rows), "metric": getattr(report, "metric", None) or "top1",
            "value": worst.accuracy,
            "reference": reference.accuracy if reference else None, "drop": worst.drop,
            "max_drop": report.max_drop, "images": report.images, "at": at,
        }
    return records


def record_verdicts(report: Report, bundle: Bundle) -> dict[str, dict]:
    """Write :func:`validation_records` into ``bundle``'s manifest (atomically); return them."""
    records = validation_records(report, bundle)
    for key, record in records.items():
        bundle.record_validation(key, record)
        state = "usable" if record["passed"] else "unusable"
        log.info("%s: %s (%s %.2f, drop %.2f points, max %g)", key, state,
                 "mAP@0.5" if record["metric"] == "map50" else "top-1", record["value"], record["drop"],
                 record["max_drop"])
    if records:
        bundle.save()
    return records


def labelled_tensors(bundle: Bundle, images_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A class-per-subfolder image set as (tensors made by the bundle's Preprocess, label indices)."""
    if bundle.task == "detection":
        from edgekit.quant import detection_gate

        return detection_gate.labelled_tensors(bundle, images_dir)
    from edgekit.images import labelled_folder
    from edgekit.quant.calibration import CalibrationSet, Item

    root = Path(images_dir)
    if any((root / name).exists() for name in ("data.yaml", "data.yml", "annotations")) or root.suffix in (".yaml", ".yml"):
        raise InputError(f"{images_dir} is a detection dataset (YOLO/COCO), and {bundle.path} is a classifier: "
                         "validate it on one subfolder of images per label")
    folder = labelled_folder(images_dir)
    labels = bundle.labels
    unknown = [c for c in folder.classes if c not in labels]
    if unknown:
        shown = ", ".join(labels[:12]) + (", ..." if len(labels) > 12 else "")
        raise InputError(
            f"class folder(s) {', '.join(unknown[:5])} in {images_dir} are not labels of the bundle ({shown})"
        )
    missing = [lab for lab in labels if lab not in folder.classes]
    if missing:
        log.warning("%s has no images for %d label(s): %s", images_dir, len(missing), ", ".join(missing[:10]))
    items = [Item(path, label=labels.index(folder.classes[c])) for path, c in folder.samples]
    return CalibrationSet(Path(images_dir), items, bundle.preprocess, progress=False, role="validation").tensors()


def write_report(report: Report, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write validation.json and validation.png (accuracy and latency per precision) atomically."""
    from edgekit.atomic import atomic_path, write_json

    out_dir = Path(out_dir)
    json_path = write_json(out_dir / REPORT_JSON, report.to_dict())
    png_path = out_dir / REPORT_PNG
    with atomic_path(png_path) as tmp:
        _chart(report, tmp)
    return json_path, png_path


def _chart(report: Report, path: Path) -> dict:
    """Top-1 accuracy (labelled images) and agreement with FP32 per model, on an axis from 0, with the
    gate's floor and a legend; latency beside it. Returns the y range and legend entries drawn."""
    if getattr(report, "metric", None) == "map50":
        from edgekit.quant import detection_gate

        return detection_gate.chart(report, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in report.results if not r.skipped]
    names = [f"{r.name}\n{r.backend}" + (f"\n-{r.drop:.2f} pt" if r.drop is not None else "") for r in rows]
    colours = ["#888888" if r.passed is None else ("#2a9d4b" if r.passed else "#d1453b") for r in rows]
    series = ([("accuracy", "top-1 accuracy", "")] if report.labelled else []) + [
        ("agreement", "top-1 agreement with FP32", "//")]
    x = np.arange(len(rows))
    width = 0.8 / len(series)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(7, 1.8 * len(rows) * 2), 4.2))
    for k, (attr, _, hatch) in enumerate(series):
        values = [getattr(r, attr) for r in rows]
        at = x + (k - (len(series) - 1) / 2) * width
        ax1.bar(at, [v or 0.0 for v in values], width, color=colours, hatch=hatch, edgecolor="black", linewidth=0.5)
        for xi, v in zip(at, values):
            if v is not None:
                ax1.text(xi, v + 1, f"{v:.2f}", ha="center", va="bottom", fontsize=7, rotation=90)
    handles = [Patch(facecolor=c, label=label) for c, label in
               (("#888888", "FP32 reference"), ("#2a9d4b", "passed the gate"), ("#d1453b", "failed the gate"))]
    handles += [Patch(facecolor="white", edgecolor="black", hatch=hatch, label=label) for _, label, hatch in series]
    reference = next((r for r in rows if r.passed is None), None)
    basis = "accuracy" if report.labelled else "agreement"
    if reference is not None and getattr(reference, basis) is not None:
        floor = getattr(reference, basis) - report.max_drop
        ax1.axhline(floor, color="black", linestyle="--", linewidth=0.8)
        handles.append(Line2D([], [], color="black", linestyle="--", label=f"gate floor: FP32 {basis} - {report.max_drop:g} pt"))
    ax1.set_ylim(0, 118)  # from 0: a gap of a few tenths looks as small as it is (the labels give the figures)
    ax1.set_xticks(x, names, fontsize=8)
    ax1.set_ylabel("top-1 (%)")
    ax1.set_title(f"{report.images} {'labelled ' if report.labelled else ''}images, max drop {report.max_drop:g} pt",
                  fontsize=9)
    ax1.legend(handles=handles, fontsize=7, loc="lower left", framealpha=0.9)
    ax2.bar(x, [r.latency_ms or 0.0 for r in rows], color=colours)
    ax2.set_xticks(x, names, fontsize=8)
    ax2.set_ylabel("latency, batch 1 (ms, median)")
    ax2.set_title("latency", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return {"ylim": tuple(ax1.get_ylim()), "legend": [h.get_label() for h in handles]}


def validate(
    bundle: Bundle | str | os.PathLike,
    images_dir: str | os.PathLike,
    max_drop: float = 1.0,
    out: str | os.PathLike | None = None,
    tensorrt: bool = True,
    batch_size: int = 32,
    check: bool = True,
) -> Report:
    """Gate every model of ``bundle`` on a labelled image folder; write the report to ``out``.

    ``out`` defaults to the bundle folder. Each judged model's verdict goes into the bundle's manifest
    (``validation``, ``usable``). With ``check``, raises GateError (after writing the report) when an
    FP16 or INT8 model's top-1 accuracy is more than ``max_drop`` points below FP32.
    """
    if max_drop < 0:
        raise UsageError("--max-drop must not be negative")
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    x, y = labelled_tensors(bundle, images_dir)
    report = evaluate(bundle, x, y, max_drop=max_drop, tensorrt=tensorrt, batch_size=batch_size)
    with lock(bundle.path, what=f"bundle {bundle.path}"):  # the bundle's other writers wait
        write_report(report, out if out is not None else bundle.path)
        fresh = Bundle.load(bundle.path, verify=False)  # another writer may have replaced it while we judged
        changed = [k for k, e in bundle.models.items() if fresh.models.get(k, {}).get("sha256") != e.get("sha256")]
        if changed:  # an error: `validate && service install` must not go ahead
            raise EdgekitError(f"the {', '.join(changed)} model(s) of {bundle.path} changed while they were being "
                               "validated (a quantize ran?): no verdict recorded; run `edgekit validate` again")
        else:
            record_verdicts(report, fresh)
    if check:
        report.check()
    return report
