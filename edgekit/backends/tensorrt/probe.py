"""Cheap questions about TensorRT and the GPU that never raise: used by backend choice and doctor."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def tensorrt_version() -> str | None:
    """The importable TensorRT's version, or None."""
    try:
        import tensorrt as trt
    except Exception:  # ImportError, or a broken install missing its shared libraries
        return None
    return getattr(trt, "__version__", "unknown")


@functools.lru_cache(maxsize=None)
def gpu_present() -> bool:
    """True when pycuda can initialise CUDA and sees at least one device."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:
        return False
