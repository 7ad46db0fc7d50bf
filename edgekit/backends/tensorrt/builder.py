"""A bundle's TensorRT engine: from the engine cache, or built now (TensorRT 8.5 to 11).

The caller chooses the precision (``select.choose_model``: ``auto`` resolved, failed gates refused);
this module builds what it is given: :mod:`recipe` decides the source model, flags and shapes,
:mod:`edgekit.graph.engine_nms` sets a detector's NMS for this engine, :mod:`network` makes the TensorRT calls and
:mod:`cache` keys and stores the plan.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.atomic import sha256_file
from edgekit.backends.tensorrt import probe
from edgekit.backends.tensorrt.cache import EngineCache, EngineKey
from edgekit.backends.tensorrt.recipe import BuildOptions, folder_digest, profile_shapes, recipe
from edgekit.bundle import Bundle
from edgekit.errors import BundleError


def device_key(options: BuildOptions, onnx_sha256: str, shapes: tuple, calibration: str | None = None,
               nms: str | None = None) -> EngineKey:
    """The cache key for building ``onnx_sha256`` on this TensorRT and GPU ``options.device`` with ``options``.

    Besides name and compute capability the GPU is identified by its SM count and memory: Jetson
    modules of one family (e.g. Orin NX 8 GB and 16 GB) share both. ``nms``: the detector's NMS
    settings written into the engine (its score threshold).
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
        nms=nms,
    )


def build(bundle: Bundle, options: BuildOptions) -> tuple[Path, bool]:
    """Build ``bundle``'s engine at ``options.precision``, or find it in the cache: ``(plan path, built now)``."""
    from edgekit.backends.tensorrt import cuda

    probe.require_tensorrt()
    with cuda.CudaContext(options.device):
        engine, plan, built = load_engine(bundle, options)
        del engine
    return plan, built


def load_engine(bundle: Bundle, options: BuildOptions):
    """The deserialized engine for ``bundle`` with ``options``: from the cache or built now.

    Returns ``(engine, plan_path, built)``. Needs a current CUDA context (``cuda.CudaContext``).
    """
    import tensorrt as trt

    from edgekit.backends.tensorrt.network import init_plugins, logger, serialize_network, trt_major

    major = trt_major()
    rec = recipe(bundle, options.precision, major, options.calibrate)
    detector = bundle.models.get(rec.model_key, {}).get("tensorrt")  # a detector: the model + its NMS
    onnx_path = bundle.path / detector["path"] if detector else bundle.model_path(rec.model_key)
    if not onnx_path.is_file():
        raise BundleError(f"bundle {bundle.path} lacks its {rec.model_key} model {onnx_path.name}")
    shapes = profile_shapes(bundle.input["shape"], options.batch)
    sha = (detector.get("sha256") or sha256_file(onnx_path)) if detector else bundle.model_sha256(rec.model_key)
    onnx_bytes = nms = None
    if detector:
        from edgekit.graph.engine_nms import engine_model

        onnx_bytes, nms = engine_model(onnx_path, options.nms_score_threshold, probe.tensorrt_version())
    cache = EngineCache(options.cache_dir)
    paths = digest = None
    if major < 11 and rec.calibrate:
        from edgekit.images import list_images

        paths = list_images(options.calibrate)
        if not paths:
            raise BundleError(f"calibration folder {options.calibrate} holds no images (jpg, png, bmp)")
        digest = folder_digest(paths)
    key = device_key(options, sha, shapes, digest, nms)
    timing = cache.timing_cache_path(key)
    init_plugins()
    runtime: trt.Runtime = trt.Runtime(logger())
    if options.dla_core is not None:
        runtime.DLA_core = options.dla_core

    calibration = (paths, cache.root / "calibration" / f"{sha[:16]}-{digest}.cache") if paths else None

    def build() -> bytes:
        return serialize_network(bundle, onnx_path, shapes, rec, options, timing, calibration, onnx_bytes)

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
