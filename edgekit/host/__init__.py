"""Workstation side: train a Keras classifier and export it to a bundle. The only place TensorFlow is imported."""

from __future__ import annotations

import contextlib
import os
import sys

from edgekit.errors import EdgekitError


@contextlib.contextmanager
def _silenced_stderr_fd():
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up logs ignore TF_CPP_MIN_LOG_LEVEL."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tf():
    """Import TensorFlow and Keras quietly; a clear error when the ``host`` extra is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        with _silenced_stderr_fd():
            import keras
            import tensorflow as tf

            tf.config.list_physical_devices()  # CUDA probing logs its failure on machines without a GPU
    except ImportError as exc:
        raise EdgekitError(f"TensorFlow is not installed ({exc}); install edgekit[host]") from exc
    tf.get_logger().setLevel("ERROR")
    return tf, keras
