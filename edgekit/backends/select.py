"""Choosing a backend and the bundle model it runs: ``open_runner(bundle, backend, precision)``."""

from __future__ import annotations

import logging

from edgekit.backends.base import Runner
from edgekit.bundle import PRECISIONS, Bundle
from edgekit.errors import BundleError, UsageError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")


ORT_OPTIONS = ("providers", "intra_op_threads", "inter_op_threads")
TRT_OPTIONS = ("batch", "workspace_mib", "dla_core", "calibrate", "cache_dir", "force", "device")
DETECTION_OPTIONS = ("score_threshold",)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def onnxruntime_model_key(bundle: Bundle, precision: str, cpu: bool = True) -> str:
    """The bundle model ONNX Runtime runs for ``precision`` (on the CPU, the CPU-fast INT8 variant when present)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and cpu and bundle.has_model("int8_cpu"):
        return "int8_cpu"
    if not bundle.has_model(precision):
        hint = " (run `edgekit quantize` first)" if precision == "int8" else ""
        raise BundleError(f"bundle {bundle.path} has no {precision} model{hint}")
    return precision


def open_runner(bundle: Bundle, backend: str = "auto", precision: str = "fp32", **options) -> Runner:
    """A not-yet-activated runner for ``bundle`` on ``backend`` at ``precision``.

    ``auto`` picks TensorRT when it imports and a GPU is present, else ONNX Runtime with its TensorRT
    or CUDA execution providers when it offers them, else its CPU provider, and logs which.
    ONNX Runtime options: ``providers``, ``intra_op_threads``, ``inter_op_threads``. TensorRT
    options: ``batch``, ``workspace_mib``, ``dla_core``, ``calibrate``, ``cache_dir``, ``force``,
    ``device``. Options of the backend not chosen are ignored, so ``auto`` can be given both.
    A detection bundle's runner returns the NMS plugin's four outputs (:mod:`edgekit.backends.detection`);
    ``score_threshold`` replaces the manifest's run threshold (e.g. its ``eval_score_threshold`` for mAP).
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    unknown = set(options) - set(ORT_OPTIONS) - set(TRT_OPTIONS) - set(DETECTION_OPTIONS)
    if unknown:
        raise UsageError(f"unknown runner option(s): {', '.join(sorted(unknown))}")
    chosen = {k: v for k, v in options.items() if v is not None}
    if backend == "auto":
        backend = "tensorrt" if tensorrt_available() else "onnxruntime"
    if backend == "tensorrt":
        if not tensorrt_available():
            from edgekit.backends.tensorrt.builder import require_tensorrt

            require_tensorrt()
        from edgekit.backends.tensorrt.runner import TensorRTRunner

        log.info("backend: tensorrt (%s)", precision)
        trt_options = {k: v for k, v in chosen.items() if k in TRT_OPTIONS}
        return _detection(bundle, TensorRTRunner.from_bundle(bundle, precision=precision, **trt_options), chosen, True)
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner, available_providers

    ort_options = {k: v for k, v in chosen.items() if k in ORT_OPTIONS}
    providers = ort_options.pop("providers", None) or onnxruntime_providers(available_providers())
    key = onnxruntime_model_key(bundle, precision, cpu=providers[0] == "CPUExecutionProvider")
    log.info("backend: onnxruntime (%s; %s model)", ", ".join(providers), key)
    return _detection(bundle, OnnxRuntimeRunner(bundle.model_path(key), providers=providers, **ort_options), chosen)


def _detection(bundle: Bundle, runner: Runner, options: dict, nms_in_graph: bool = False) -> Runner:
    """``runner`` itself for a classifier; for a detector, wrapped to return the NMS plugin's outputs."""
    if bundle.task != "detection":
        return runner
    from edgekit.backends.detection import DetectionRunner
    from edgekit.nms import NmsParams

    params = NmsParams.from_dict(bundle.manifest.get("nms") or {})
    return DetectionRunner(runner, params, options.get("score_threshold"), nms_in_graph)


def onnxruntime_providers(available: list[str]) -> list[str]:
    """ONNX Runtime's GPU providers that ``available`` offers (TensorRT first), then the CPU."""
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def tensorrt_available() -> bool:
    """True when the tensorrt module imports and a CUDA GPU answers."""
    from edgekit.backends.tensorrt import probe

    return probe.tensorrt_version() is not None and probe.gpu_present()
