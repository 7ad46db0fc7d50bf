"""Model architectures ``train`` can build, each with the preprocessing it expects.

Classifiers end in a softmax; :mod:`edgekit.host.detector` builds detectors on the same backbones.
An architecture's input normalisation is a :class:`~edgekit.preprocess.Preprocess` (scale/mean/std,
colour order), never a layer, so the exported graph takes exactly what the one preprocessing produces.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import ModelError, UsageError
from edgekit.preprocess import Preprocess

WEIGHTS_HOST = ("storage.googleapis.com", 443)


@dataclass(frozen=True)
class Arch:
    """A trainable architecture: its Keras application (if any), input normalisation and smallest input side."""

    name: str
    application: str | None  # keras.applications attribute; None for the small CNN
    color: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    min_size: int = 32

    def check_image_size(self, image_size: int) -> None:
        """UsageError when ``image_size`` is below what this architecture takes."""
        if image_size < self.min_size:
            raise UsageError(f"--image-size must be at least {self.min_size} for {self.name}")

    def preprocess(self, image_size: int) -> Preprocess:
        """The one preprocessing this architecture expects, for square ``image_size`` inputs."""
        return Preprocess(
            size=(image_size, image_size), color=self.color, scale=self.scale, mean=self.mean, std=self.std
        )


ARCHS = {
    a.name: a
    for a in (
        Arch("small", None, "RGB", 1 / 255, (0.0, 0.0, 0.0), min_size=8),
        # keras.applications.mobilenet_v2.preprocess_input: x / 127.5 - 1
        Arch("mobilenetv2", "MobileNetV2", "RGB", 1 / 127.5, (1.0, 1.0, 1.0)),
        # keras.applications.resnet50.preprocess_input ("caffe"): BGR, ImageNet mean subtracted, no scaling
        Arch("resnet50", "ResNet50", "BGR", 1.0, (103.939, 116.779, 123.68)),
        # EfficientNet rescales inside the model: it takes raw 0..255 RGB
        Arch("efficientnetb0", "EfficientNetB0", "RGB", 1.0, (0.0, 0.0, 0.0)),
    )
}


def get_arch(name: str) -> Arch:
    """The architecture called ``name``; UsageError listing the valid ones."""
    if name not in ARCHS:
        raise UsageError(f"unknown arch {name!r}; choose one of: {', '.join(ARCHS)}")
    return ARCHS[name]


def build_model(arch: Arch, image_size: int, n_classes: int, weights: str = "none"):
    """A Keras classifier for ``arch`` on ``image_size`` RGB/BGR images with ``n_classes`` softmax outputs."""
    from edgekit.host import import_tf

    _, keras = import_tf()
    arch.check_image_size(image_size)
    inputs = keras.Input((image_size, image_size, 3), name="input")
    if arch.application is None:
        if weights != "none":
            raise UsageError("the small CNN has no pretrained weights; use --weights none")
        x = inputs
        for i, filters in enumerate((16, 32, 64)):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
            x = keras.layers.ReLU(name=f"relu{i}")(x)
            if i < 2:
                x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        backbone = application_backbone(arch, inputs, weights)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(backbone.output)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"edgekit_{arch.name}")


def application_backbone(arch: Arch, inputs, weights: str = "none"):
    """The Keras application of ``arch`` without its top, on the Keras tensor ``inputs``."""
    from edgekit.host import import_tf

    _, keras = import_tf()
    backbone_weights = _weights(arch, weights)
    try:
        return getattr(keras.applications, arch.application)(
            include_top=False, input_tensor=inputs, weights=backbone_weights
        )
    except Exception as exc:  # Keras raises bare Exception for download failures
        if backbone_weights is None:
            raise
        raise ModelError(f"cannot load {weights} weights for {arch.name}: {exc}") from exc


def _weights(arch: Arch, weights: str):
    """Keras ``weights=`` for an application: None, "imagenet" (cached or reachable) or a file."""
    if weights == "none":
        return None
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"--weights must be none, imagenet or a weights file; {path} does not exist")
        return str(path)
    cache = Path.home() / ".keras" / "models"
    stem = arch.application.lower().replace("v2", "_v2")
    if any(stem in p.name.lower() for p in cache.glob("*")):
        return "imagenet"
    if not _reachable(*WEIGHTS_HOST, timeout=5.0):
        raise ModelError(
            f"cannot download imagenet weights for {arch.name}: {WEIGHTS_HOST[0]} is unreachable "
            f"(offline?); put the weights file in {cache} or pass --weights PATH or --weights none"
        )
    socket.setdefaulttimeout(30)
    return "imagenet"


def _reachable(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to host:port opens within ``timeout`` (DNS included)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)
