"""The runner interface every backend implements (the shape of Polygraphy's runners).

A runner is a context manager: ``activate()`` loads what it needs, ``infer(batch)`` maps an input
batch to named outputs, ``deactivate()`` releases everything. Runners are not thread-safe: use one
from the thread that activated it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from edgekit.errors import EdgekitError, ModelError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dimension) and numpy dtype of one model input or output."""

    name: str
    shape: tuple
    dtype: np.dtype


class Runner(abc.ABC):
    """Base class: activation bookkeeping, input checking and the context-manager protocol."""

    name = "runner"
    choice = None  # the select.Choice that picked the model, when open_runner made the runner

    def __init__(self):
        self.is_active = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def activate(self) -> None:
        if self.is_active:
            raise EdgekitError(f"{self.name} runner is already active")
        self.activate_impl()
        self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.is_active = False
            self.deactivate_impl()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch (N, ...) through the model; outputs by name, in the model's order."""
        if not self.is_active:
            raise EdgekitError(f"{self.name} runner used before activate()")
        return self.infer_impl(self.check_input(batch))

    def check_input(self, batch: np.ndarray) -> np.ndarray:
        """Raise ModelError when ``batch`` does not fit the model's input shape and dtype."""
        spec = self.input_spec
        batch = np.asarray(batch)
        if batch.dtype != spec.dtype:
            raise ModelError(f"input {spec.name!r} needs dtype {spec.dtype}, got {batch.dtype}")
        if batch.ndim != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape, batch.shape)
        ):
            want = "x".join("?" if d is None else str(d) for d in spec.shape)
            got = "x".join(str(d) for d in batch.shape)
            raise ModelError(f"input {spec.name!r} needs shape {want}, got {got}")
        return np.ascontiguousarray(batch)

    @property
    @abc.abstractmethod
    def input_spec(self) -> TensorSpec:
        """The model's (single) input."""

    @property
    @abc.abstractmethod
    def output_specs(self) -> list[TensorSpec]:
        """The model's outputs, in order."""

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...
