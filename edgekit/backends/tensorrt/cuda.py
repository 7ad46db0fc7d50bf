"""Device memory through pycuda: the context, pinned host buffers, device buffers, one stream.

The pycuda threading trap: a CUDA context is current in one thread only, so an engine built or run
from another thread fails with "invalid device context". :class:`CudaContext` retains the device's
primary context (the one the CUDA runtime, hence TensorRT, uses), pushes it in the thread that calls
``push()`` and pops it there; using it from any other thread raises a clear error instead.
"""

from __future__ import annotations

import threading

import numpy as np

from edgekit.errors import DeviceError


def _driver():
    try:
        import pycuda.driver as cuda
    except Exception as exc:  # ImportError, or a pycuda built against another CUDA
        raise DeviceError(
            f"pycuda is not available ({exc}); on a Jetson: pip install pycuda (needs JetPack's CUDA)"
        ) from exc
    return cuda


class CudaContext:
    """The primary context of GPU ``device``, current in the thread that pushed it."""

    def __init__(self, device: int = 0):
        self.device = device
        self._ctx = None
        self._thread = None

    def push(self) -> "CudaContext":
        cuda = _driver()
        try:
            cuda.init()
            self._ctx = cuda.Device(self.device).retain_primary_context()
        except cuda.Error as exc:
            raise DeviceError(f"CUDA cannot open GPU {self.device}: {exc}") from exc
        self._ctx.push()
        self._thread = threading.get_ident()
        return self

    def check_thread(self) -> None:
        """Raise DeviceError when called from a thread other than the one that pushed the context."""
        if self._thread != threading.get_ident():
            raise DeviceError("the TensorRT runner was used from another thread than the one that activated it")

    def pop(self) -> None:
        if self._ctx is None:
            return
        self.check_thread()
        cuda = _driver()
        cuda.Context.pop()
        self._ctx.detach()
        self._ctx = self._thread = None

    def __enter__(self) -> "CudaContext":
        return self.push()

    def __exit__(self, *exc) -> None:
        self.pop()


class Stream:
    """One CUDA stream: every copy and the execution of a runner are queued on it."""

    def __init__(self):
        self._stream = _driver().Stream()

    @property
    def handle(self) -> int:
        return self._stream.handle

    def synchronize(self) -> None:
        self._stream.synchronize()

    @property
    def raw(self):
        return self._stream


class DeviceBuffer:
    """A device allocation of ``shape``/``dtype``, allocated once and reused."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._mem = _driver().mem_alloc(max(self.nbytes, 1))

    @property
    def ptr(self) -> int:
        return int(self._mem)

    def upload(self, array: np.ndarray) -> None:
        """Synchronous copy (calibration, which runs outside the inference stream)."""
        _driver().memcpy_htod(self._mem, np.ascontiguousarray(array))

    def free(self) -> None:
        self._mem.free()


class HostDeviceBuffer:
    """A page-locked host array and a device buffer of the same (maximum) shape, copied asynchronously.

    A batch smaller than the maximum uses the leading part of both.
    """

    def __init__(self, shape, dtype):
        self.host = _driver().pagelocked_empty(tuple(shape), np.dtype(dtype))
        self.device = DeviceBuffer(shape, dtype)

    @property
    def ptr(self) -> int:
        return self.device.ptr

    def to_device(self, array: np.ndarray, stream: Stream) -> None:
        n = array.shape[0]
        self.host[:n] = array
        _driver().memcpy_htod_async(self.device.ptr, self.host[:n], stream.raw)

    def to_host(self, n: int, stream: Stream) -> np.ndarray:
        """Queue the copy of the first ``n`` rows back; valid after ``stream.synchronize()``."""
        _driver().memcpy_dtoh_async(self.host[:n], self.device.ptr, stream.raw)
        return self.host[:n]

    def free(self) -> None:
        self.device.free()
        self.host = None
