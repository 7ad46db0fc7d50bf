"""edgekit: from a TensorFlow/Keras model on a workstation to a camera on an NVIDIA Jetson."""

__version__ = "0.1.0"
