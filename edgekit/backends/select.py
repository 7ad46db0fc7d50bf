"""Choosing a backend and the bundle model it runs: ``open_runner(bundle, backend, precision)``.

:func:`choose_model` is the one place that turns a precision (``auto`` included) into a bundle model,
honouring the accuracy verdicts recorded in the manifest (:meth:`Bundle.verdict`): ``run``,
``bench``, ``build``, ``validate`` (on TensorRT), ``service install`` and the Python API all go
through it, so a model that failed its gate is refused (or, with ``allow_failed_gate``, used with a
warning) the same way everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from edgekit.backends.base import Runner
from edgekit.backends.tensorrt import probe
from edgekit.bundle import PRECISIONS, Bundle
from edgekit.errors import BundleError, DeviceError, GateError, UsageError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")
CHOICES = ("auto",) + PRECISIONS


ORT_OPTIONS = ("providers", "intra_op_threads", "inter_op_threads")
TRT_OPTIONS = ("batch", "workspace_mib", "dla_core", "calibrate", "cache_dir", "force", "device")
DETECTION_OPTIONS = ("score_threshold",)
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class Choice:
    """The bundle model a backend runs: ``key`` in the manifest, the ``precision`` it runs at, and why."""

    backend: str
    key: str
    precision: str
    reason: str
    warning: str | None = None  # set when a model that failed its gate is used anyway

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _refuse(bundle: Bundle, key: str) -> GateError:
    return GateError(
        f"{bundle.verdict(key)}; refusing to run it (bundle {bundle.path}): pass --allow-failed-gate to run it "
        "anyway, or choose another --precision"
    )


def _gated(bundle: Bundle, key: str) -> str:
    if key == "fp32":
        return "fp32 is the reference"
    entry = bundle.models[key]
    v, g = entry.get("validation"), entry.get("gate")
    if isinstance(v, dict) and isinstance(v.get("drop"), (int, float)):
        return f"{key} passed `edgekit validate` (drop {v['drop']:.2f} of max {v.get('max_drop') or 0:g} points)"
    if isinstance(g, dict) and isinstance(g.get("drop"), (int, float)):
        return f"{key} passed its gate (drop {g['drop']:.2f} of max {g.get('max_drop') or 0:g} points)"
    return f"{key} was not gated"


def tensorrt_key(bundle: Bundle, precision: str) -> str | None:
    """The bundle model whose verdict governs a TensorRT engine at ``precision`` (None: no such model).

    INT8 engines are built from the Q/DQ model; FP16 ones are judged by the fp16 model (TensorRT < 11
    builds them from fp32 with the FP16 flag, but the fp16 model is the one the gate measured).
    """
    if precision == "fp32":
        return "fp32"
    return precision if bundle.has_model(precision) else None


def choose_model(
    bundle: Bundle,
    backend: str,
    precision: str = "auto",
    allow_failed_gate: bool = False,
    *,
    cpu: bool = True,
    dla: bool = False,
    compute_capability: str | None = None,
) -> Choice:
    """The model ``backend`` (``tensorrt`` or ``onnxruntime``) runs for ``precision``.

    ``auto``: on TensorRT the best usable of int8 -> fp16 -> fp32 the GPU (``compute_capability``)
    supports (DLA: int8/fp16 only), int8 and fp16 only from the bundle's gated models; on ONNX
    Runtime on the CPU (``cpu``) the usable ``int8_cpu`` variant if present, else fp32 (the
    TensorRT-placed Q/DQ model is slower than FP32 on a CPU; GPU providers run fp32). An explicit precision whose model failed its gate raises GateError unless
    ``allow_failed_gate`` (then the Choice carries a warning); on the CPU, int8 prefers ``int8_cpu``
    and falls back to the Q/DQ model when only that one passed.
    """
    if precision not in CHOICES:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(CHOICES)}")
    if backend not in ("tensorrt", "onnxruntime"):
        raise UsageError(f"choose_model needs a concrete backend, not {backend!r}")
    if precision == "auto":
        return _auto(bundle, backend, cpu, dla, compute_capability)
    if backend == "onnxruntime":
        keys = ["int8_cpu", "int8"] if precision == "int8" and cpu else [precision]
        keys = [k for k in keys if bundle.has_model(k)]
        if not keys:
            hint = " (run `edgekit quantize` first)" if precision == "int8" else ""
            raise BundleError(f"bundle {bundle.path} has no {precision} model{hint}")
    else:
        key = tensorrt_key(bundle, precision)
        keys = [key] if key else []
        if not keys:  # TensorRT < 11 builds fp16 from fp32 (no gated model to judge it); the builder decides
            return Choice(backend, "fp32", precision, f"{precision} asked; the bundle has no {precision} model to judge it")
    for key in keys:
        if bundle.usable(key):
            skipped = [bundle.verdict(k) for k in keys[: keys.index(key)]]
            why = f"{precision} asked; {_gated(bundle, key)}" + "".join(f"; skipped {s}" for s in skipped)
            return Choice(backend, key, precision, why)
    if not allow_failed_gate:
        raise _refuse(bundle, keys[0])
    warning = f"{bundle.verdict(keys[0])}; running it anyway (--allow-failed-gate)"
    return Choice(backend, keys[0], precision, f"{precision} asked; --allow-failed-gate", warning)


def _auto(bundle, backend, cpu, dla, compute_capability) -> Choice:
    from edgekit.backends.tensorrt.builder import fast_on

    skipped = []
    if backend == "onnxruntime":
        if not cpu:
            return Choice(backend, "fp32", "fp32", "auto: ONNX Runtime on a GPU provider runs fp32")
        if bundle.has_model("int8_cpu"):
            if bundle.usable("int8_cpu"):
                return Choice(backend, "int8_cpu", "int8", f"auto: {_gated(bundle, 'int8_cpu')}")
            skipped.append(f"skipped {bundle.verdict('int8_cpu')}")
        else:
            skipped.append("no int8_cpu model (edgekit quantize --cpu-variant)")
        return Choice(backend, "fp32", "fp32", "auto: " + "; ".join(skipped))
    for precision in ("int8", "fp16") if dla else ("int8", "fp16", "fp32"):
        if not fast_on(precision, compute_capability):
            skipped.append(f"the GPU (sm {compute_capability}) has no fast {precision}")
            continue
        key = tensorrt_key(bundle, precision)
        if key is None:
            skipped.append(f"no {precision} model")
            continue
        if not bundle.usable(key):
            skipped.append(f"skipped {bundle.verdict(key)}")
            continue
        return Choice(backend, key, precision, "; ".join([f"auto: {_gated(bundle, key)}"] + skipped))
    detail = "; ".join(skipped)
    if dla:
        raise GateError(f"no usable int8 or fp16 model for DLA in bundle {bundle.path}: {detail}")
    raise DeviceError(f"no precision of bundle {bundle.path} runs here: {detail}")


def onnxruntime_model_key(bundle: Bundle, precision: str, cpu: bool = True) -> str:
    """The bundle model ONNX Runtime runs for ``precision`` (see :func:`choose_model`; failed gates refused)."""
    return choose_model(bundle, "onnxruntime", precision, cpu=cpu).key


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``tensorrt`` when TensorRT imports and a GPU answers, else ``onnxruntime``."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        missing = probe.missing_cuda_layer()
        if missing:  # not a silent CPU fallback: TensorRT is there, what it needs is not
            raise DeviceError(f"{missing}; or run on the CPU with --backend onnxruntime")
        return "tensorrt" if tensorrt_available() else "onnxruntime"
    return backend


def choose_here(bundle: Bundle, backend: str = "auto", precision: str = "auto", allow_failed_gate: bool = False,
                dla_core: int | None = None, device: int = 0, providers: list[str] | None = None) -> Choice:
    """The :class:`Choice` :func:`open_runner` makes on this machine, without opening anything."""
    backend = resolve_backend(backend)
    if backend == "tensorrt":
        return choose_tensorrt_model(bundle, precision, allow_failed_gate, dla_core, device)
    providers = providers or choose_providers()
    return choose_model(bundle, "onnxruntime", precision, allow_failed_gate, cpu=providers[0] == "CPUExecutionProvider")


def open_runner(bundle: Bundle, backend: str = "auto", precision: str = "auto", allow_failed_gate: bool = False,
                **options) -> Runner:
    """A not-yet-activated runner for ``bundle`` on ``backend`` at ``precision`` (default ``auto``).

    ``auto`` picks TensorRT when it imports and a GPU is present, else ONNX Runtime with its TensorRT
    or CUDA execution providers when it offers them, else its CPU provider. The model comes from
    :func:`choose_model` (a model that failed its gate is refused unless ``allow_failed_gate``); backend,
    model and why are logged in one line and kept as ``runner.choice``.
    ONNX Runtime options: ``providers``, ``intra_op_threads``, ``inter_op_threads``. TensorRT
    options: ``batch``, ``workspace_mib``, ``dla_core``, ``calibrate``, ``cache_dir``, ``force``,
    ``device``. Options of the backend not chosen are ignored, so ``auto`` can be given both.
    A detection bundle's runner returns the NMS plugin's four outputs (:mod:`edgekit.backends.detection`);
    ``score_threshold`` replaces the manifest's run threshold (e.g. its ``eval_score_threshold`` for mAP).
    """
    if precision not in CHOICES:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(CHOICES)}")
    unknown = set(options) - set(ORT_OPTIONS) - set(TRT_OPTIONS) - set(DETECTION_OPTIONS)
    if unknown:
        raise UsageError(f"unknown runner option(s): {', '.join(sorted(unknown))}")
    chosen = {k: v for k, v in options.items() if v is not None}
    backend = resolve_backend(backend)
    if backend == "tensorrt":
        if not tensorrt_available():
            from edgekit.backends.tensorrt.builder import require_tensorrt

            require_tensorrt()
        from edgekit.backends.tensorrt.runner import TensorRTRunner

        trt_options = {k: v for k, v in chosen.items() if k in TRT_OPTIONS}
        choice = choose_here(bundle, backend, precision, allow_failed_gate, trt_options.get("dla_core"),
                             trt_options.get("device", 0))
        log_choice(choice, f"{probe.cuda_layer()}; ")
        runner = TensorRTRunner.from_bundle(bundle, precision=choice.precision, allow_failed_gate=allow_failed_gate,
                                            **trt_options)
    else:
        from edgekit.backends.onnxruntime import OnnxRuntimeRunner

        ort_options = {k: v for k, v in chosen.items() if k in ORT_OPTIONS}
        providers = ort_options.pop("providers", None) or choose_providers()
        choice = choose_here(bundle, backend, precision, allow_failed_gate, providers=providers)
        log_choice(choice, "; ".join(providers) + "; ")
        runner = OnnxRuntimeRunner(bundle.model_path(choice.key), providers=providers, **ort_options)
    runner = _detection(bundle, runner, chosen)
    runner.choice = choice
    return runner


def choose_tensorrt_model(bundle: Bundle, precision: str, allow_failed_gate: bool = False, dla_core=None,
                          device: int = 0) -> Choice:
    """:func:`choose_model` on TensorRT for this machine's GPU ``device``."""
    return choose_model(bundle, "tensorrt", precision, allow_failed_gate, dla=dla_core is not None,
                        compute_capability=(probe.gpu_info(device) or {}).get("compute_capability"))


