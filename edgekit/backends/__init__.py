"""Inference backends: a runner per backend, one interface (see :mod:`edgekit.backends.base`)."""

from __future__ import annotations
