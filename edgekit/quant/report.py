"""What a gate reports, for every task: one Result per model and backend, the Report that holds them,
and the two measurements every task's gate shares (batched outputs, batch-1 latency)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from edgekit.bundle import gate_basis
from edgekit.errors import GateError

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
        """Raise GateError naming the models whose top-1 (detectors: mAP@0.5) dropped more than ``max_drop`` points."""
        if self.failures:
            what = ", ".join(f"{r.name} on {r.backend} by {r.drop:.2f} points" for r in self.failures)
            basis = gate_basis(getattr(self, "metric", None), self.labelled)
            raise GateError(
                f"accuracy gate failed on {self.images} images: {basis} dropped {what} (max {self.max_drop:g})"
            )


def _fmt(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def batched_outputs(runner, x: np.ndarray, batch_size: int) -> list[dict[str, np.ndarray]]:
    """``runner``'s outputs on all of ``x``, in batches of ``batch_size`` (or the model's fixed batch)."""
    fixed = runner.input_spec.shape[0]
    step = fixed if isinstance(fixed, int) else batch_size
    return [runner.infer(x[i : i + step]) for i in range(0, len(x), step)]


def median_latency_ms(runner, x: np.ndarray) -> float:
    """``runner``'s median batch-1 latency (ms) on the first images of ``x``, after 3 warm-up runs."""
    times = []
    for i in range(min(len(x), LATENCY_SAMPLES + 3)):
        t = time.perf_counter()
        runner.infer(x[i : i + 1])
        times.append(time.perf_counter() - t)
    return float(np.median(times[3:] or times) * 1000)
