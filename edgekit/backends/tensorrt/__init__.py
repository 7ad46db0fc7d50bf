"""TensorRT backend: the only package that imports ``tensorrt`` or ``pycuda``, and only lazily."""
