"""Inference backends: a runner per backend, one interface (see :mod:`edgekit.backends.base`)."""
