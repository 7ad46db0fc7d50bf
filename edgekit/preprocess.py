"""The one preprocessing: a frame (uint8 BGR, as OpenCV gives it) to the model's input tensor.

Training, calibration, validation and the runtime loop all call :class:`Preprocess`, built from the
bundle manifest, so a model never sees data prepared differently from what it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgekit.errors import BundleError, UsageError

RESIZE_MODES = ("stretch", "letterbox", "center_crop")
COLOR_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
LETTERBOX_FILL = 114
MAX_SIDE = 8192  # pixels: a larger model input is a corrupt manifest, not a model

# What --preprocess names: colour order, scale, mean, std (``y = (x * scale - mean) / std``).
MODES = {
    "raw": ("RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # 0..255: the model scales its own input
    "unit": ("RGB", 1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0, 1]
    "symmetric": ("RGB", 1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),  # [-1, 1] (Keras "tf" mode)
    "caffe": ("BGR", 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),  # BGR, ImageNet mean subtracted
    "torch": ("RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet mean/std
}
# keras.applications modules (and edgekit's arch names) -> the mode their preprocess_input applies.
FAMILIES = {
    **dict.fromkeys(("resnet", "resnet50", "vgg16", "vgg19"), "caffe"),
    **dict.fromkeys(("mobilenet", "mobilenet_v2", "mobilenetv2", "inception_v3", "inception_resnet_v2",
                     "xception", "nasnet", "resnet_v2"), "symmetric"),
    "densenet": "torch",
    **dict.fromkeys(("efficientnet", "efficientnetb0", "efficientnet_v2", "convnext", "mobilenet_v3", "regnet",
                     "resnet_rs"), "raw"),
    "small": "unit",
}
SPEC_HELP = "raw, unit, symmetric, caffe, torch, or scale=S,mean=M1/M2/M3,std=S1/S2/S3,order=rgb|bgr"


def named(spec: str) -> dict:
    """A ``--preprocess`` value as Preprocess fields (no size): a mode of MODES, a keras.applications family
    of FAMILIES, or ``scale=…,mean=…,std=…,order=rgb|bgr`` (a mean/std is one number or three split by
    ``/``; ``scale`` may be a fraction ``1/255``). UsageError names what is wrong."""
    spec = spec.strip()
    mode = FAMILIES.get(spec.lower(), spec.lower())
    if mode in MODES:
        color, scale, mean, std = MODES[mode]
        return {"color": color, "scale": scale, "mean": list(mean), "std": list(std)}
    if "=" not in spec:
        raise UsageError(f"unknown preprocessing {spec!r}; give {SPEC_HELP}, or a family ({', '.join(FAMILIES)})")
    fields = {"color": "RGB", "scale": 1.0, "mean": [0.0] * 3, "std": [1.0] * 3}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        try:
            if key == "order":
                if value.strip().upper() not in COLOR_ORDERS:
                    raise ValueError
                fields["color"] = value.strip().upper()
            elif key == "scale":
                fields["scale"] = _number(value)
            elif key in ("mean", "std"):
                values = [_number(v) for v in value.split("/")]
                if len(values) not in (1, 3):
                    raise ValueError
                fields[key] = values * 3 if len(values) == 1 else values
            else:
                raise UsageError(f"unknown preprocessing field {key!r} in {spec!r}; give {SPEC_HELP}")
        except ValueError:
            raise UsageError(f"bad preprocessing {part!r} in {spec!r}; give {SPEC_HELP}") from None
    return fields


def _number(text: str) -> float:
    top, _, bottom = text.strip().partition("/")
    return float(top) / float(bottom) if bottom else float(top)


@dataclass(frozen=True)
class Preprocess:
    """``y = (resize(frame) * scale - mean) / std`` in the model's colour order and layout."""

    size: tuple[int, int]  # (height, width)
    resize: str = "stretch"
    color: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    _affine: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        h, w = (int(v) for v in self.size)
        if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            raise BundleError(f"preprocess size must be 1 to {MAX_SIDE} pixels a side, got {list(self.size)}")
        for name, value, allowed in (
            ("resize", self.resize, RESIZE_MODES),
            ("color", self.color, COLOR_ORDERS),
            ("layout", self.layout, LAYOUTS),
        ):
            if value not in allowed:
                raise BundleError(f"preprocess {name} must be one of {', '.join(allowed)}, got {value!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise BundleError("preprocess mean and std need 3 values each, std non-zero")
        values = (self.scale, *self.mean, *self.std)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values):
            raise BundleError(f"preprocess scale, mean and std must be finite numbers, got scale {self.scale!r}, "
                              f"mean {list(self.mean)}, std {list(self.std)}")
        object.__setattr__(self, "size", (h, w))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        gain = np.float32(self.scale) / np.asarray(self.std, np.float32)
        bias = -np.asarray(self.mean, np.float32) / np.asarray(self.std, np.float32)
        object.__setattr__(self, "_affine", (gain, bias))

    @classmethod
    def from_dict(cls, spec: dict) -> "Preprocess":
        try:
            return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()})
        except (TypeError, ValueError) as exc:  # unknown keys, wrong counts, non-numbers
            raise BundleError(f"bad preprocess spec in manifest: {exc}") from exc

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("_affine")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def resized(self, frame: np.ndarray) -> np.ndarray:
        """Resize a uint8 BGR frame to the model size as ``resize`` says (still uint8 BGR)."""
        import cv2

        h, w = self.size
        fh, fw = frame.shape[:2]
        if (fh, fw) == (h, w):
            return frame
        if self.resize == "stretch":
            return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if fh > h else cv2.INTER_LINEAR)
        if self.resize == "center_crop":
            r = max(h / fh, w / fw)
            nh, nw = max(h, round(fh * r)), max(w, round(fw * r))
            big = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
            y, x = (nh - h) // 2, (nw - w) // 2
            return big[y : y + h, x : x + w]
        r = min(h / fh, w / fw)
        nh, nw = max(1, round(fh * r)), max(1, round(fw * r))
        small = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
        out = np.full((h, w, 3), LETTERBOX_FILL, np.uint8)
        y, x = (h - nh) // 2, (w - nw) // 2
        out[y : y + nh, x : x + nw] = small
        return out

    def geometry(self, frame_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """``(sx, sy, dx, dy)`` with model-input pixel = frame pixel * s + d, as :meth:`resized` maps a
        frame of ``frame_size`` (height, width)."""
        h, w = self.size
        fh, fw = frame_size
        if (fh, fw) == (h, w) or self.resize == "stretch":
            return w / fw, h / fh, 0.0, 0.0
        if self.resize == "center_crop":
            r = max(h / fh, w / fw)
            nh, nw = max(h, round(fh * r)), max(w, round(fw * r))
            return nw / fw, nh / fh, -float((nw - w) // 2), -float((nh - h) // 2)
        r = min(h / fh, w / fw)
        nh, nw = max(1, round(fh * r)), max(1, round(fw * r))
        return nw / fw, nh / fh, float((w - nw) // 2), float((h - nh) // 2)

    def boxes_to_input(self, boxes: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
        """Frame-pixel corners ``[k, 4]`` -> corners normalised to the model input (what detectors output)."""
        sx, sy, dx, dy = self.geometry(frame_size)
        h, w = self.size
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return ((boxes * (sx, sy, sx, sy) + (dx, dy, dx, dy)) / (w, h, w, h)).astype(np.float32)

    def boxes_to_frame(self, boxes: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
        """Corners normalised to the model input ``[k, 4]`` -> frame pixels (letterbox/crop/stretch
        undone), clipped to the frame."""
        sx, sy, dx, dy = self.geometry(frame_size)
        h, w = self.size
        fh, fw = frame_size
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * (w, h, w, h)
        out = (boxes - (dx, dy, dx, dy)) / (sx, sy, sx, sy)
        return np.clip(out, 0, (fw, fh, fw, fh))

    def hwc(self, frame: np.ndarray) -> np.ndarray:
        """Resized, colour-ordered, normalised float32 HxWx3 image (the layout Keras trains on)."""
        img = self.resized(frame)
        if self.color == "RGB":
            img = img[..., ::-1]
        gain, bias = self._affine
        return img.astype(np.float32) * gain + bias

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One frame to one input tensor (no batch axis) in the model's layout."""
        if self.layout == "NHWC":
            return self.hwc(frame)
        img = self.resized(frame)
        gain, bias = self._affine
        out = np.empty((3, *self.size), np.float32)
        for c, src in enumerate((2, 1, 0) if self.color == "RGB" else (0, 1, 2)):
            np.multiply(img[..., src], gain[c], out=out[c], dtype=np.float32)  # planes straight into CHW
            out[c] += bias[c]
        return out

    def batch(self, frames) -> np.ndarray:
        """Several frames to one batched input tensor."""
        return np.stack([self(f) for f in frames])
