"""edgekit: from a TensorFlow/Keras model on a workstation to a camera on an NVIDIA Jetson."""

from __future__ import annotations

__version__ = "0.1.0"
