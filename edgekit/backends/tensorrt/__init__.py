"""TensorRT backend: the only package that imports ``tensorrt``, ``pycuda`` or cuda-python, and only lazily."""

from __future__ import annotations
