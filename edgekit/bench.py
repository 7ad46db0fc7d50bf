"""Throughput and latency of a bundle on any backend, in the manner of trtexec.

One inference is one ``runner.infer(batch)`` call (host-to-device copy, execution and copy back for
TensorRT). Throughput counts inferences over the measured wall time; images/s multiplies by the batch.

A detector is timed on what a camera sees, not noise (on noise a detector fills its detection cap and
NMS dominates): the frames of ``images`` or else natural-image-like synthetic frames
(:func:`scene_frames`), cycled. Where NMS runs outside the model (ONNX Runtime) its time is
reported apart from the model's; the detections per image are counted and a cap hit on every image
is reported.
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
    model_ms: list | None = None  # detectors with NMS outside the model: the model's part of each inference
    nms_ms: list | None = None
    detections: list | None = None  # detectors: detections per image
    max_detections: int | None = None
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

    @property
    def capped(self) -> int:
        """Images whose detections filled the cap (0 for a classifier)."""
        return sum(n >= self.max_detections for n in self.detections or [])

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("latencies_ms", "model_ms", "nms_ms", "detections"):
            d.pop(key)
        d.update(
            inferences_per_s=self.inferences_per_s,
            images_per_s=self.images_per_s,
            latency_ms=self.latency(),
        )
        if self.model_ms:
            d["model_ms_p50"], d["nms_ms_p50"] = float(np.median(self.model_ms)), float(np.median(self.nms_ms))
        if self.detections is not None:
            d["detections_per_image_median"] = float(np.median(self.detections))
            d["capped_images"] = self.capped
        return d

    def summary(self) -> str:
        lat = self.latency()
        return "\n".join(
            [
                f"backend: {self.backend}  precision: {self.precision}  batch: {self.batch}",
                f"iterations: {self.iterations} in {self.wall_s:.3f} s (after {self.warmup} warm-up)",
                f"throughput: {self.inferences_per_s:.1f} inferences/s, {self.images_per_s:.1f} images/s",
                "latency (ms): " + "  ".join(f"{k} {lat[k]:.3f}" for k in ("min", "p50", "p90", "p99", "max", "mean")),
            ] + ([f"chosen: {self.chosen}"] if self.chosen else []) + self._detection_lines()
        )

    def _detection_lines(self) -> list[str]:
        if self.detections is None:
            return []
        lines = []
        if self.model_ms:
            lines.append(f"of which (p50, ms): model {np.median(self.model_ms):.3f}  NMS {np.median(self.nms_ms):.3f}")
        else:
            lines.append("NMS runs inside the model (TensorRT plugin): not timed apart")
        n = len(self.detections)
        lines.append(f"detections per image: median {np.median(self.detections):g}, max {max(self.detections)}; "
                     f"the {self.max_detections}-detection cap was hit on {self.capped} of {n} images")
        if n and self.capped == n:
            lines.append("warning: every image filled the detection cap: the score threshold is too low for "
                         "these frames (NMS time grows with it); see `edgekit run --score-threshold`")
        return lines


def scene_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``count`` uint8 BGR scenes for timing a detector: a natural image's statistics rather than noise's (smooth
    colour fields at several scales, power falling with frequency) and a few flat-shaded blobs and edges
    to detect (:func:`edgekit.tiny.natural_frames` are the self-test's smooth classifier frames)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(count):
        img = np.zeros((h, w, 3), np.float32)
        for side, gain in ((2, 60.0), (4, 40.0), (8, 25.0), (16, 12.0), (32, 6.0)):
            field = rng.normal(0, gain, (side, side * w // h or 1, 3)).astype(np.float32)
            img += cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
        img += rng.uniform(60, 190, 3)
        for _ in range(rng.integers(2, 6)):
            centre = (int(rng.integers(w)), int(rng.integers(h)))
            axes = (int(rng.integers(4, w // 4 + 5)), int(rng.integers(4, h // 4 + 5)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
        out.append(np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8))
    return out


def frame_batches(bundle: Bundle, batch: int, images: str | None = None, count: int = 16) -> list[np.ndarray]:
    """Input batches for a detector: up to ``count`` frames of the folder ``images`` (else natural-image-like
    frames at the model's size), preprocessed as the bundle says, grouped ``batch`` at a time (cycled)."""
    from edgekit.images import ImageReader, list_images

    if images is not None:
        paths = list_images(images)[:count]
        frames = [image for _, image in ImageReader(paths)]
        if not frames:
            raise UsageError(f"--images {images} holds no readable images")
    else:
        frames = scene_frames(count, tuple(bundle.preprocess.size))
    dtype = np.dtype(bundle.input.get("dtype", "float32"))
    frames = [frames[i % len(frames)] for i in range(max(len(frames), batch))]
    return [bundle.preprocess.batch(frames[i : i + batch]).astype(dtype)
            for i in range(0, len(frames) - batch + 1, batch)]


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
    inputs,
    warmup: int = 10,
    iterations: int | None = None,
    duration: float | None = None,
    precision: str = "",
) -> BenchResult:
    """Time ``runner.infer`` (runner active) on ``inputs`` (one batch, or a list of batches cycled):
    ``iterations`` calls, or as many as fit in ``duration`` s. A detection runner's model and NMS are
    timed apart when NMS runs outside the model, and its detections counted."""
    from edgekit.backends.detection import DetectionRunner

    iterations = check_counts(warmup, iterations, duration)
    batches = inputs if isinstance(inputs, list) else [inputs]
    detector = isinstance(runner, DetectionRunner)
    split = detector and runner.nms_in_graph is False
    for i in range(warmup):
        runner.infer(batches[i % len(batches)])
    latencies, model_ms, nms_ms, counts = [], [], [], []
    clock = time.perf_counter
    start = clock()
    deadline = start + duration if duration is not None else None
    while (len(latencies) < iterations) if deadline is None else (not latencies or clock() < deadline):
        x = batches[len(latencies) % len(batches)]
        t0 = clock()
        if split:
            raw = runner.inner.infer(x)
            t1 = clock()
            dets = runner.nms(raw)
            model_ms.append((t1 - t0) * 1e3)
            nms_ms.append((clock() - t1) * 1e3)
        else:
            dets = runner.infer(x)
        latencies.append((clock() - t0) * 1e3)
        if detector:
            counts.extend(int(n) for n in np.asarray(dets["num_detections"]).reshape(-1))
    wall = clock() - start
    return BenchResult(runner.name, precision, int(batches[0].shape[0]), warmup, len(latencies), wall, latencies,
                       model_ms or None, nms_ms or None, counts if detector else None,
                       runner.params.max_detections if detector else None)


