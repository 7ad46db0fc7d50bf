"""Single-stage, anchor-free object detectors in Keras, and the targets of the original one.

Every cell of a stride-``s`` feature grid predicts class probabilities and the distances from its
centre to the four sides of a box. A detector ends in the outputs every detection bundle keeps:

* ``boxes``  float32 ``[B, N, 4]``: corners ``(x1, y1, x2, y2)`` normalised to [0, 1] of the model input,
  decoded inside the graph (softplus distances, times each cell's stride, around constant cell centres);
* ``scores`` float32 ``[B, N, C]``: sigmoid class probabilities,

with ``N`` the cells of all levels, finest first. Detector architectures (:data:`HEADS`):

* ``small`` (default, CPUs and Nanos) and ``medium`` (wider, three levels; Orin): a feature pyramid
  (strides 8 and 16, plus 32 for medium) with a box and a class branch per level, trained with
  task-aligned assignment and an IoU-aware class target (:mod:`edgekit.host.det_loss`);
* ``small-v1``: the original detector (stride 8 only, static centre targets, focal loss), kept for
  comparison (benchmarks/bench_detector.py);
* Keras applications: their stride-16 features with the task-aligned head.

Only Conv, ConvTranspose, Relu, Add, Concat, Softplus, Sigmoid, Reshape and Mul: tf2onnx converts them
plainly, TensorRT runs them in INT8; NMS is appended at export (EfficientNMS_TRT), never here.

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
CENTER_RADIUS = 2.5  # small-v1 positives: cells inside a box and within this many strides of its centre
PRIOR = 0.01  # initial foreground probability (focal-loss bias initialisation)


@dataclass(frozen=True)
class Head:
    """A detector design: backbone widths per stage (stride 2, 4, 8, ...), pyramid levels, neck width."""

    widths: tuple[int, ...]
    levels: int  # pyramid levels from stride 8 (1: stride 8 only)
    width: int  # neck and head channels
    cls_convs: int = 2  # 3x3 convs of the class branch (the box branch has one)
    legacy: bool = False  # small-v1: one level, static targets and focal loss


HEADS = {
    "small": Head((16, 32, 64, 96), 2, 64),
    "medium": Head((24, 48, 96, 128, 160), 3, 96),
    "small-v1": Head((16, 32, 64), 1, 64, legacy=True),
}
@dataclass(frozen=True)
class Grid:
    """The cells of a detector: ``levels`` grids of stride ``stride * 2**i`` on a ``size`` input, finest first.

    ``rows`` and ``cols`` are those of the finest level.
    """

    size: tuple[int, int]  # model input (height, width)
    stride: int
    levels: int = 1

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.stride * 2**i for i in range(self.levels))

    def shape(self, stride: int) -> tuple[int, int]:
        return -(-self.size[0] // stride), -(-self.size[1] // stride)

    @property
    def rows(self) -> int:
        return self.shape(self.stride)[0]

    @property
    def cols(self) -> int:
        return self.shape(self.stride)[1]

    @property
    def n(self) -> int:
        return sum(r * c for r, c in map(self.shape, self.strides))

    def centers(self) -> np.ndarray:
        """Cell centres ``[N, 2]`` as (x, y) normalised to the input, row-major per level like the outputs."""
        h, w = self.size
        out = []
        for s in self.strides:
            rows, cols = self.shape(s)
            ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
            out.append(np.stack([(xs.ravel() + 0.5) * s / w, (ys.ravel() + 0.5) * s / h], 1))
        return np.concatenate(out).astype(np.float32)

    def cell_strides(self) -> np.ndarray:
        """The stride of every cell ``[N]``, in pixels."""
        return np.concatenate([np.full(np.prod(self.shape(s)), s) for s in self.strides]).astype(np.float32)


def detector_arch(name: str):
    """The :class:`~edgekit.host.archs.Arch` a detector called ``name`` is built on (the small CNN's
    preprocessing for every :data:`HEADS` name); UsageError listing the valid names."""
    import dataclasses

    from edgekit.host.archs import ARCHS, get_arch

    if name in HEADS:
        return dataclasses.replace(get_arch("small"), name=name)
    if name not in ARCHS or ARCHS[name].application is None:
        choices = [*HEADS, *(a for a in ARCHS if ARCHS[a].application)]
        raise UsageError(f"unknown detector arch {name!r}; choose one of: {', '.join(choices)}")
    return get_arch(name)


def head_for(arch) -> Head | None:
    """The :class:`Head` of the small-CNN detector ``arch`` (an :class:`~edgekit.host.archs.Arch`), None
    for a Keras application."""
    return HEADS[arch.name] if arch.application is None else None


def stride_for(arch) -> int:
    """The coarsest output stride of ``arch`` (an :class:`~edgekit.host.archs.Arch`)."""
    head = head_for(arch)
    return APPLICATION_STRIDE if head is None else SMALL_STRIDE * 2 ** (head.levels - 1)


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
        """Raw ``[B, N, 4]`` regressions (or ``[B, rows, cols, 4]`` of one level) -> ``[B, N, 4]`` corners.

        ``softplus(raw) * stride`` are the pixel distances (left, top, right, bottom) from each cell's
        centre; the centres and scales are constants of the graph.
        """

        def __init__(self, size, stride, levels=1, **kwargs):
            super().__init__(**kwargs)
            self.size, self.stride, self.levels = (int(size[0]), int(size[1])), int(stride), int(levels)
            grid = Grid(self.size, self.stride, self.levels)
            self._n = grid.n
            self._centers = np.tile(grid.centers(), (1, 2))  # [N, 4]: cx, cy, cx, cy
            h, w = self.size
            self._scale = (grid.cell_strides()[:, None] * np.array([-1 / w, -1 / h, 1 / w, 1 / h])).astype(np.float32)

        def call(self, raw):
            flat = ops.reshape(raw, (-1, self._n, 4))
            return ops.softplus(flat) * self._scale + self._centers

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self._n, 4)

        def get_config(self):
            return {**super().get_config(), "size": list(self.size), "stride": self.stride, "levels": self.levels}

    return DecodeBoxes


def build_detector(arch, image_size: int, n_classes: int, weights: str = "none"):
    """A Keras detector for ``arch`` (an :class:`~edgekit.host.archs.Arch`) on square ``image_size`` inputs.

    The small CNNs are built here (:data:`HEADS`); a Keras application contributes its last stride-16
    feature map, with ``weights`` as for classification.
    """
    from edgekit.host import import_tf
    from edgekit.host.archs import application_backbone

    _, keras = import_tf()
    L = keras.layers
    check_image_size(arch, image_size)
    if n_classes < 1:
        raise UsageError("a detector needs at least one class")
    inputs = keras.Input((image_size, image_size, 3), name="input")

    def conv(x, filters, name, strides=1, dilation=1, kernel=3):
        x = L.Conv2D(filters, kernel, strides=strides, dilation_rate=dilation, padding="same", use_bias=False,
                     name=f"{name}_conv")(x)
        x = L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return L.ReLU(name=f"{name}_relu")(x)

    head = head_for(arch)
    bias = keras.initializers.Constant(float(-np.log((1 - PRIOR) / PRIOR)))
    if head is not None and weights != "none":
        raise UsageError("the small CNN has no pretrained weights; use --weights none")
    if head is not None and head.legacy:
        return _legacy(keras, conv, inputs, head, image_size, n_classes, bias, arch.name)
    if head is None:
        backbone = application_backbone(arch, inputs, weights)
        pyramid, stride, width = [_feature_at(backbone, image_size // APPLICATION_STRIDE)], APPLICATION_STRIDE, 96
    else:
        x, features = inputs, []
        for i, filters in enumerate(head.widths):  # stage i has stride 2**(i+1); stride 8 and up feed the neck
            x = conv(x, filters, f"down{i}", strides=2)
            if i:
                x = conv(x, filters, f"block{i}")
            if 2 ** (i + 1) >= SMALL_STRIDE:
                features.append(x)
        stride, width = SMALL_STRIDE, head.width
        pyramid = [conv(features[-1], width, f"lateral{len(features) - 1}", kernel=1)]
        for i in range(len(features) - 2, -1, -1):  # top-down: upsampled coarser level + this level's features
            # a learned 2x upsampling: one ConvTranspose (static shapes; Resize from tf2onnx breaks ONNX
            # Runtime's shape inference before INT8 quantization, UpSampling2D becomes a Tile chain)
            up = L.Conv2DTranspose(width, 2, strides=2, name=f"up{i}")(pyramid[0])
            merged = L.Add(name=f"merge{i}")([up, conv(features[i], width, f"lateral{i}", kernel=1)])
            pyramid.insert(0, conv(merged, width, f"fuse{i}"))
    logits, raws = [], []
    for i, p in enumerate(pyramid):
        cls = p
        for j in range(head.cls_convs if head is not None else 2):
            cls = conv(cls, width, f"cls_tower{j}_p{i}")
        reg = conv(p, width, f"box_tower_p{i}")
        logit = L.Conv2D(n_classes, 1, bias_initializer=bias, name=f"cls_logits_p{i}")(cls)
        logits.append(L.Reshape((-1, n_classes), name=f"cls_flat_p{i}")(logit))
        raws.append(L.Reshape((-1, 4), name=f"box_flat_p{i}")(L.Conv2D(4, 1, name=f"box_raw_p{i}")(reg)))
    concat = (lambda xs, name: xs[0]) if len(pyramid) == 1 else (lambda xs, name: L.Concatenate(1, name=name)(xs))
    logit = L.Activation("linear", name="logits")(concat(logits, "cls_levels"))
    scores = L.Activation("sigmoid", name="scores")(logit)
    boxes = decode_boxes_layer()((image_size, image_size), stride, len(pyramid), name="boxes")(concat(raws, "box_levels"))
    return keras.Model(inputs, [boxes, scores], name=f"edgekit_detect_{arch.name}")


def _legacy(keras, conv, inputs, head, image_size, n_classes, bias, name):
    """small-v1: the original stride-8 detector (one level, a dilated context layer, two class convs)."""
    L = keras.layers
    x = conv(inputs, head.widths[0], "stem", strides=2)
    x = conv(x, head.widths[1], "down1", strides=2)
    x = conv(x, head.widths[1], "block1")
    x = conv(x, head.widths[2], "down2", strides=2)
    x = conv(x, head.widths[2], "block2")
    features = conv(x, head.width, "context", dilation=2)
    grid = Grid((image_size, image_size), SMALL_STRIDE)
    cls = conv(conv(features, head.width, "cls_tower1"), head.width, "cls_tower2")
    reg = conv(features, head.width, "box_tower")
    logits = L.Conv2D(n_classes, 1, bias_initializer=bias, name="cls_logits")(cls)
    scores = L.Activation("sigmoid", name="scores")(L.Reshape((grid.n, n_classes), name="cls_flat")(logits))
    raw = L.Conv2D(4, 1, name="box_raw")(reg)
    boxes = decode_boxes_layer()((image_size, image_size), SMALL_STRIDE, name="boxes")(raw)
    return keras.Model(inputs, [boxes, scores], name=f"edgekit_detect_{name}")


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
    return Grid(layer.size, layer.stride, layer.levels)


# ---- training small-v1 only ----------------------------------------------------------------------------
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
