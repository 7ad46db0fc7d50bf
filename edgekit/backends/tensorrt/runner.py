"""TensorRT runner: named-tensor I/O (TensorRT 8.5 -> 11), buffers allocated once, one stream.

``activate()`` makes the CUDA context current in the calling thread, loads the engine from the cache
(building it on first use), and allocates page-locked host and device buffers for the profile's
largest batch. ``infer()`` must be called from that same thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgekit.backends.base import Runner, TensorSpec
from edgekit.backends.tensorrt.recipe import BuildOptions
from edgekit.bundle import Bundle
from edgekit.errors import DeviceError, ModelError

log = logging.getLogger(__name__)

_NUMPY_TYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


def numpy_dtype(trt_dtype) -> np.dtype:
    """numpy dtype of a ``trt.DataType`` (matched by member name, so no TensorRT import is needed)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _NUMPY_TYPES:
        raise ModelError(f"edgekit cannot exchange {name} tensors with TensorRT; export the model with float32 I/O")
    return np.dtype(_NUMPY_TYPES[name])


class TensorRTRunner(Runner):
    """Runs a bundle's engine on GPU ``options.device``; options are those of :class:`BuildOptions`."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, options: BuildOptions):
        super().__init__()
        self.bundle, self.options, self.device = bundle, options, options.device
        self.plan_path: Path | None = None
        self._reset()

    @classmethod
    def from_bundle(cls, bundle: Bundle, precision: str = "fp32", **options) -> "TensorRTRunner":
        """A runner for ``bundle`` at ``precision`` (concrete: the caller chose it); ``options`` are
        :class:`BuildOptions` fields (``device`` too)."""
        return cls(bundle, BuildOptions(precision=precision, **options))

    def _reset(self) -> None:
        self.context = self.engine = self.stream = self.cuda_context = None  # the execution context before its engine
        self.buffers: dict = {}
        self.specs: dict[str, TensorSpec] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.max_batch = self.min_batch = 0

    def activate_impl(self) -> None:
        import tensorrt as trt

        from edgekit.backends.tensorrt import cuda
        from edgekit.backends.tensorrt.builder import load_engine

        self.cuda_context = cuda.CudaContext(self.device).push()
        try:
            self.engine, self.plan_path, _ = load_engine(self.bundle, self.options)
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise DeviceError("TensorRT cannot create an execution context (out of GPU memory?)")
            self.stream = cuda.Stream()
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                (self.inputs if is_input else self.outputs).append(name)
            if len(self.inputs) != 1:
                raise ModelError(f"the engine has {len(self.inputs)} inputs; edgekit needs one")
            inp = self.inputs[0]
            lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(inp, 0))
            self.min_batch, self.max_batch = lo[0], hi[0]
            self.context.set_input_shape(inp, hi)
            for name in self.inputs + self.outputs:
                shape = hi if name == inp else tuple(self.context.get_tensor_shape(name))
                buf = cuda.HostDeviceBuffer(shape, numpy_dtype(self.engine.get_tensor_dtype(name)))
                self.buffers[name] = buf
                self.context.set_tensor_address(name, buf.ptr)
            self.specs = {name: self._spec(name) for name in self.inputs + self.outputs}  # once, not per inference
        except BaseException:
            self.deactivate_impl()
            raise

    def deactivate_impl(self) -> None:
        for buf in self.buffers.values():
            buf.free()
        if self.stream is not None:
            self.stream.free()
        ctx = self.cuda_context
        self._reset()  # drop the TensorRT objects while the context is still current
        if ctx is not None:
            ctx.pop()

    def _spec(self, name: str) -> TensorSpec:
        shape = tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(name))
        return TensorSpec(name, shape, numpy_dtype(self.engine.get_tensor_dtype(name)))

    @property
    def input_spec(self) -> TensorSpec:
        return self.specs[self.inputs[0]]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [self.specs[n] for n in self.outputs]

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.cuda_context.check_thread()
        n = batch.shape[0]
        if not self.min_batch <= n <= self.max_batch:
            if self.min_batch == self.max_batch:
                raise ModelError(f"the engine's batch is fixed at {self.max_batch} (static profile); got {n}")
            raise ModelError(
                f"batch of {n} is outside the engine's profile ({self.min_batch}..{self.max_batch}); rebuild with --batch"
            )
        inp = self.inputs[0]
        self.context.set_input_shape(inp, batch.shape)
        self.buffers[inp].to_device(batch, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise DeviceError("TensorRT failed to run the engine")
        views = {name: self.buffers[name].to_host(n, self.stream) for name in self.outputs}
        self.stream.synchronize()
        return {
            name: view.reshape(tuple(self.context.get_tensor_shape(name))).copy() for name, view in views.items()
        }
