"""A single-stage, anchor-free object detector in Keras (an FCOS-style grid), its targets and losses.

Every location of a stride-``s`` feature grid predicts class probabilities and the distances from
its centre to the four sides of a box. The model ends in the outputs every detection bundle keeps:

* ``boxes``  float32 ``[B, N, 4]``: corners ``(x1, y1, x2, y2)`` normalised to [0, 1] of the model input,
  decoded inside the graph (softplus distances, times the stride, around constant cell centres);
* ``scores`` float32 ``[B, N, C]``: sigmoid class probabilities,

with ``N = (H / s) * (W / s)``. Only Conv, Relu, Softplus, Sigmoid, Reshape, Mul and Add: tf2onnx
converts them plainly and TensorRT runs all of it; NMS is appended at export (EfficientNMS_TRT), never
here. Target assignment (:func:`assign_targets`) and the losses are used only in training.

Call :func:`decode_boxes_layer` before loading a saved detector: it registers the box-decoding layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from edgekit.errors import ModelError, UsageError

OUTPUTS = ("boxes", "scores")
SMALL_STRIDE = 8  # the small CNN; Keras applications use their stride-16 features
APPLICATION_STRIDE = 16
CENTER_RADIUS = 2.5  # positives: cells inside a box and within this many strides of its centre
PRIOR = 0.01  # initial foreground probability (focal-loss bias initialisation)


@dataclass(frozen=True)
class Grid:
    """The output grid of a detector: ``rows`` x ``cols`` cells of ``stride`` pixels on a ``size`` input."""

    size: tuple[int, int]  # model input (height, width)
    stride: int

    @property
    def rows(self) -> int:
        return -(-self.size[0] // self.stride)

    @property
    def cols(self) -> int:
        return -(-self.size[1] // self.stride)

    @property
    def n(self) -> int:
        return self.rows * self.cols

    def centers(self) -> np.ndarray:
        """Cell centres ``[N, 2]`` as (x, y) normalised to the input, row-major like the outputs."""
        h, w = self.size
        ys, xs = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        return np.stack([(xs.ravel() + 0.5) * self.stride / w, (ys.ravel() + 0.5) * self.stride / h], 1).astype(np.float32)


def stride_for(arch) -> int:
    """The output stride of ``arch`` (an :class:`~edgekit.host.archs.Arch`)."""
    return SMALL_STRIDE if arch.application is None else APPLICATION_STRIDE


def check_image_size(arch, image_size: int) -> None:
    """UsageError unless ``image_size`` suits ``arch`` as a detector (a multiple of its stride, 2 cells at least)."""
    arch.check_image_size(image_size)
    stride = stride_for(arch)
    if image_size % stride or image_size < 2 * stride:
        raise UsageError(f"--image-size for a {arch.name} detector must be a multiple of {stride}, at least {2 * stride}")


@functools.lru_cache(maxsize=None)
def decode_boxes_layer():
    """The box-decoding Keras layer class, registered with Keras (call before loading a saved detector)."""
    from edgekit.host import import_tf

    _, keras = import_tf()
    ops = keras.ops

    @keras.saving.register_keras_serializable(package="edgekit")
    class DecodeBoxes(keras.layers.Layer):
        """Raw ``[B, rows, cols, 4]`` regressions -> ``[B, N, 4]`` normalised corners.

        ``softplus(raw) * stride`` are the pixel distances (left, top, right, bottom) from each cell's
        centre; the centres and scales are constants of the graph.
        """

        def __init__(self, size, stride, **kwargs):
            super().__init__(**kwargs)
            self.size, self.stride = (int(size[0]), int(size[1])), int(stride)
            grid = Grid(self.size, self.stride)
            self._n = grid.n
            self._centers = np.tile(grid.centers(), (1, 2))  # [N, 4]: cx, cy, cx, cy
            h, w = self.size
            self._scale = np.array([-stride / w, -stride / h, stride / w, stride / h], np.float32)

        def call(self, raw):
            flat = ops.reshape(raw, (-1, self._n, 4))
            return ops.softplus(flat) * self._scale + self._centers

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self._n, 4)

        def get_config(self):
            return {**super().get_config(), "size": list(self.size), "stride": self.stride}

    return DecodeBoxes


def build_detector(arch, image_size: int, n_classes: int, weights: str = "none"):
    """A Keras detector for ``arch`` (an :class:`~edgekit.host.archs.Arch`) on square ``image_size`` inputs.

    The small CNN is built here (stride 8); a Keras application contributes its last stride-16
    feature map, with ``weights`` as for classification.
    """
    from edgekit.host import import_tf
    from edgekit.host.archs import application_backbone

    _, keras = import_tf()
    L = keras.layers
    check_image_size(arch, image_size)
    if n_classes < 1:
        raise UsageError("a detector needs at least one class")
    stride = stride_for(arch)
    inputs = keras.Input((image_size, image_size, 3), name="input")

    def conv(x, filters, name, strides=1, dilation=1):
        x = L.Conv2D(filters, 3, strides=strides, dilation_rate=dilation, padding="same", use_bias=False,
                     name=f"{name}_conv")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x)

    if arch.application is None:
        if weights != "none":
            raise UsageError("the small CNN has no pretrained weights; use --weights none")
        x = conv(inputs, 16, "stem", strides=2)
        x = conv(x, 32, "down1", strides=2)
        x = conv(x, 32, "block1")
        x = conv(x, 64, "down2", strides=2)
        x = conv(x, 64, "block2")
        features = conv(x, 64, "context", dilation=2)
        width = 64
    else:
        backbone = application_backbone(arch, inputs, weights)
        features = _feature_at(backbone, image_size // stride)
        width = 128
    grid = Grid((image_size, image_size), stride)
    cls = conv(conv(features, width, "cls_tower1"), width, "cls_tower2")
    reg = conv(features, width, "box_tower")
    bias = float(-np.log((1 - PRIOR) / PRIOR))
    logits = L.Conv2D(n_classes, 1, bias_initializer=keras.initializers.Constant(bias), name="cls_logits")(cls)
    scores = L.Activation("sigmoid", name="scores")(L.Reshape((grid.n, n_classes), name="cls_flat")(logits))
    raw = L.Conv2D(4, 1, name="box_raw")(reg)
    boxes = decode_boxes_layer()((image_size, image_size), stride, name="boxes")(raw)
    return keras.Model(inputs, [boxes, scores], name=f"edgekit_detect_{arch.name}")


def _feature_at(backbone, side: int):
    """The deepest output of ``backbone`` whose spatial side is ``side`` (its stride-16 features)."""
    best = None
    for layer in backbone.layers:
        shape = getattr(layer.output, "shape", None)
        if shape is not None and len(shape) == 4 and shape[1] == side and shape[2] == side:
            best = layer.output
    if best is None:
        raise ModelError(f"{backbone.name} has no {side}x{side} feature map")
    return best


def grid_of(model) -> Grid:
    """The :class:`Grid` of a built or loaded detector."""
    layer = model.get_layer("boxes")
    return Grid(layer.size, layer.stride)


# ---- training only ----------------------------------------------------------------------------
def assign_targets(boxes: np.ndarray, classes: np.ndarray, grid: Grid, n_classes: int,
                   radius: float = CENTER_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one image: ``scores`` ``[N, C]`` (one-hot at positives) and ``boxes`` ``[N, 5]``.

    ``boxes`` are normalised corners ``[k, 4]``. A cell is positive for a box when its centre lies
    inside the box and within ``radius`` strides of the box centre; the cell holding the centre
    always is. A cell claimed by several boxes takes the smallest (one grid level: a box sharing all
    its centre cells with a smaller one gets none). The box target's last column is the positive mask.
    """
    centers = grid.centers()
    h, w = grid.size
    score_t = np.zeros((grid.n, n_classes), np.float32)
    box_t = np.zeros((grid.n, 5), np.float32)
    if not len(boxes):
        return score_t, box_t
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    rx, ry = radius * grid.stride / w, radius * grid.stride / h
    for i in np.argsort(-areas, kind="stable"):  # largest first: smaller boxes overwrite shared cells
        x1, y1, x2, y2 = boxes[i]
        bx, by = (x1 + x2) / 2, (y1 + y2) / 2
        cx, cy = centers[:, 0], centers[:, 1]
        pos = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2) & (np.abs(cx - bx) < rx) & (np.abs(cy - by) < ry)
        col = min(max(int(bx * w // grid.stride), 0), grid.cols - 1)
        row = min(max(int(by * h // grid.stride), 0), grid.rows - 1)
        pos[row * grid.cols + col] = True
        score_t[pos] = 0.0
        score_t[pos, int(classes[i])] = 1.0
        box_t[pos, :4] = boxes[i]
        box_t[pos, 4] = 1.0
    return score_t, box_t


def losses(alpha: float = 0.5, gamma: float = 1.5, box_weight: float = 2.0) -> dict:
    """Keras losses keyed by output: sigmoid focal loss on ``scores`` (plain cross-entropy at object
    cells), GIoU loss on positive ``boxes``.

    Both are normalised by the number of positive cells in the batch (at least one).
    """
    from edgekit.host import import_tf

    _, keras = import_tf()
    ops = keras.ops
    eps = 1e-6

    def per_sample(total, positives, y):
        batch = ops.cast(ops.shape(y)[0], "float32")
        return total * batch / ops.maximum(positives, 1.0)

    def focal(y_true, y_pred):
        p = ops.clip(y_pred, eps, 1 - eps)
        ce = -(y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p))
        p_t = y_true * p + (1 - y_true) * (1 - p)
        focal_weight = (y_true * alpha + (1 - y_true) * (1 - alpha)) * (1 - p_t) ** gamma
        # at object cells every class gets full cross-entropy: a wrong class there is never an "easy" negative
        weight = ops.where(ops.max(y_true, axis=-1, keepdims=True) > 0, 1.0, focal_weight)
        return per_sample(ops.sum(weight * ce, axis=(1, 2)), ops.sum(ops.max(y_true, axis=-1)), y_true)

    def giou(y_true, y_pred):
        t, mask = y_true[..., :4], y_true[..., 4]
        p = ops.concatenate([ops.minimum(y_pred[..., :2], y_pred[..., 2:]),
                             ops.maximum(y_pred[..., :2], y_pred[..., 2:])], axis=-1)
        area_t = (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])
        area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
        lt, rb = ops.maximum(t[..., :2], p[..., :2]), ops.minimum(t[..., 2:], p[..., 2:])
        wh = ops.maximum(rb - lt, 0.0)
        inter = wh[..., 0] * wh[..., 1]
        union = area_t + area_p - inter + eps
        hull = ops.maximum(t[..., 2:], p[..., 2:]) - ops.minimum(t[..., :2], p[..., :2])
        hull_area = hull[..., 0] * hull[..., 1] + eps
        g = inter / union - (hull_area - union) / hull_area
        return per_sample(box_weight * ops.sum(mask * (1 - g), axis=1), ops.sum(mask), y_true)

    return {"boxes": giou, "scores": focal}