def bench_bundle(
    bundle: Bundle,
    backend: str = "auto",
    precision: str = "auto",
    batch: int = 1,
    warmup: int = 10,
    iterations: int | None = None,
    duration: float | None = None,
    images: str | None = None,
    **options,
) -> BenchResult:
    """Open the runner ``open_runner`` picks (``auto``: the fastest model that passed its gate; failed gates
    refused unless ``allow_failed_gate`` is among ``options``) and benchmark it on a preprocessed random
    batch (a detector: the frames of ``images``, else natural-image-like ones; see :func:`frame_batches`)."""
    from edgekit.backends.select import open_runner

    if batch < 1:
        raise UsageError("--batch must be at least 1")
    check_counts(warmup, iterations, duration)  # before a TensorRT engine build that may take minutes
    options.setdefault("batch", batch)  # the TensorRT profile (1..batch, or static with DLA); ONNX Runtime ignores it
    if bundle.task == "detection":
        inputs = frame_batches(bundle, batch, images)
    elif images is not None:
        raise UsageError("--images is for detection bundles (a classifier is timed on random frames)")
    else:
        inputs = sample_batch(bundle, batch)
    with open_runner(bundle, backend, precision, **options) as runner:
        choice = runner.choice
        # the model that ran: int8_cpu is named as such; fp16 built from the fp32 model (TensorRT < 11) as fp16
        chosen = precision if choice is None else (choice.precision if choice.key == "fp32" else choice.key)
        result = bench(runner, inputs, warmup, iterations, duration, chosen)
        result.chosen = choice.reason if choice is not None else None
        return result
