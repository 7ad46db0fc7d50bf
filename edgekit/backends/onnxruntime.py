"""ONNX Runtime backend: the CPU twin of every device step (and CUDA/TensorRT providers where present)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekit.backends.base import Runner, TensorSpec
from edgekit.errors import ModelError, first_line

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(_ORT_TYPES.get(arg.type, np.float32)))


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OnnxRuntimeRunner(Runner):
    """Runs one ONNX file with ONNX Runtime.

    ``providers`` defaults to the CPU; ``intra_op_threads``/``inter_op_threads`` of 0 let ONNX
    Runtime choose.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
    ):
        super().__init__()
        self.model_path = Path(model_path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.session = None

    def activate_impl(self) -> None:
        import onnxruntime as ort

        if not self.model_path.is_file():
            raise ModelError(f"model {self.model_path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=self.providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt models
            raise ModelError(f"ONNX Runtime cannot load {self.model_path}: {first_line(exc)}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.model_path} has {len(inputs)} inputs; edgekit needs one")
        self._input = _spec(inputs[0])  # fixed while active: derived once, not per inference
        self._outputs = [_spec(o) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    def deactivate_impl(self) -> None:
        self.session = None

    @property
    def input_spec(self) -> TensorSpec:
        return self._input

    @property
    def output_specs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def active_provider(self) -> str:
        return self.session.get_providers()[0]

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = self._output_names
        try:
            outputs = self.session.run(names, {self._input.name: batch})
        except Exception as exc:
            raise ModelError(f"ONNX Runtime failed on {self.model_path.name}: {first_line(exc)}") from exc
        return dict(zip(names, outputs))
