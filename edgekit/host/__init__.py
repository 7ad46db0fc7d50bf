"""Workstation side: train a Keras classifier and export it to a bundle. The only place TensorFlow is imported."""

from __future__ import annotations

import os

from edgekit.errors import EdgekitError


def import_tf():
    """Import TensorFlow and Keras quietly; a clear error when the ``host`` extra is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import keras
        import tensorflow as tf
    except ImportError as exc:
        raise EdgekitError(f"TensorFlow is not installed ({exc}); install edgekit[host]") from exc
    tf.get_logger().setLevel("ERROR")
    return tf, keras
