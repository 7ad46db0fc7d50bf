"""ONNX -> serialized TensorRT engine, for TensorRT 8.5 to 11, through the engine cache.

The decisions (which bundle model, which builder flags, which shapes, whether the device can do the
precision or DLA) are pure functions at the top, testable without TensorRT. The TensorRT calls are
below them and import ``tensorrt`` lazily. Version gates compare ``major`` (TensorRT's major version);
``tests/test_tensorrt_api_names.py`` checks every ``trt`` name used against each release's bindings.

TensorRT 11 is strongly typed: an INT8 engine is built from the Q/DQ model as it is, so the layers
the quantizer left in float (score heads, ``--keep-float`` nodes, non-fused ops) run in FP32, not
FP16 as with TensorRT <= 10's FP16 flag. edgekit keeps them FP32 (the gate measured exactly that
model) and says so in the build log; FP16 islands would need their own gated model.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.atomic import sha256_file
from edgekit.backends.tensorrt import probe
from edgekit.backends.tensorrt.cache import EngineCache, EngineKey
from edgekit.bundle import PRECISIONS, Bundle
from edgekit.errors import BundleError, DeviceError, ModelError, UsageError

log = logging.getLogger(__name__)

# GPUs with fast FP16/INT8 by compute capability (TensorRT's support matrix): Pascal's 6.1 has INT8 but
# no fast FP16, 6.0 and 6.2 (TX2) the reverse; Maxwell's 5.3 (Nano, TX1) FP16 only; everything from 7.0 both.
FAST = {"fp32": lambda cc: cc >= (3, 0),
        "fp16": lambda cc: cc in ((5, 3), (6, 0), (6, 2)) or cc >= (7, 0),
        "int8": lambda cc: cc == (6, 1) or cc >= (7, 0)}


def fast_on(precision: str, compute_capability: str | None) -> bool:
    """True when a GPU of ``compute_capability`` runs ``precision`` fast (unknown capability: assume so)."""
    if not compute_capability:
        return True
    return FAST[precision](tuple(int(v) for v in compute_capability.split(".")[:2]))
OOM_MARKERS = ("out of memory", "outofmemory", "insufficient memory", "cudamalloc", "requested amount of gpu memory")
# TensorRT's closing summaries of a failed build: they name no cause, the errors before them do.
GENERIC_ERRORS = ("buildserializednetwork", "engine != nullptr", "network validation failed",
                  "engine could not be created", "failed to build", "builder failed", "could not build engine")


class UnsupportedPrecisionError(DeviceError):
    """The device cannot run the asked precision or DLA core (doctor's self-test reports it as unsupported)."""


# ---- pure decisions -------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    """What ``edgekit build`` takes. ``batch`` is the (min, opt, max) batch of the optimization profile
    (static, min = opt = max, with ``dla_core``); ``precision`` may be ``auto`` (see ``select.choose_model``);
    ``device`` is the CUDA device index; ``allow_failed_gate`` builds a model that failed its accuracy gate."""

    precision: str = "fp32"
    batch: tuple = (1, 1, 1)
    workspace_mib: int | None = None
    dla_core: int | None = None
    calibrate: Path | None = None
    cache_dir: Path | None = None
    force: bool = False
    device: int = 0
    allow_failed_gate: bool = False

    def __post_init__(self):
        if self.precision not in ("auto",) + PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; choose from auto, {', '.join(PRECISIONS)}")
        object.__setattr__(self, "batch", parse_batch(self.batch, static=self.dla_core is not None))
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise UsageError("--workspace must be a positive number of MiB")
        if self.dla_core is not None and self.dla_core < 0:
            raise UsageError("--dla must be a DLA core number (0 or 1)")


def parse_batch(spec, static: bool = False) -> tuple[int, int, int]:
    """``"8"`` -> (1, 8, 8); ``"1,4,8"`` -> (1, 4, 8); tuples pass through. Needs 1 <= min <= opt <= max.

    ``static`` (DLA, which has no dynamic shapes): ``"8"`` -> (8, 8, 8), and a range is refused.
    """
    if isinstance(spec, int):
        spec = (spec,) * 3 if static else (1, spec, spec)
    elif isinstance(spec, str):
        try:
            parts = tuple(int(p) for p in spec.split(","))
        except ValueError:
            raise UsageError(f"--batch takes N or MIN,OPT,MAX, got {spec!r}") from None
        spec = (parts[0] if static else 1, parts[0], parts[0]) if len(parts) == 1 else parts
    spec = tuple(int(v) for v in spec)
    if len(spec) != 3 or not 1 <= spec[0] <= spec[1] <= spec[2]:
        raise UsageError(f"--batch needs 1 <= MIN <= OPT <= MAX, got {','.join(map(str, spec))}")
    if static and spec[0] != spec[2]:
        raise UsageError(
            f"DLA needs a static batch (min = opt = max), got {','.join(map(str, spec))}; pass --batch N with --dla"
        )
    return spec


def profile_shapes(input_shape, batch: tuple[int, int, int]) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) input shapes from the manifest's input shape and the batch profile."""
    rest = list(input_shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ModelError(f"input shape {input_shape} has dynamic dimensions besides the batch; TensorRT needs them fixed")
    fixed = input_shape[0]
    if isinstance(fixed, int) and fixed > 0 and batch != (fixed, fixed, fixed):
        if batch != (1, 1, 1) or fixed != 1:
            raise UsageError(f"the model's batch is fixed at {fixed}; --batch cannot change it")
        batch = (fixed,) * 3
    elif isinstance(fixed, int) and fixed > 0:
        batch = (fixed,) * 3
    return tuple(tuple([b] + rest) for b in batch)


@dataclass(frozen=True)
class Recipe:
    """Which bundle model TensorRT parses, with which builder flags, and whether a calibrator runs."""

    model_key: str
    flags: tuple = field(default_factory=tuple)
    calibrate: bool = False


def recipe(bundle: Bundle, precision: str, major: int, calibrate: Path | None = None) -> Recipe:
    """Choose the source model and builder flags for ``precision`` on TensorRT ``major``.

    TensorRT < 11 builds FP16 from the fp32 model with the FP16 flag, and INT8 from the Q/DQ model
    (or, with ``calibrate``, from fp32 with an entropy calibrator). TensorRT 11 is strongly typed:
    precision comes from the ONNX, so FP16 needs the fp16 model and INT8 the Q/DQ model.
    """
    if precision == "fp32":
        return Recipe("fp32")
    if major >= 11:
        if calibrate is not None:
            raise UsageError("TensorRT 11 removed implicit INT8 calibration; use the bundle's Q/DQ model (edgekit quantize)")
        if not bundle.has_model(precision):
            how = "edgekit quantize" if precision == "int8" else "an fp16 export of the model"
            raise BundleError(
                f"TensorRT {major} is strongly typed: {precision} needs the bundle's {precision} model ({how}); {bundle.path} has none"
            )
        return Recipe(precision)
    if precision == "fp16":
        return Recipe("fp32", ("FP16",))
    if bundle.has_model("int8") and calibrate is None:
        return Recipe("int8", ("INT8", "FP16"))
    if calibrate is not None:
        return Recipe("fp32", ("INT8", "FP16"), calibrate=True)
    raise BundleError(
        f"bundle {bundle.path} has no int8 (Q/DQ) model and no calibration set: run `edgekit quantize` (or `edgekit build --calibrate DIR`)"
    )


def check_precision(precision: str, compute_capability: str | None, fast_fp16=None, fast_int8=None) -> None:
    """Raise DeviceError when the GPU cannot run ``precision`` (TensorRT's own answer wins when given)."""
    fast = {"fp16": fast_fp16, "int8": fast_int8}.get(precision)
    if fast is None:
        fast = fast_on(precision, compute_capability)
    if fast is False:
        raise UnsupportedPrecisionError(
            f"this GPU (sm {compute_capability}) has no fast {precision.upper()}; build with --precision fp32"
            + (" or fp16" if precision == "int8" and (fast_fp16 is not False) else "")
        )


def check_dla(dla_core: int | None, num_dla_cores: int, precision: str) -> None:
    """Raise DeviceError when DLA core ``dla_core`` cannot be used for ``precision``."""
    if dla_core is None:
        return
    if num_dla_cores == 0:
        raise UnsupportedPrecisionError("this device has no DLA (Orin Nano and desktop GPUs have none); drop --dla")
    if dla_core >= num_dla_cores:
        raise UnsupportedPrecisionError(f"DLA core {dla_core} does not exist; this device has {num_dla_cores} (0..{num_dla_cores - 1})")
    if precision == "fp32":
        raise UnsupportedPrecisionError("DLA runs FP16 or INT8 only; pass --precision fp16 or int8 with --dla")


def folder_digest(paths) -> str:
    """A digest of image file names and sizes: identifies a calibration set in the engine key."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{Path(p).name}:{os.path.getsize(p)}\n".encode())
    return h.hexdigest()[:16]


def root_cause(messages: list[str]) -> str:
    """The first error TensorRT logged that names a cause, not its closing "build failed" summary."""
    specific = [m for m in messages if not any(g in m.lower().replace(" ", "") for g in
                                               (x.replace(" ", "") for x in GENERIC_ERRORS))]
    return (specific or messages or ["unknown error"])[0].strip()


def oom_hint(messages: list[str]) -> bool:
    """True when TensorRT's error messages say the build ran out of memory."""
    text = " ".join(messages).lower().replace(" ", "")
    return any(marker.replace(" ", "") in text for marker in OOM_MARKERS)


# ---- TensorRT -------------------------------------------------------------------------------
def trt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


_LOGGER = None


def logger():
    """One TensorRT logger for the process: forwards to Python logging and keeps the errors."""
    global _LOGGER
    if _LOGGER is None:
        import tensorrt as trt

        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                    log.debug("tensorrt: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.debug("tensorrt: %s", msg)

        _LOGGER = Logger()
    return _LOGGER


_PLUGINS = False


def init_plugins() -> None:
    """Register TensorRT's plugin library (EfficientNMS_TRT, InstanceNormalization_TRT, ...) once per
    process: needed before parsing an ONNX that uses them and before deserializing an engine holding them."""
    global _PLUGINS
    if not _PLUGINS:
        import tensorrt as trt

        if not trt.init_libnvinfer_plugins(logger(), ""):
            log.warning("TensorRT's plugin library did not initialise; models using its plugins will fail")
        _PLUGINS = True


def _progress_monitor():
    import tensorrt as trt

    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                log.info("building: %s", phase_name)

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            pass

    return Progress()


def device_key(options: BuildOptions, onnx_sha256: str, shapes: tuple, calibration: str | None = None) -> EngineKey:
    """The cache key for building ``onnx_sha256`` on this TensorRT and GPU ``options.device`` with ``options``.

    Besides name and compute capability the GPU is identified by its SM count and memory: Jetson
    modules of one family (e.g. Orin NX 8 GB and 16 GB) share both.
    """
    gpu = probe.gpu_info(options.device) or {}
    return EngineKey(
        onnx_sha256=onnx_sha256,
        tensorrt=probe.tensorrt_version() or "none",
        gpu=gpu.get("name", "unknown"),
        compute_capability=gpu.get("compute_capability", "unknown"),
        precision=options.precision,
        shapes=shapes,
        dla_core=options.dla_core,
        calibration=calibration,
        device=options.device,
        multiprocessors=gpu.get("multiprocessors"),
        memory_mib=gpu.get("memory_mib"),
    )


def serialize_network(
    onnx_path: Path,
    input_name: str,
    shapes: tuple,
    rec: Recipe,
    options: BuildOptions,
    timing_cache: Path,
    calibrator=None,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (bytes). Needs a current CUDA context."""
    import tensorrt as trt

    major = trt_major()
    log_ = logger()
    init_plugins()
    log_.errors.clear()
    builder = trt.Builder(log_)
    flags = 0
    if major < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log_)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] + log_.errors
        raise ModelError(f"TensorRT cannot parse {onnx_path.name}: {root_cause(errors)}")

    config = builder.create_builder_config()
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)

    compute_capability = (probe.gpu_info(options.device) or {}).get("compute_capability")
    if major < 11:
        check_precision(
            options.precision, compute_capability,
            builder.platform_has_fast_fp16, builder.platform_has_fast_int8,
        )
        named = {"FP16": trt.BuilderFlag.FP16, "INT8": trt.BuilderFlag.INT8}
        for flag in rec.flags:
            config.set_flag(named[flag])
        if calibrator is not None:
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
    else:
        check_precision(options.precision, compute_capability)
        if options.precision == "int8":
            log.info("TensorRT %d is strongly typed: the float layers of the Q/DQ model run in FP32", major)

    if options.dla_core is not None:
        check_dla(options.dla_core, builder.num_DLA_cores, options.precision)
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)
    if major >= 10:
        config.progress_monitor = _progress_monitor()

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        if oom_hint(log_.errors):
            raise DeviceError(
                "TensorRT ran out of memory building the engine; build it first with a smaller limit"
                " (`edgekit build BUNDLE --workspace MiB`), close other GPU programs or add swap (common on small Jetsons)"
            )
        raise DeviceError(f"TensorRT failed to build the engine: {root_cause(log_.errors)}")
    from edgekit.atomic import write_bytes
    from edgekit.errors import EdgekitError

    try:
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    except EdgekitError as exc:  # only an optimisation: the engine is still good
        log.warning("timing cache not saved: %s", exc)
    return bytes(plan)


def entropy_calibrator(bundle: Bundle, paths: list[Path], cache_file: Path, batch: int):
    """An IInt8EntropyCalibrator2 (TensorRT <= 10) over image ``paths``, through the bundle's Preprocess.

    ``batch`` must be the calibration profile's opt batch: with explicit batch, TensorRT reads
    input buffers of the profile's opt shape, whatever ``get_batch_size`` says.
    """
    import numpy as np
    import tensorrt as trt

    from edgekit.backends.tensorrt import cuda
    from edgekit.images import ImageReader

    prep = bundle.preprocess

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.images = (image for _, image in ImageReader(paths))
            self.buffer = None

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            frames = list(itertools.islice(self.images, batch))
            if not frames:
                return None
            tensor = prep.batch(frames).astype(np.float32)
            if len(frames) < batch:  # repeat the last image: TensorRT expects full batches
                tensor = np.concatenate([tensor, np.repeat(tensor[-1:], batch - len(frames), axis=0)])
            if self.buffer is None:
                self.buffer = cuda.DeviceBuffer(tensor.shape, tensor.dtype)
            self.buffer.upload(tensor)
            return [self.buffer.ptr]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            from edgekit.atomic import write_bytes

            write_bytes(cache_file, bytes(cache))

    return Calibrator()


def require_tensorrt() -> None:
    """Raise DeviceError, with how to get it, when TensorRT or a CUDA GPU is missing."""
    if probe.tensorrt_version() is None:
        raise DeviceError(f"TensorRT is not available here; {probe.TENSORRT_HINT}")
    missing = probe.missing_cuda_layer()
    if missing:
        raise DeviceError(missing)
    if not probe.gpu_present():
        raise DeviceError("no CUDA GPU answers (needs the NVIDIA driver)")


def build(bundle: Bundle, options: BuildOptions) -> tuple[Path, bool]:
    """Build ``bundle``'s engine, or find it in the cache: ``(plan path, built now)``.

    The model comes from ``select.choose_model`` (``auto`` resolved, failed gates refused), logged in one line.
    """
    import dataclasses

    from edgekit.backends.select import choose_tensorrt_model, log_choice
    from edgekit.backends.tensorrt import cuda

    choice = choose_tensorrt_model(bundle, options.precision, options.allow_failed_gate, options.dla_core,
                                   options.device)  # a failed gate is refused even where TensorRT is missing
    require_tensorrt()
    log_choice(choice)
    options = dataclasses.replace(options, precision=choice.precision)
    with cuda.CudaContext(options.device):
        engine, plan, built = load_engine(bundle, options)
        del engine
    return plan, built


def load_engine(bundle: Bundle, options: BuildOptions):
    """The deserialized engine for ``bundle`` with ``options``: from the cache or built now.

    Returns ``(engine, plan_path, built)``. Needs a current CUDA context (``cuda.CudaContext``). Refuses
    (GateError) a model that failed its accuracy gate unless ``options.allow_failed_gate``; resolves ``auto``.
    """
    import dataclasses

    import tensorrt as trt

    from edgekit.backends.select import choose_tensorrt_model

    choice = choose_tensorrt_model(bundle, options.precision, options.allow_failed_gate, options.dla_core,
                                   options.device)
    options = dataclasses.replace(options, precision=choice.precision)
    major = trt_major()
    rec = recipe(bundle, options.precision, major, options.calibrate)
    plugin_model = bundle.models.get(rec.model_key, {}).get("tensorrt")  # a detector: the model + EfficientNMS_TRT
    onnx_path = bundle.path / plugin_model["path"] if plugin_model else bundle.model_path(rec.model_key)
    if not onnx_path.is_file():
        raise BundleError(f"bundle {bundle.path} lacks its {rec.model_key} model {onnx_path.name}")
    shapes = profile_shapes(bundle.input["shape"], options.batch)
    sha = (plugin_model.get("sha256") or sha256_file(onnx_path)) if plugin_model else bundle.model_sha256(rec.model_key)
    cache = EngineCache(options.cache_dir)
    calibrator = digest = None
    if major < 11 and rec.calibrate:
        from edgekit.images import list_images

        paths = list_images(options.calibrate)
        if not paths:
            raise BundleError(f"calibration folder {options.calibrate} holds no images (jpg, png, bmp)")
        digest = folder_digest(paths)
        cache_file = cache.root / "calibration" / f"{sha[:16]}-{digest}.cache"
        calibrator = entropy_calibrator(bundle, paths, cache_file, batch=shapes[1][0])
    key = device_key(options, sha, shapes, digest)
    timing = cache.timing_cache_path(key)
    init_plugins()
    runtime = trt.Runtime(logger())
    if options.dla_core is not None:
        runtime.DLA_core = options.dla_core

    def build() -> bytes:
        return serialize_network(onnx_path, bundle.input["name"], shapes, rec, options, timing, calibrator)

    return cache.load_or_build(
        key,
        build,
        runtime.deserialize_cuda_engine,
        model_name=bundle.path.name,
        force=options.force,
        source_model=rec.model_key,
        flags=list(rec.flags),
        workspace_mib=options.workspace_mib,
    )
