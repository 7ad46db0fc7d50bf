"""ONNX-only graph work: chainable passes, TensorRT targets and the op-support check (no TensorFlow)."""

from __future__ import annotations
