"""Choosing a backend and the bundle model it runs: ``open_runner(bundle, backend, precision)``."""

from __future__ import annotations

import logging

from edgekit.backends.base import Runner
from edgekit.bundle import PRECISIONS, Bundle
from edgekit.errors import BundleError, DeviceError, UsageError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")


def onnxruntime_model_key(bundle: Bundle, precision: str) -> str:
    """The bundle model ONNX Runtime runs for ``precision`` (the CPU-fast INT8 variant when present)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and bundle.has_model("int8_cpu"):
        return "int8_cpu"
    if not bundle.has_model(precision):
        hint = " (run `edgekit quantize` first)" if precision == "int8" else ""
        raise BundleError(f"bundle {bundle.path} has no {precision} model{hint}")
    return precision


def open_runner(bundle: Bundle, backend: str = "auto", precision: str = "fp32", **options) -> Runner:
    """A not-yet-activated runner for ``bundle`` on ``backend`` at ``precision``.

    ``auto`` picks TensorRT when it imports and a GPU is present, else ONNX Runtime, and logs which.
    ONNX Runtime options: ``providers``, ``intra_op_threads``, ``inter_op_threads``.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "tensorrt" if tensorrt_available() else "onnxruntime"
        log.info("backend: %s (auto)", backend)
    if backend == "tensorrt":
        if not tensorrt_available():
            raise DeviceError("TensorRT is not available here (no tensorrt module or no GPU); use --backend onnxruntime")
        from edgekit.backends.tensorrt.runner import TensorRTRunner

        return TensorRTRunner.from_bundle(bundle, precision=precision, **options)
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner

    key = onnxruntime_model_key(bundle, precision)
    return OnnxRuntimeRunner(bundle.model_path(key), **options)


def tensorrt_available() -> bool:
    """True when the tensorrt module imports and a CUDA GPU answers."""
    from edgekit.backends.tensorrt import probe

    return probe.tensorrt_version() is not None and probe.gpu_present()
