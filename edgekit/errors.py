"""Errors a user can cause. The CLI prints their message as one line and exits with their code."""

from __future__ import annotations


class EdgekitError(Exception):
    """A failure with a message meant for the user, not a traceback."""

    exit_code = 1


class UsageError(EdgekitError):
    """A bad option or argument combination."""

    exit_code = 2


class InputError(EdgekitError):
    """A missing, empty, unreadable or wrong-kind input file or folder."""


class BundleError(EdgekitError):
    """A bundle that is missing, corrupt, or lacks what was asked of it."""


class ModelError(EdgekitError):
    """A model file that cannot be loaded, converted or run."""


class UnsupportedOpError(EdgekitError):
    """The target TensorRT cannot run an operator of the graph."""


class DeviceError(EdgekitError):
    """The device lacks what was asked: TensorRT, a GPU, a precision, DLA, a camera."""


class GateError(EdgekitError):
    """A quantized or reduced-precision model failed the accuracy gate."""

    exit_code = 3


def some(items, n: int = 8) -> str:
    """The first ``n`` of ``items``, comma-separated, with the count when there are more: ``a, b, … (20 in all)``."""
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (f", … ({len(items)} in all)" if len(items) > n else "")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``exc``'s message (at most ``limit`` characters), else its type name."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
