"""The infer and demux stages: one runner call per batch, its outputs split back per frame.

A runner takes the whole batch when its model's batch is dynamic (ONNX Runtime; TensorRT within its
optimization profile); a model with a fixed batch, or an engine whose profile is smaller than the
batch, is called on slices the size it takes. :func:`engine_profile` is the profile an engine is
built with for a run of N sources: min 1 (a batch with sources missing still runs), opt = max = N.
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import ModelError


def engine_profile(sources: int, input_shape) -> tuple[int, int, int] | None:
    """The (min, opt, max) batch for ``sources`` sources, or None when the model's batch is fixed
    (then the engine's own fixed batch is used and the batch is inferred in slices)."""
    fixed = input_shape[0] if input_shape else None
    if isinstance(fixed, int) and fixed > 0:
        return None
    n = max(1, int(sources))
    return (1, n, n)


def batch_limit(runner) -> int | None:
    """The most frames ``runner`` takes per call (None: any number, or it does not say). Call after activation."""
    spec = getattr(runner, "input_spec", None)
    first = spec.shape[0] if spec is not None and spec.shape else None
    if isinstance(first, int) and first > 0:
        return first
    return getattr(runner, "max_batch", None) or None


def infer_batch(runner, tensor: np.ndarray, limit: int | None = None) -> dict[str, np.ndarray]:
    """The runner's outputs for the whole batch ``tensor``: one call, or one per ``limit`` frames."""
    n = tensor.shape[0]
    if limit is None or n <= limit:
        return runner.infer(tensor)
    parts = [runner.infer(tensor[i:i + limit]) for i in range(0, n, limit)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def demux(outputs: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """Per-frame outputs (each a batch of one, as postprocessors take them) from a batch of ``n``."""
    if n == 1:
        return [outputs]
    for name, value in outputs.items():
        if np.ndim(value) == 0 or len(value) != n:
            raise ModelError(f"output {name!r} has shape {np.shape(value)}, not a batch of {n}")
    return [{name: value[i:i + 1] for name, value in outputs.items()} for i in range(n)]
