"""Choosing a backend and the bundle model it runs: ``open_runner(bundle, backend, precision)``.

:func:`choose_model` is the one place that turns a precision (``auto`` included) into a bundle model,
honouring the accuracy verdicts recorded in the manifest (:meth:`Bundle.verdict`): ``run``,
``bench``, ``build``, ``validate`` (on TensorRT), ``service install`` and the Python API all go
through it, so a model that failed its gate is refused (or, with ``allow_failed_gate``, used with a
warning) the same way everywhere. :func:`open_runner` measures ``auto`` among the usable candidates.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from edgekit.backends.base import Runner
from edgekit.backends.tensorrt import probe
from edgekit.backends.tensorrt.gpus import fast_on
from edgekit.bundle import PRECISIONS, Bundle
from edgekit.errors import BundleError, DeviceError, GateError, UsageError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime")
CHOICES = ("auto",) + PRECISIONS + ("int8_cpu",)  # int8_cpu: ONNX Runtime's CPU-placed INT8 variant


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
    measured_ms: dict | None = None  # auto: median ms per inference of each candidate, measured here

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
    if precision == "int8_cpu" and backend == "tensorrt":
        raise UsageError("int8_cpu is ONNX Runtime's CPU variant: pass --backend onnxruntime, or --precision int8 on TensorRT")
    if backend == "onnxruntime":
        keys = ["int8_cpu", "int8"] if precision == "int8" and cpu else [precision]
        keys = [k for k in keys if bundle.has_model(k)]
        if not keys:
            hint = {"int8": " (run `edgekit quantize` first)",
                    "int8_cpu": " (run `edgekit quantize --cpu-variant` first)"}.get(precision, "")
            raise BundleError(f"bundle {bundle.path} has no {precision} model{hint}")
    else:
        key = tensorrt_key(bundle, precision)
        keys = [key] if key else []
        if not keys:  # TensorRT < 11 builds fp16 from fp32 (no gated model to judge it); the builder decides
            return Choice(backend, "fp32", precision, f"{precision} asked; the bundle has no {precision} model to judge it")
    asked = "int8" if precision == "int8_cpu" else precision
    for key in keys:
        if bundle.usable(key):
            skipped = [bundle.verdict(k) for k in keys[: keys.index(key)]]
            why = f"{precision} asked; {_gated(bundle, key)}" + "".join(f"; skipped {s}" for s in skipped)
            if precision == "int8" and key == "int8_cpu":
                why += "; on the CPU int8 prefers the int8_cpu variant (placed for a CPU; the Q/DQ model is TensorRT's)"
            return Choice(backend, key, asked, why)
    if not allow_failed_gate:
        raise _refuse(bundle, keys[0])
    warning = f"{bundle.verdict(keys[0])}; running it anyway (--allow-failed-gate)"
    return Choice(backend, keys[0], asked, f"{precision} asked; --allow-failed-gate", warning)


def auto_candidates(bundle: Bundle, backend: str, cpu: bool = True, dla: bool = False,
                    compute_capability: str | None = None) -> tuple[list[Choice], list[str]]:
    """The usable models ``auto`` chooses among, in the static order (int8 first), and why others were skipped.

    TensorRT: int8, fp16, fp32 the GPU runs fast (DLA: int8/fp16 only), int8 and fp16 from gated models.
    ONNX Runtime on the CPU (``cpu``): int8_cpu and fp32 (the TensorRT-placed Q/DQ model is slower than
    FP32 on a CPU); on a GPU provider fp32.
    """
    skipped: list[str] = []
    found: list[Choice] = []
    if backend == "onnxruntime":
        if not cpu:
            return [Choice(backend, "fp32", "fp32", "auto: ONNX Runtime on a GPU provider runs fp32")], skipped
        if not bundle.has_model("int8_cpu"):
            skipped.append("no int8_cpu model (edgekit quantize --cpu-variant)")
        for key in ("int8_cpu", "fp32"):
            if bundle.has_model(key) and not bundle.usable(key):
                skipped.append(f"skipped {bundle.verdict(key)}")
            elif bundle.has_model(key):
                found.append(Choice(backend, key, "int8" if key == "int8_cpu" else key, f"auto: {_gated(bundle, key)}"))
        return found, skipped
    for precision in ("int8", "fp16") if dla else ("int8", "fp16", "fp32"):
        if not fast_on(precision, compute_capability):
            skipped.append(f"the GPU (sm {compute_capability}) has no fast {precision}")
            continue
        key = tensorrt_key(bundle, precision)
        if key is None:
            skipped.append(f"no {precision} model")
        elif not bundle.usable(key):
            skipped.append(f"skipped {bundle.verdict(key)}")
        else:
            found.append(Choice(backend, key, precision, f"auto: {_gated(bundle, key)}"))
    return found, skipped


def _auto(bundle, backend, cpu, dla, compute_capability) -> Choice:
    found, skipped = auto_candidates(bundle, backend, cpu, dla, compute_capability)
    if found:
        first = found[0]
        if first.key == "fp32" and skipped:  # the fallback: say what the faster models lacked
            return Choice(backend, "fp32", "fp32", "auto: " + "; ".join(skipped))
        return Choice(backend, first.key, first.precision, "; ".join([first.reason] + skipped))
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
    :func:`choose_model` (a model that failed its gate is refused unless ``allow_failed_gate``); with
    precision ``auto`` the usable candidates are timed here once (:mod:`edgekit.backends.measure`, cached
    under ``cache_dir``) and the fastest runs. Backend, model and why are logged in one line and kept
    as ``runner.choice``.
    ONNX Runtime options: ``providers``, ``intra_op_threads``, ``inter_op_threads``. TensorRT
    options: ``batch``, ``workspace_mib``, ``dla_core``, ``calibrate``, ``cache_dir``, ``force``,
    ``device``. Options of the backend not chosen are ignored, so ``auto`` can be given both.
    A detection bundle's runner returns the NMS plugin's four outputs (:mod:`edgekit.backends.detection`);
    ``score_threshold`` replaces the manifest's run threshold (e.g. its ``eval_score_threshold`` for mAP);
    a TensorRT engine's NMS runs at it (at least 0.01 unless it is the eval threshold: see
    :func:`edgekit.nms.engine_score_threshold`).
    """
    if precision not in CHOICES:
        raise UsageError(f"unknown precision {precision!r}; choose from {', '.join(CHOICES)}")
    unknown = set(options) - set(ORT_OPTIONS) - set(TRT_OPTIONS) - set(DETECTION_OPTIONS)
    if unknown:
        raise UsageError(f"unknown runner option(s): {', '.join(sorted(unknown))}")
    chosen = {k: v for k, v in options.items() if v is not None}
    backend = resolve_backend(backend)
    params = _nms_params(bundle)
    if backend == "tensorrt":
        if not tensorrt_available():
            probe.require_tensorrt()
        from edgekit.backends.tensorrt.runner import TensorRTRunner

        trt_options = {k: v for k, v in chosen.items() if k in TRT_OPTIONS}
        if params is not None:  # the engine's NMS runs at the loop's threshold, or validate's
            from edgekit.nms import engine_score_threshold

            asked = chosen.get("score_threshold", params.score_threshold)
            trt_options["nms_score_threshold"] = engine_score_threshold(asked, params.eval_score_threshold)
        device = trt_options.get("device", 0)
        gpu = probe.gpu_info(device) or {}

        def open_candidate(c: Choice) -> Runner:
            return TensorRTRunner.from_bundle(bundle, precision=c.precision, **trt_options)

        choice = choose_here(bundle, backend, precision, allow_failed_gate, trt_options.get("dla_core"), device)
        if precision == "auto":
            where = (f"{gpu.get('name')} sm{gpu.get('compute_capability')} TensorRT {probe.tensorrt_version()} "
                     f"device {device} dla {trt_options.get('dla_core')}")
            choice = _measured(bundle, choice, open_candidate, where, trt_options.get("cache_dir"),
                               dla=trt_options.get("dla_core") is not None, compute_capability=gpu.get("compute_capability"))
        log_choice(choice, f"{probe.cuda_layer()}; ")
    else:
        from edgekit.backends.onnxruntime import OnnxRuntimeRunner

        ort_options = {k: v for k, v in chosen.items() if k in ORT_OPTIONS}
        providers = ort_options.pop("providers", None) or choose_providers()

        def open_candidate(c: Choice) -> Runner:
            return OnnxRuntimeRunner(bundle.model_path(c.key), providers=providers, **ort_options)

        choice = choose_here(bundle, backend, precision, allow_failed_gate, providers=providers)
        if precision == "auto":
            where = (f"{'+'.join(providers)} {_cpu_name()} threads {ort_options.get('intra_op_threads')},"
                     f"{ort_options.get('inter_op_threads')}")
            choice = _measured(bundle, choice, open_candidate, where, chosen.get("cache_dir"),
                               cpu=providers[0] == "CPUExecutionProvider")
        log_choice(choice, "; ".join(providers) + "; ")
    runner = open_candidate(choice)
    if params is not None:
        from edgekit.backends.detection import DetectionRunner

        clip = bool((bundle.manifest.get("nms_cut") or {}).get("clip_boxes"))  # TensorFlow clipped after its NMS
        runner = DetectionRunner(runner, params, chosen.get("score_threshold"), trt_options.get("nms_score_threshold")
                                 if backend == "tensorrt" else None, clip_boxes=clip)
    runner.choice = choice
    return runner


