"""ONNX -> serialized TensorRT engine (bytes), for TensorRT 8.5 to 11: the TensorRT calls of a build.

Imports ``tensorrt`` lazily. Version gates compare ``major`` (TensorRT's major version);
``tests/test_tensorrt_api_names.py`` checks every ``trt`` name used against each release's bindings.
The decisions these calls carry out are in :mod:`edgekit.backends.tensorrt.recipe`.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

from edgekit.backends.tensorrt import probe
from edgekit.backends.tensorrt.recipe import (
    BuildOptions,
    Recipe,
    check_dla,
    check_precision,
    default_workspace_mib,
    oom_hint,
    oom_message,
    root_cause,
)
from edgekit.bundle import Bundle
from edgekit.errors import DeviceError, ModelError

log = logging.getLogger(__name__)


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
    """An IProgressMonitor (TensorRT 10+) logging each top-level phase and, in long ones, every 10% of steps."""
    import tensorrt as trt

    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps: dict = {}
            self.started = time.monotonic()

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                self.steps[phase_name] = max(int(num_steps), 1)
                log.info("building: %s (%.0f s so far)", phase_name, time.monotonic() - self.started)

        def step_complete(self, phase_name, step):
            total = self.steps.get(phase_name)
            if total and total >= 10 and (step + 1) % (total // 10) == 0:
                log.info("building: %s %d/%d", phase_name, step + 1, total)
            return True

        def phase_finish(self, phase_name):
            self.steps.pop(phase_name, None)

    return Progress()


def serialize_network(
    bundle: Bundle,
    onnx_path: Path,
    shapes: tuple,
    rec: Recipe,
    options: BuildOptions,
    timing_cache: Path,
    calibration: tuple[list[Path], Path] | None = None,
    onnx_bytes: bytes | None = None,
) -> bytes:
    """Parse ``onnx_path`` (or ``onnx_bytes``, its edited copy) and build a serialized engine (bytes).

    ``calibration``: (image paths, calibration cache file) for implicit INT8 (TensorRT <= 10). Needs a
    current CUDA context."""
    import tensorrt as trt

    from edgekit.backends.tensorrt import cuda

    major = trt_major()
    log_ = logger()
    init_plugins()
    log_.errors.clear()
    builder: trt.Builder = trt.Builder(log_)
    flags = 0
    if major < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network: trt.INetworkDefinition = builder.create_network(flags)
    parser: trt.OnnxParser = trt.OnnxParser(network, log_)
    parsed = parser.parse(onnx_bytes) if onnx_bytes is not None else parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] + log_.errors
        raise ModelError(f"TensorRT cannot parse {onnx_path.name}: {root_cause(errors)}")

    config: trt.IBuilderConfig = builder.create_builder_config()
    workspace = options.workspace_mib or default_workspace_mib(cuda.free_memory_mib())
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace << 20)
    profile: trt.IOptimizationProfile = builder.create_optimization_profile()
    profile.set_shape(bundle.input["name"], *shapes)
    config.add_optimization_profile(profile)

    compute_capability = (probe.gpu_info(options.device) or {}).get("compute_capability")
    staging = None
    if major < 11:
        check_precision(
            options.precision, compute_capability,
            builder.platform_has_fast_fp16, builder.platform_has_fast_int8,
        )
        named = {"FP16": trt.BuilderFlag.FP16, "INT8": trt.BuilderFlag.INT8}
        for flag in rec.flags:
            config.set_flag(named[flag])
        if calibration is not None:
            calibrator, staging = entropy_calibrator(bundle, calibration[0], calibration[1], shapes[1])
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

    cache: trt.ITimingCache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)
    if major >= 10:
        config.progress_monitor = _progress_monitor()
    else:  # TensorRT 8 has no progress API: say what is happening before a silent wait
        log.info("building the engine (TensorRT %d reports no progress; minutes on a small Jetson, once)", major)
    started = time.monotonic()
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        if staging is not None:  # the calibrator's device buffer: freed here, with the context current
            staging.free()
    if plan is None:
        if oom_hint(log_.errors):
            raise DeviceError(oom_message(workspace, tuple(s[0] for s in shapes)))
        raise DeviceError(f"TensorRT failed to build the engine: {root_cause(log_.errors)}")
    log.info("built the engine in %.0f s (workspace %s)", time.monotonic() - started,
             f"{workspace} MiB" if workspace else "TensorRT's default")
    from edgekit.atomic import write_bytes
    from edgekit.errors import EdgekitError

    try:
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    except EdgekitError as exc:  # only an optimisation: the engine is still good
        log.warning("timing cache not saved: %s", exc)
    return bytes(plan)


def entropy_calibrator(bundle: Bundle, paths: list[Path], cache_file: Path, shape: tuple):
    """``(calibrator, buffer)``: an IInt8EntropyCalibrator2 (TensorRT <= 10; removed in 11) over image ``paths`` through the bundle's
    Preprocess, and the device buffer it fills; the caller owns the buffer and frees it after the build.

    ``shape`` must be the calibration profile's opt shape: with explicit batch, TensorRT reads input
    buffers of that shape, whatever ``get_batch_size`` says. Needs a current CUDA context.
    """
    import numpy as np
    import tensorrt as trt

    from edgekit.backends.tensorrt import cuda
    from edgekit.images import ImageReader

    prep = bundle.preprocess
    batch = int(shape[0])
    buffer = cuda.DeviceBuffer(shape, np.float32)

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.images = (image for _, image in ImageReader(paths))

        def get_batch_size(self):
            return batch

        def get_batch(self, names):
            frames = list(itertools.islice(self.images, batch))
            if not frames:
                return None
            tensor = prep.batch(frames).astype(np.float32)
            if len(frames) < batch:  # repeat the last image: TensorRT expects full batches
                tensor = np.concatenate([tensor, np.repeat(tensor[-1:], batch - len(frames), axis=0)])
            buffer.upload(tensor)
            return [buffer.ptr]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            from edgekit.atomic import write_bytes

            write_bytes(cache_file, bytes(cache))

    return Calibrator(), buffer
