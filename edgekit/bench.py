"""Throughput and latency of a bundle on any backend, in the manner of trtexec.

One inference is one ``runner.infer(batch)`` call (host-to-device copy, execution and copy back for
TensorRT). Throughput counts inferences over the measured wall time; images/s multiplies by the batch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from edgekit.backends.base import Runner
from edgekit.backends.measure import sample_batch
from edgekit.bundle import Bundle
from edgekit.errors import UsageError

PERCENTILES = (50, 90, 99)


@dataclass
class BenchResult:
    """Figures of one benchmark run; latencies in milliseconds."""

    backend: str
    precision: str
    batch: int
    warmup: int
    iterations: int
    wall_s: float
    latencies_ms: list
    chosen: str | None = None  # why this model ran (``auto``: the measured figures), from the runner's Choice

    @property
    def inferences_per_s(self) -> float:
        return self.iterations / self.wall_s

    @property
    def images_per_s(self) -> float:
        return self.inferences_per_s * self.batch

    def latency(self) -> dict:
        lat = np.asarray(self.latencies_ms)
        stats = {"min": float(lat.min())}
        stats.update({f"p{p}": float(np.percentile(lat, p)) for p in PERCENTILES})
        stats.update({"max": float(lat.max()), "mean": float(lat.mean())})
        return stats

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("latencies_ms")
        d.update(
            inferences_per_s=self.inferences_per_s,
            images_per_s=self.images_per_s,
            latency_ms=self.latency(),
        )
        return d

    def summary(self) -> str:
        lat = self.latency()
        return "\n".join(
            [
                f"backend: {self.backend}  precision: {self.precision}  batch: {self.batch}",
                f"iterations: {self.iterations} in {self.wall_s:.3f} s (after {self.warmup} warm-up)",
                f"throughput: {self.inferences_per_s:.1f} inferences/s, {self.images_per_s:.1f} images/s",
                "latency (ms): " + "  ".join(f"{k} {lat[k]:.3f}" for k in ("min", "p50", "p90", "p99", "max", "mean")),
            ] + ([f"chosen: {self.chosen}"] if self.chosen else [])
        )


def check_counts(warmup: int, iterations: int | None, duration: float | None) -> int | None:
    """Raise UsageError for a bad count; return ``iterations`` (100 when neither it nor ``duration`` is given)."""
    if iterations is not None and duration is not None:
        raise UsageError("pass --iterations or --duration, not both")
    if iterations is None and duration is None:
        iterations = 100
    if (iterations is not None and iterations < 1) or (duration is not None and duration <= 0) or warmup < 0:
        raise UsageError("--iterations and --duration must be positive, --warmup not negative")
    return iterations


def bench(
    runner: Runner,
    inputs: np.ndarray,
    warmup: int = 10,
    iterations: int | None = None,
    duration: float | None = None,
    precision: str = "",
) -> BenchResult:
    """Time ``runner.infer(inputs)`` (runner active): ``iterations`` calls, or as many as fit in ``duration`` s."""
    iterations = check_counts(warmup, iterations, duration)
    for _ in range(warmup):
        runner.infer(inputs)
    latencies = []
    clock = time.perf_counter
    start = clock()
    deadline = start + duration if duration is not None else None
    while (len(latencies) < iterations) if deadline is None else (not latencies or clock() < deadline):
        t0 = clock()
        runner.infer(inputs)
        latencies.append((clock() - t0) * 1e3)
    wall = clock() - start
    return BenchResult(runner.name, precision, int(inputs.shape[0]), warmup, len(latencies), wall, latencies)


def bench_bundle(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "auto",
    batch: int = 1,
    warmup: int = 10,
    iterations: int | None = None,
    duration: float | None = None,
    **options,
) -> BenchResult:
    """Open the runner ``open_runner`` picks (``auto``: the fastest model that passed its gate; failed gates
    refused unless ``allow_failed_gate`` is among ``options``) and benchmark it on a preprocessed random batch."""
    from edgekit.backends.select import open_runner

    if batch < 1:
        raise UsageError("--batch must be at least 1")
    check_counts(warmup, iterations, duration)  # before a TensorRT engine build that may take minutes
    options.setdefault("batch", batch)  # the TensorRT profile (1..batch, or static with DLA); ONNX Runtime ignores it
    inputs = sample_batch(bundle, batch)
    with open_runner(bundle, backend, precision, **options) as runner:
        choice = runner.choice
        # the model that ran: int8_cpu is named as such; fp16 built from the fp32 model (TensorRT < 11) as fp16
        chosen = precision if choice is None else (choice.precision if choice.key == "fp32" else choice.key)
        result = bench(runner, inputs, warmup, iterations, duration, chosen)
        result.chosen = choice.reason if choice is not None else None
        return result