def log_choice(choice: Choice, detail: str = "") -> None:
    """The one line saying which backend and model run, and why (after a warning for a failed gate)."""
    if choice.warning:
        log.warning("%s", choice.warning)
    log.info("backend: %s (%s%s model, %s): %s", choice.backend, detail, choice.key, choice.precision, choice.reason)


def choose_providers() -> list[str]:
    """ONNX Runtime's providers to use on this machine (see :func:`onnxruntime_providers`)."""
    from edgekit.backends.onnxruntime import available_providers

    return onnxruntime_providers(available_providers())


def _detection(bundle: Bundle, runner: Runner, options: dict) -> Runner:
    """``runner`` itself for a classifier; for a detector, wrapped to return the NMS plugin's outputs."""
    if bundle.task != "detection":
        return runner
    from edgekit.backends.detection import DetectionRunner
    from edgekit.nms import NmsParams

    params = NmsParams.from_dict(bundle.manifest.get("nms") or {})  # checked when the bundle was loaded
    clip = bool((bundle.manifest.get("nms_cut") or {}).get("clip_boxes"))  # TensorFlow clipped after its NMS
    return DetectionRunner(runner, params, options.get("score_threshold"), clip_boxes=clip)


def onnxruntime_providers(available: list[str]) -> list[str]:
    """ONNX Runtime's GPU providers that ``available`` offers (TensorRT first), then the CPU."""
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def tensorrt_available() -> bool:
    """True when the tensorrt module imports and a CUDA GPU answers (through pycuda or cuda-python)."""
    return probe.tensorrt_version() is not None and probe.gpu_present()
