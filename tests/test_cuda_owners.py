"""Streams, device and pinned buffers and contexts have owners that free them: counted on the CPU through
FAKE driver modules (no GPU here), one per layer.

``FakeDriver`` answers cuda-python's calls (``(CUresult, value)`` tuples) and counts them. ``FakePyCuda``
mimics pycuda's context stack as its ``cuda.hpp`` implements it: ``Context.pop()`` pops the driver's
stack, and ``detach()`` of a context that is not current pushes it, releases the primary context and
does not pop. The real check is `edgekit doctor --selftest` on a Jetson, watched with tegrastats.
"""

from __future__ import annotations

import ctypes
import gc
import threading
from collections import Counter

import numpy as np
import pytest

from edgekit.backends.tensorrt import cuda, probe


class FakeDriver:
    """FAKE cuda-python driver module: every call succeeds and is counted; pinned memory is real bytes."""

    def __init__(self):
        self.calls = Counter()
        self.stack: list = []
        self.freed_without_context = 0
        self.host: dict = {}
        self.next = 1000

    def _handle(self) -> int:
        self.next += 16
        return self.next

    def __getattr__(self, name):
        if not name.startswith("cu"):
            raise AttributeError(name)

        def call(*args):
            self.calls[name] += 1
            if name in ("cuStreamDestroy", "cuMemFree", "cuMemFreeHost") and not self.stack:
                self.freed_without_context += 1
            if name == "cuCtxPushCurrent":
                self.stack.append(args[0])
            elif name == "cuCtxPopCurrent":
                return 0, self.stack.pop()
            elif name == "cuMemAllocHost":
                raw = ctypes.create_string_buffer(int(args[0]))
                self.host[ctypes.addressof(raw)] = raw
                return 0, ctypes.addressof(raw)
            elif name == "cuMemFreeHost":
                self.host.pop(int(args[0]))
            elif name == "cuMemGetInfo":
                return 0, 4 << 30, 8 << 30
            return (0, self._handle()) if name in ("cuStreamCreate", "cuMemAlloc", "cuDevicePrimaryCtxRetain") else (0, 0)

        return call


@pytest.fixture
def driver(monkeypatch):
    fake = FakeDriver()
    lay = object.__new__(cuda.CudaPythonLayer)  # the real layer over the FAKE module
    lay.cu, lay.version = fake, "FAKE"
    monkeypatch.setattr(cuda, "_LAYER", lay)
    return fake


def _activate():
    """What TensorRTRunner.activate_impl allocates, without TensorRT: context, stream, two I/O buffers."""
    from edgekit.backends.tensorrt.recipe import BuildOptions
    from edgekit.backends.tensorrt.runner import TensorRTRunner

    runner = TensorRTRunner(None, BuildOptions())
    runner.cuda_context = cuda.CudaContext(0).push()
    runner.stream = cuda.Stream()
    runner.buffers = {"input": cuda.HostDeviceBuffer((2, 3), np.float32),
                      "probs": cuda.HostDeviceBuffer((2, 5), np.float32)}
    return runner


def test_runner_deactivation_frees_what_activation_allocated(driver):
    for _ in range(3):
        runner = _activate()
        runner.deactivate_impl()
    c = driver.calls
    assert c["cuStreamCreate"] == c["cuStreamDestroy"] == 3
    assert c["cuMemAlloc"] == c["cuMemFree"] == 6 and c["cuMemAllocHost"] == c["cuMemFreeHost"] == 6
    assert c["cuDevicePrimaryCtxRetain"] == c["cuDevicePrimaryCtxRelease"] == 3
    assert driver.stack == [] and driver.host == {} and driver.freed_without_context == 0
    gc.collect()  # the finalizers of freed objects do not free twice
    assert c["cuMemFree"] == 6 and c["cuStreamDestroy"] == 3


def test_a_dropped_buffer_or_stream_is_freed_by_its_finalizer(driver):
    buffer, stream = cuda.DeviceBuffer((4, 4), np.float32), cuda.Stream()
    del buffer, stream
    gc.collect()
    assert driver.calls["cuMemFree"] == 1 and driver.calls["cuStreamDestroy"] == 1
    kept = cuda.DeviceBuffer((2,), np.float32)
    kept.free()
    kept.free()
    del kept
    gc.collect()
    assert driver.calls["cuMemFree"] == 2
    assert cuda.free_memory_mib() == 4096


class FakePyCuda:
    """FAKE ``pycuda.driver``: the thread's driver context stack and pycuda's own, as cuda.hpp keeps them."""

    def __init__(self):
        self.driver_stack: list = []
        self.pycuda_stack: list = []
        self.retained = 0
        fake = self

        class Context:
            def __init__(self):
                self.valid, self.thread = True, threading.get_ident()

            def push(self):
                if fake.pycuda_stack:
                    fake.driver_stack.pop()
                fake.driver_stack.append(self)
                fake.pycuda_stack.append(self)

            @staticmethod
            def pop():
                if fake.pycuda_stack:
                    fake.driver_stack.pop()
                fake.pycuda_stack.pop()
                if fake.pycuda_stack:
                    fake.driver_stack.append(fake.pycuda_stack[-1])

            def detach(self):
                active = bool(fake.pycuda_stack) and fake.pycuda_stack[-1] is self
                if not active:
                    fake.driver_stack.append(self)  # cuCtxPushCurrent; the primary release does not pop
                fake.retained -= 1
                self.valid = False
                if active:
                    fake.pycuda_stack.pop()

        class Device:
            def __init__(self, index):
                self.index = index

            def retain_primary_context(self):
                fake.retained += 1
                return Context()

        self.Context, self.Device = Context, Device


def test_pycuda_activations_leave_the_thread_context_stack_as_they_found_it(monkeypatch):
    fake = FakePyCuda()
    lay = object.__new__(cuda.PyCudaLayer)  # the real layer over the FAKE module
    lay.cuda, lay.version, lay.Error, lay._primary = fake, "FAKE", RuntimeError, {}
    lay.init = lambda: None
    monkeypatch.setattr(cuda, "_LAYER", lay)
    for _ in range(3):
        ctx = cuda.CudaContext(0).push()
        assert len(fake.driver_stack) == 1
        ctx.pop()
    assert fake.driver_stack == [] and fake.pycuda_stack == []
    assert fake.retained == 1  # the primary context, retained once per process


@pytest.mark.gpu
@pytest.mark.skipif(not probe.gpu_present(), reason="needs an NVIDIA GPU and pycuda or cuda-python (none here)")
def test_real_layer_leaves_no_context_current_after_activations():
    for _ in range(5):
        ctx = cuda.CudaContext(0).push()
        stream = cuda.Stream()
        buffer = cuda.HostDeviceBuffer((4, 4), np.float32)
        buffer.free()
        stream.free()
        ctx.pop()
    lay = cuda.layer()
    if lay.name == "pycuda":
        assert lay.cuda.Context.get_current() is None
    else:
        assert int(lay._call(lay.cu.cuCtxGetCurrent)) == 0
