"""Cheap questions about TensorRT, CUDA and the GPU that never raise: used by backend choice and doctor."""

from __future__ import annotations

import functools

TENSORRT_HINT = (
    "on a Jetson it comes with JetPack: sudo apt install python3-libnvinfer (and pip install pycuda or cuda-python);"
    " elsewhere there is no engine to build: `edgekit run` and `edgekit bench` use ONNX Runtime on the CPU"
    " (their --backend auto or onnxruntime)"
)


@functools.lru_cache(maxsize=None)
def tensorrt_version() -> str | None:
    """The importable TensorRT's version, or None."""
    try:
        import tensorrt as trt
    except Exception:  # ImportError, or a broken install missing its shared libraries
        return None
    return getattr(trt, "__version__", "unknown")


def cuda_layer() -> str | None:
    """The device-memory layer in use, ``"pycuda 2025.1.2"`` or ``"cuda-python 12.6.2"``, or None when neither imports."""
    from edgekit.backends.tensorrt import cuda

    return cuda.layer_name()


def missing_cuda_layer() -> str | None:
    """Why TensorRT cannot run although it imports (no pycuda, no cuda-python), or None."""
    from edgekit.backends.tensorrt import cuda
    from edgekit.errors import DeviceError

    if tensorrt_version() is None:
        return None
    try:
        cuda.layer()
    except DeviceError as exc:
        return f"TensorRT {tensorrt_version()} imports but {exc}"
    return None


@functools.lru_cache(maxsize=None)
def gpu_present() -> bool:
    """True when the CUDA layer can initialise CUDA and sees at least one device."""
    try:
        from edgekit.backends.tensorrt import cuda

        lay = cuda.layer()
        lay.init()
        return lay.device_count() > 0
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def gpu_info(device: int = 0) -> dict | None:
    """``{"name", "compute_capability", "memory_mib", "multiprocessors"}`` of GPU ``device`` via the CUDA layer, or None."""
    try:
        from edgekit.backends.tensorrt import cuda

        lay = cuda.layer()
        lay.init()
        return lay.device_info(device)
    except Exception:
        return None


CUDA_VERSION_FILES = ("/usr/local/cuda/version.json", "/usr/local/cuda/version.txt")
CUDNN_HEADERS = (
    "/usr/include/cudnn_version.h",
    "/usr/include/aarch64-linux-gnu/cudnn_version_v9.h",
    "/usr/include/aarch64-linux-gnu/cudnn_version_v8.h",
    "/usr/include/x86_64-linux-gnu/cudnn_version_v9.h",
    "/usr/include/x86_64-linux-gnu/cudnn_version_v8.h",
    "/usr/local/cuda/include/cudnn_version.h",
)


def parse_cuda_version(text: str) -> str | None:
    """The CUDA toolkit version from ``version.json`` or the older ``version.txt``."""
    import json
    import re

    try:
        return json.loads(text)["cuda"]["version"]
    except (ValueError, KeyError, TypeError):
        match = re.search(r"CUDA Version (\d+(?:\.\d+)*)", text)
        return match.group(1) if match else None


def parse_cudnn_header(text: str) -> str | None:
    """``MAJOR.MINOR.PATCH`` from cudnn_version.h's CUDNN_MAJOR/MINOR/PATCHLEVEL defines."""
    import re

    parts = [re.search(rf"#define\s+CUDNN_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
    return ".".join(m.group(1) for m in parts) if all(parts) else None


def _first(paths, parse) -> str | None:
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                found = parse(f.read())
        except OSError:
            continue
        if found:
            return found
    return None


@functools.lru_cache(maxsize=None)
def cuda_version() -> str | None:
    """The CUDA toolkit version (from its version file), else the driver's CUDA version via the CUDA layer."""
    found = _first(CUDA_VERSION_FILES, parse_cuda_version)
    if found:
        return found
    try:
        from edgekit.backends.tensorrt import cuda

        v = cuda.layer().driver_version()
        return f"{v // 1000}.{v % 1000 // 10} (driver)"
    except Exception:
        return None


@functools.lru_cache(maxsize=None)
def cudnn_version() -> str | None:
    """The installed cuDNN's version from its header, or None."""
    return _first(CUDNN_HEADERS, parse_cudnn_header)


@functools.lru_cache(maxsize=None)
def dla_cores() -> int | None:
    """How many DLA cores TensorRT can use (None when TensorRT is unavailable)."""
    try:
        import tensorrt as trt

        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        return int(builder.num_DLA_cores)
    except Exception:
        return None


def require_tensorrt() -> None:
    """Raise DeviceError, with how to get it, when TensorRT or a CUDA GPU is missing."""
    from edgekit.errors import DeviceError

    if tensorrt_version() is None:
        raise DeviceError(f"TensorRT is not available here; {TENSORRT_HINT}")
    missing = missing_cuda_layer()
    if missing:
        raise DeviceError(missing)
    if not gpu_present():
        raise DeviceError("no CUDA GPU answers (needs the NVIDIA driver)")