def _measured(bundle: Bundle, static: Choice, open_candidate, where: str, cache_dir, **rules) -> Choice:
    """``auto`` measured among the usable candidates (:mod:`edgekit.backends.measure`); ``static`` when alone."""
    from edgekit.backends.measure import measured_choice

    found, skipped = auto_candidates(bundle, static.backend, **rules)
    if len(found) < 2:
        return static
    chosen = measured_choice(bundle, found, open_candidate, where, cache_dir)
    return Choice(chosen.backend, chosen.key, chosen.precision, "; ".join([chosen.reason] + skipped),
                  measured_ms=chosen.measured_ms)


def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the machine type: part of the device in measured timings."""
    import os
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.machine()} x{os.cpu_count()}"


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


def _nms_params(bundle: Bundle):
    """A detection bundle's NmsParams (checked when the bundle was loaded); None for a classifier."""
    if bundle.task != "detection":
        return None
    from edgekit.nms import NmsParams

    return NmsParams.from_dict(bundle.manifest.get("nms") or {})


def onnxruntime_providers(available: list[str]) -> list[str]:
    """ONNX Runtime's GPU providers that ``available`` offers (TensorRT first), then the CPU."""
    return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]


def tensorrt_available() -> bool:
    """True when the tensorrt module imports and a CUDA GPU answers (through pycuda or cuda-python)."""
    return probe.tensorrt_version() is not None and probe.gpu_present()
