"""The accuracy gate: every model of a bundle (and TensorRT engines, where TensorRT runs) on the same images.

Per precision it reports top-1 accuracy (labelled images), top-1 agreement with the FP32 model on
ONNX Runtime, max/mean absolute output error against it, and median batch-1 latency. A reduced
precision fails when its top-1 drops more than ``max_drop`` points below FP32; without labels the
disagreement rate stands in for the drop (an upper bound of it).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit.atomic import lock
from edgekit.bundle import Bundle
from edgekit.errors import EdgekitError, GateError, InputError, UsageError

log = logging.getLogger(__name__)

REPORT_JSON = "validation.json"
REPORT_PNG = "validation.png"
MODEL_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int8_cpu": "int8"}
LATENCY_SAMPLES = 50


@dataclass
class Result:
    """One model on one backend: ``name`` is the bundle model key, prefixed ``tensorrt:`` for engines."""

    name: str
    precision: str
    backend: str
    accuracy: float | None = None  # percent, labelled images only
    agreement: float | None = None  # percent top-1 agreement with FP32
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    latency_ms: float | None = None  # median, batch 1
    drop: float | None = None  # points of top-1 below FP32
    passed: bool | None = None  # None for the FP32 reference and skipped rows
    skipped: str | None = None


@dataclass
class Report:
    """The gate's verdict on ``images`` tensors: one Result per model and backend, FP32 first."""

    bundle: str
    images: int
    labelled: bool
    max_drop: float
    results: list[Result] = field(default_factory=list)

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.passed is False]

    def result(self, name: str) -> Result | None:
        return next((r for r in self.results if r.name == name), None)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": not self.failures}

    def summary(self) -> str:
        """A small table for the terminal."""
        lines = [f"{'model':<16}{'backend':<13}{'top-1 %':>8}{'agree %':>9}{'max err':>10}{'ms':>8}  gate"]
        for r in self.results:
            if r.skipped:
                lines.append(f"{r.name:<16}{r.backend:<13}  skipped: {r.skipped}")
                continue
            gate = "ref" if r.passed is None else ("pass" if r.passed else f"FAIL (-{r.drop:.2f} pts)")
            lines.append(
                f"{r.name:<16}{r.backend:<13}{_fmt(r.accuracy, 8, 2)}{_fmt(r.agreement, 9, 2)}"
                f"{_fmt(r.max_abs_error, 10, 4)}{_fmt(r.latency_ms, 8, 3)}  {gate}"
            )
        return "\n".join(lines)

    def check(self) -> None:
        """Raise GateError naming the models whose top-1 dropped more than ``max_drop`` points."""
        if self.failures:
            what = ", ".join(f"{r.name} on {r.backend} by {r.drop:.2f} points" for r in self.failures)
            basis = "top-1 accuracy" if self.labelled else "top-1 agreement with FP32"
            raise GateError(
                f"accuracy gate failed on {self.images} images: {basis} dropped {what} (max {self.max_drop:g})"
            )


def _fmt(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def _run(runner, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """First output of ``runner`` on all of ``x``, and the median batch-1 latency in ms."""
    fixed = runner.input_spec.shape[0]
    step = fixed if isinstance(fixed, int) else batch_size
    outputs = [next(iter(runner.infer(x[i : i + step]).values())) for i in range(0, len(x), step)]
    out = np.concatenate(outputs).astype(np.float32).reshape(len(x), -1)
    times = []
    sample = x[: min(len(x), LATENCY_SAMPLES + 3)]
    for i in range(len(sample)):
        t = time.perf_counter()
        runner.infer(sample[i : i + 1])
        times.append(time.perf_counter() - t)
    return out, float(np.median(times[3:] or times) * 1000)


def fp32_reference(bundle: Bundle, x: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, float]:
    """The FP32 model's outputs on ``x`` and its median batch-1 latency (ms): what every model is scored against."""
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
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.backends.select import open_runner, tensorrt_available

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
    if not tensorrt_available():
        report.results.append(Result("tensorrt", "-", "tensorrt", skipped="TensorRT is not available on this machine"))
        return report
    for precision in ("fp32", "fp16", "int8"):
        if precision != "fp32" and not bundle.has_model(precision):
            continue
        try:
            with open_runner(bundle, "tensorrt", precision) as runner:
                out, ms = _run(runner, x, batch_size)
        except EdgekitError as exc:
            report.results.append(Result(f"tensorrt:{precision}", precision, "tensorrt", skipped=str(exc)))
            continue
        report.results.append(score(f"tensorrt:{precision}", precision, "tensorrt", out, ms))
    return report


def labelled_tensors(bundle: Bundle, images_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A class-per-subfolder image set as (tensors made by the bundle's Preprocess, label indices)."""
    from edgekit.images import labelled_folder
    from edgekit.quant.calibration import CalibrationSet, Item

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


def _chart(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report.results if not r.skipped]
    names = [f"{r.name}\n{r.backend}" for r in rows]
    metric = "accuracy" if report.labelled else "agreement"
    colours = ["#888888" if r.passed is None else ("#2a9d4b" if r.passed else "#d1453b") for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(rows) * 2), 3.6))
    values = [getattr(r, metric) for r in rows]
    ax1.bar(names, values, color=colours)
    low = min(values) if values else 0
    ax1.set_ylim(max(0, low - 5), 100.5)
    ax1.set_ylabel(f"top-1 {metric} (%)")
    ax1.set_title(f"{metric} on {report.images} images (max drop {report.max_drop:g})")
    for i, v in enumerate(values):
        ax1.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax2.bar(names, [r.latency_ms for r in rows], color=colours)
    ax2.set_ylabel("latency, batch 1 (ms, median)")
    ax2.set_title("latency")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


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

    ``out`` defaults to the bundle folder. With ``check``, raises GateError (after writing the
    report) when an FP16 or INT8 model's top-1 accuracy is more than ``max_drop`` points below FP32.
    """
    if max_drop < 0:
        raise UsageError("--max-drop must not be negative")
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    x, y = labelled_tensors(bundle, images_dir)
    report = evaluate(bundle, x, y, max_drop=max_drop, tensorrt=tensorrt, batch_size=batch_size)
    with lock(bundle.path, what=f"bundle {bundle.path}"):  # the bundle's other writers wait
        write_report(report, out if out is not None else bundle.path)
    if check:
        report.check()
    return report
