"""Device memory: the context, pinned host buffers, device buffers, one stream; through pycuda or cuda-python.

Two interchangeable layers implement the few driver calls used here: pycuda when it imports, else
cuda-python (``cuda.bindings.driver``, or ``cuda.cuda`` of cuda-python < 12.6, the one with Python 3.8
wheels for JetPack 5), which NVIDIA's own TensorRT samples use. :func:`layer` picks one, once.

The threading trap: a CUDA context is current in one thread only, so an engine built or run from
another thread fails with "invalid device context". :class:`CudaContext` retains the device's primary
context (the one the CUDA runtime, hence TensorRT, uses), pushes it in the thread that calls ``push()``
and pops it there; using it from any other thread raises a clear error instead.
"""

from __future__ import annotations

import ctypes
import threading
import weakref

import numpy as np

from edgekit.errors import DeviceError

INSTALL_HINT = "pip install pycuda (builds against JetPack's CUDA) or pip install cuda-python"


class PyCudaLayer:
    """The driver calls through pycuda (objects free their memory when collected).

    pycuda's ``Context.detach()`` of a context that is not current pushes it, releases the primary
    context and leaves it pushed (``cuda.hpp``: only ``cuCtxDetach`` pops): detaching after every pop
    would leave one context per activation on the thread's driver stack. So each device's primary
    context is retained once per process and only pushed and popped here; the driver releases it at exit.
    """

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as cuda

        self.cuda = cuda
        self.version = _distribution_version("pycuda") or "unknown"
        self.Error = cuda.Error
        self._primary: dict = {}

    def init(self) -> None:
        self.cuda.init()

    def device_count(self) -> int:
        return self.cuda.Device.count()

    def device_info(self, device: int) -> dict:
        dev = self.cuda.Device(device)
        cc_major, cc_minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": f"{cc_major}.{cc_minor}", "memory_mib": dev.total_memory() >> 20,
                "multiprocessors": dev.get_attribute(self.cuda.device_attribute.MULTIPROCESSOR_COUNT)}

    def driver_version(self) -> int:
        return self.cuda.get_driver_version()

    def retain_primary(self, device: int):
        if device not in self._primary:
            self._primary[device] = self.cuda.Device(device).retain_primary_context()
        return self._primary[device]

    def push(self, ctx) -> None:
        ctx.push()

    def pop(self, ctx) -> None:
        self.cuda.Context.pop()

    def free_memory(self) -> int:
        return self.cuda.mem_get_info()[0]

    def stream(self):
        return self.cuda.Stream()

    def stream_destroy(self, stream) -> None:
        pass  # pycuda's Stream destroys itself when collected (in its context)

    def stream_handle(self, stream) -> int:
        return stream.handle

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def mem_alloc(self, nbytes: int):
        return self.cuda.mem_alloc(nbytes)

    def mem_free(self, mem) -> None:
        mem.free()

    def host_empty(self, shape, dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def host_free(self, array) -> None:
        pass  # freed with the array

    def htod(self, ptr: int, array: np.ndarray) -> None:
        self.cuda.memcpy_htod(ptr, array)

    def htod_async(self, ptr: int, array: np.ndarray, stream) -> None:
        self.cuda.memcpy_htod_async(ptr, array, stream)

    def dtoh_async(self, array: np.ndarray, ptr: int, stream) -> None:
        self.cuda.memcpy_dtoh_async(array, ptr, stream)


class CudaPythonError(Exception):
    """A CUresult other than CUDA_SUCCESS, with the driver's name and text for it."""


class CudaPythonLayer:
    """The driver calls through cuda-python: every call returns ``(CUresult, *values)``; memory is freed explicitly."""

    name = "cuda-python"
    Error = CudaPythonError

    def __init__(self):
        try:
            from cuda.bindings import driver
        except ImportError:
            from cuda import cuda as driver  # cuda-python < 12.6 (the 11.x series on JetPack 5)
        self.cu = driver
        self.version = _distribution_version("cuda-bindings") or _distribution_version("cuda-python") or "unknown"

    def _call(self, fn, *args):
        try:
            out = fn(*args)
        except RuntimeError as exc:  # no driver library: cuda.pathfinder's DynamicLibNotFoundError and kin
            raise CudaPythonError(str(exc).strip().splitlines()[0]) from exc
        err, values = out[0], out[1:]
        if int(err) != 0:
            name = getattr(err, "name", str(int(err)))
            try:
                text = self.cu.cuGetErrorString(err)[1]
                name += f": {text.decode() if isinstance(text, bytes) else text}"
            except Exception:  # the code's name says enough
                pass
            raise CudaPythonError(name)
        return values[0] if len(values) == 1 else values

    def init(self) -> None:
        self._call(self.cu.cuInit, 0)

    def device_count(self) -> int:
        return self._call(self.cu.cuDeviceGetCount)

    def device_info(self, device: int) -> dict:
        dev = self._call(self.cu.cuDeviceGet, device)
        name = self._call(self.cu.cuDeviceGetName, 256, dev)
        cc_major, cc_minor, sms = (
            self._call(self.cu.cuDeviceGetAttribute, getattr(self.cu.CUdevice_attribute, f"CU_DEVICE_ATTRIBUTE_{k}"), dev)
            for k in ("COMPUTE_CAPABILITY_MAJOR", "COMPUTE_CAPABILITY_MINOR", "MULTIPROCESSOR_COUNT")
        )
        memory = self._call(self.cu.cuDeviceTotalMem, dev)
        return {"name": name.split(b"\0")[0].decode(), "compute_capability": f"{cc_major}.{cc_minor}",
                "memory_mib": int(memory) >> 20, "multiprocessors": sms}

    def driver_version(self) -> int:
        return self._call(self.cu.cuDriverGetVersion)

    def retain_primary(self, device: int):
        dev = self._call(self.cu.cuDeviceGet, device)
        return dev, self._call(self.cu.cuDevicePrimaryCtxRetain, dev)

    def push(self, ctx) -> None:
        self._call(self.cu.cuCtxPushCurrent, ctx[1])

    def pop(self, ctx) -> None:
        self._call(self.cu.cuCtxPopCurrent)
        self._call(self.cu.cuDevicePrimaryCtxRelease, ctx[0])

    def free_memory(self) -> int:
        return int(self._call(self.cu.cuMemGetInfo)[0])

    def stream(self):
        return self._call(self.cu.cuStreamCreate, 0)

    def stream_destroy(self, stream) -> None:
        self._call(self.cu.cuStreamDestroy, stream)

    def stream_handle(self, stream) -> int:
        return int(stream)

    def synchronize(self, stream) -> None:
        self._call(self.cu.cuStreamSynchronize, stream)

    def mem_alloc(self, nbytes: int):
        return self._call(self.cu.cuMemAlloc, nbytes)

    def mem_free(self, mem) -> None:
        self._call(self.cu.cuMemFree, mem)

    def host_empty(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._call(self.cu.cuMemAllocHost, max(nbytes, 1)))
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def host_free(self, array) -> None:
        self._call(self.cu.cuMemFreeHost, array.ctypes.data)  # the whole array from host_empty: its first byte

    def htod(self, ptr: int, array: np.ndarray) -> None:
        self._call(self.cu.cuMemcpyHtoD, ptr, array.ctypes.data, array.nbytes)

    def htod_async(self, ptr: int, array: np.ndarray, stream) -> None:
        self._call(self.cu.cuMemcpyHtoDAsync, ptr, array.ctypes.data, array.nbytes, stream)

    def dtoh_async(self, array: np.ndarray, ptr: int, stream) -> None:
        self._call(self.cu.cuMemcpyDtoHAsync, array.ctypes.data, ptr, array.nbytes, stream)


def _distribution_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


LAYERS = (PyCudaLayer, CudaPythonLayer)
_LAYER = None
_FAILURES: list = []


def layer():
    """The device-memory layer: pycuda when it imports, else cuda-python; DeviceError naming both when neither does."""
    global _LAYER
    if _LAYER is None:
        _FAILURES.clear()
        for cls in LAYERS:
            try:
                _LAYER = cls()
                break
            except Exception as exc:  # ImportError, or a pycuda built against another CUDA
                _FAILURES.append(f"{cls.name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
        else:
            raise DeviceError(f"neither pycuda nor cuda-python imports ({'; '.join(_FAILURES)}); {INSTALL_HINT}")
    return _LAYER


def layer_name() -> str | None:
    """``"pycuda <version>"``/``"cuda-python <version>"``, or None when neither imports (never raises)."""
    try:
        lay = layer()
    except DeviceError:
        return None
    return f"{lay.name} {lay.version}"


class CudaContext:
    """The primary context of GPU ``device``, current in the thread that pushed it."""

    def __init__(self, device: int = 0):
        self.device = device
        self._ctx = None
        self._thread = None

    def push(self) -> "CudaContext":
        lay = layer()
        try:
            lay.init()
            self._ctx = lay.retain_primary(self.device)
            lay.push(self._ctx)
        except lay.Error as exc:
            raise DeviceError(f"CUDA cannot open GPU {self.device}: {exc}") from exc
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
        layer().pop(self._ctx)
        self._ctx = self._thread = None

    def __enter__(self) -> "CudaContext":
        return self.push()

    def __exit__(self, *exc) -> None:
        self.pop()


def free_memory_mib() -> int | None:
    """The current device's free memory in MiB (a context must be current), or None when the driver won't say."""
    try:
        return layer().free_memory() >> 20
    except Exception:  # only sizes the builder's workspace: TensorRT's default then
        return None


def _release(free, handle) -> None:
    """A finalizer's body: free ``handle``, quietly (at collection the context may be gone already)."""
    try:
        free(handle)
    except Exception:
        pass


class Stream:
    """One CUDA stream: every copy and the execution of a runner are queued on it.

    Its owner calls :meth:`free` (with the context current); a collected Stream is destroyed too.
    """

    def __init__(self):
        lay = layer()
        self._stream = lay.stream()
        self._finalizer = weakref.finalize(self, _release, lay.stream_destroy, self._stream)

    def free(self) -> None:
        if self._finalizer.alive:
            self._finalizer.detach()
            layer().stream_destroy(self._stream)

    @property
    def handle(self) -> int:
        return layer().stream_handle(self._stream)

    def synchronize(self) -> None:
        layer().synchronize(self._stream)

    @property
    def raw(self):
        return self._stream


class DeviceBuffer:
    """A device allocation of ``shape``/``dtype``, allocated once and reused.

    Its owner calls :meth:`free` (with the context current); a collected buffer is freed too.
    """

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        lay = layer()
        self._mem = lay.mem_alloc(max(self.nbytes, 1))
        self._finalizer = weakref.finalize(self, _release, lay.mem_free, self._mem)

    @property
    def ptr(self) -> int:
        return int(self._mem)

    def upload(self, array: np.ndarray) -> None:
        """Synchronous copy (calibration, which runs outside the inference stream)."""
        layer().htod(self.ptr, np.ascontiguousarray(array))

    def free(self) -> None:
        if self._finalizer.alive:
            self._finalizer.detach()
            layer().mem_free(self._mem)
        self._mem = None


class HostDeviceBuffer:
    """A page-locked host array and a device buffer of the same (maximum) shape, copied asynchronously.

    A batch smaller than the maximum uses the leading part of both.
    """

    def __init__(self, shape, dtype):
        lay = layer()
        self.host = lay.host_empty(tuple(shape), np.dtype(dtype))
        self._host_finalizer = weakref.finalize(self, _release, lay.host_free, self.host)
        self.device = DeviceBuffer(shape, dtype)

    @property
    def ptr(self) -> int:
        return self.device.ptr

    def to_device(self, array: np.ndarray, stream: Stream) -> None:
        n = array.shape[0]
        self.host[:n] = array
        layer().htod_async(self.device.ptr, self.host[:n], stream.raw)

    def to_host(self, n: int, stream: Stream) -> np.ndarray:
        """Queue the copy of the first ``n`` rows back; valid after ``stream.synchronize()``."""
        layer().dtoh_async(self.host[:n], self.device.ptr, stream.raw)
        return self.host[:n]

    def free(self) -> None:
        self.device.free()
        if self._host_finalizer.alive:
            self._host_finalizer.detach()
            layer().host_free(self.host)
        self.host = None
