"""The channels_first pass (edgekit.graph.layout): channel-last regions between Transposes rewritten in NCHW
with the same numbers, regions it does not understand left as they were, and ConvNeXt-like Keras blocks
exported with no Transpose (``.keras`` and SavedModel), with parity and an INT8 model of them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.graph.passes import Passes
from edgekit.graph.support import check, op_histogram
from edgekit.graph.targets import TARGETS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

C, COUT, H, W = 4, 6, 3, 5  # H != W: a Reshape back to [N, W, H, C] must not pass for [N, H, W, C]


def _region_model(middle="Erf", back=(0, 1, 2), batch=2, pixel=False, size=(1, 1)):
    """x [N, C, H, W] -> Transpose to NHWC -> rows [N*H*W, C] -> MatMul + bias -> back to [N, H, W, COUT]
    (shape computed from Shape, as tf2onnx's Tensordot does) -> GELU-like (``middle``) -> per-channel
    Mul -> channel mean subtracted -> Transpose to NCHW -> Relu. ``back``: which of the NHWC dims the
    Reshape back takes. ``pixel``: x is [N, C, *size], made rows by a Reshape (no Transpose), as tf2onnx
    leaves it for 1x1 pixels, and the shape back comes from x's."""
    h, w = size if pixel else (H, W)
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(C, COUT)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=COUT).astype(np.float32), "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, COUT).astype(np.float32), "gamma"),
        numpy_helper.from_array(np.array([-1, C], np.int64), "rows_shape"),
        numpy_helper.from_array(np.array([0, 2, 3] if pixel else back, np.int64), "nhw"),
        numpy_helper.from_array(np.array([COUT], np.int64), "cout"),
    ]
    middle_node = (helper.make_node("Softmax", ["u"], ["e"], axis=-1) if middle == "Softmax"
                   else helper.make_node(middle, ["u"], ["e"]))
    nodes = [] if pixel else [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1])]
    nodes += [
        helper.make_node("Shape", ["x" if pixel else "t"], ["shp"]),
        helper.make_node("Gather", ["shp", "nhw"], ["dims"], axis=0),
        helper.make_node("Concat", ["dims", "cout"], ["back"], axis=0),
        helper.make_node("Reshape", ["x" if pixel else "t", "rows_shape"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Reshape", ["a", "back"], ["u"]),
        middle_node,
        helper.make_node("Mul", ["u", "e"], ["g"]),
        helper.make_node("Mul", ["g", "gamma"], ["s"]),
        helper.make_node("ReduceMean", ["s"], ["mean"], axes=[-1], keepdims=1),
        helper.make_node("Sub", ["s", "mean"], ["d"]),
        helper.make_node("Transpose", ["d"], ["y_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Relu", ["y_nchw"], ["y"]),
    ]
    out_hw = [h, w] if list(back) == [0, 1, 2] else [w, h]
    graph = helper.make_graph(nodes, "region", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, C, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, COUT, *out_hw])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def _run(model, x, name="x"):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})[0]


def _channels_first(model):
    passes = Passes(model).channels_first()
    return passes.model(), dict(passes.applied)["channels_first"]


@pytest.mark.parametrize("pixel", [False, True], ids=["HxW", "1x1 pixels"])
def test_region_rewritten_in_nchw_with_the_same_numbers(pixel):
    """The rows' MatMul becomes a 1x1 Conv, the Transposes and both Reshapes go, the outputs stay
    (1e-5), and every op left is one each target TensorRT's parser takes."""
    model = _region_model(pixel=pixel)
    x = np.random.default_rng(1).normal(size=(2, C, *((1, 1) if pixel else (H, W)))).astype(np.float32)
    rewritten, removed = _channels_first(model)
    ops = op_histogram(rewritten)
    assert removed == (1 if pixel else 2) and "Transpose" not in ops and "Reshape" not in ops and "MatMul" not in ops, ops
    assert ops["Conv"] == 1 and ops["ReduceMean"] == 1, ops
    want = _run(model, x)
    assert np.abs(_run(rewritten, x) - want).max() <= 1e-5 * np.abs(want).max()
    for target in TARGETS.values():
        assert not check(rewritten, target).errors, target.name


@pytest.mark.parametrize("case", ["unknown op", "shape not proven", "rows not pixels"])
def test_region_not_understood_is_left_intact(case):
    """A Softmax over the channels (an op the pass does not rewrite); a Reshape back to [N, W, H, C]
    (legal ONNX, but not the [N, H, W, C] the rewrite needs); rows [-1, C] reshaped straight from an
    NCHW tensor of HxW pixels (not its pixels): the graph keeps its Transposes and its outputs."""
    model = {"unknown op": lambda: _region_model(middle="Softmax"),
             "shape not proven": lambda: _region_model(back=(0, 2, 1)),
             "rows not pixels": lambda: _region_model(pixel=True, size=(H, W))}[case]()
    x = np.random.default_rng(2).normal(size=(2, C, H, W)).astype(np.float32)
    rewritten, removed = _channels_first(model)
    assert removed == 0 and op_histogram(rewritten)["Transpose"] == (1 if case == "rows not pixels" else 2)
    assert np.array_equal(_run(rewritten, x), _run(model, x))


# ---- ConvNeXt-like Keras blocks, end to end -------------------------------------------------------
@pytest.fixture(scope="module")
def convnext_like(tmp_path_factory):
    """A small ConvNeXt-like classifier (logits): stem Conv + LayerNormalization; two blocks of depthwise
    conv (DepthwiseConv2D, then Conv2D with groups as keras.applications has it), LayerNormalization
    (epsilon 1e-6), Dense x4, GELU, Dense, a per-channel LayerScale and the residual Add; a downsampling
    LayerNormalization + strided Conv2D between them. Every weight random (biases, norms and scales
    included), saved as .keras and exported as a SavedModel."""
    pytest.importorskip("tensorflow")
    from edgekit.host import import_tf

    _, keras = import_tf()
    layers = keras.layers

    @keras.saving.register_keras_serializable(package="edgekit_tests")
    class Scale(layers.Layer):
        def __init__(self, dim, **kwargs):
            super().__init__(**kwargs)
            self.dim = dim

        def build(self, _):
            self.gamma = self.add_weight(shape=(self.dim,), initializer=keras.initializers.RandomUniform(0.5, 1.5))

        def call(self, x):
            return x * self.gamma

        def get_config(self):
            return {**super().get_config(), "dim": self.dim}

    def block(x, channels, grouped):
        y = (layers.Conv2D(channels, 7, padding="same", groups=channels) if grouped
             else layers.DepthwiseConv2D(7, padding="same"))(x)
        y = layers.LayerNormalization(epsilon=1e-6)(y)
        y = layers.Dense(4 * channels, activation="gelu")(y)
        y = Scale(channels)(layers.Dense(channels)(y))
        return layers.Add()([x, y])

    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 4, strides=4)(layers.Rescaling(1 / 255)(inp))
    x = block(layers.LayerNormalization(epsilon=1e-6)(x), 8, grouped=False)
    x = layers.Conv2D(16, 2, strides=2)(layers.LayerNormalization(epsilon=1e-6)(x))
    x = block(x, 16, grouped=True)
    x = layers.LayerNormalization(epsilon=1e-6)(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, layers.Dense(3)(x))
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, (layers.LayerNormalization, layers.Dense)):
            for weight in layer.weights[int(isinstance(layer, layers.Dense)):]:  # gamma, beta; a Dense's bias
                weight.assign(rng.uniform(-1, 1, weight.shape) if "beta" in weight.path or "bias" in weight.path
                              else rng.uniform(0.5, 1.5, weight.shape))
    root = tmp_path_factory.mktemp("convnext_like")
    model.save(root / "model.keras")
    model.export(str(root / "saved"), verbose=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["model.keras", "saved"])
def test_convnext_like_blocks_export_without_transposes(convnext_like, fmt, tmp_path):
    """Both formats: parity <= 1e-4, at most the input's Transpose left (none here), the Dense layers as
    1x1 Convs with their bias and LayerScale folded in."""
    import onnx

    from edgekit.host.export import export_bundle

    b = export_bundle(convnext_like / fmt, tmp_path / "b", labels=list("abc"))
    ops = op_histogram(onnx.load(b.model_path()))
    passes = {p["name"]: p["changes"] for p in b.manifest["passes"]}
    assert b.manifest["parity"]["max_abs_error"] <= 1e-4
    assert ops.get("Transpose", 0) <= 1 and passes["channels_first"] == 4, (ops, passes)
    assert ops["Conv"] == 4 + 2 * 2 and ops["MatMul"] == 1, ops  # stem, down, 2 depthwise; 2 Dense a block; head
    assert "Reshape" not in ops and passes["drop_noop_reshapes"] >= 1, (ops, passes)  # the LayerNorm means' moves
    assert passes["fold_batchnorm"] >= 6  # each Dense's bias, each LayerScale


@pytest.mark.slow
def test_convnext_like_int8_quantizes_the_new_convs(convnext_like, tmp_path):
    """The rewritten graph quantizes: the 1x1 Convs that were Dense layers get Q/DQ on activation and
    weight, TensorRT's Q/DQ rules hold, and the INT8 model follows the FP32 one on photos."""
    import cv2
    import onnx

    from edgekit.bundle import Bundle
    from edgekit.host.export import export_bundle
    from edgekit.host.probe import photo_frames
    from edgekit.quant.qdq import tensorrt_qdq_problems
    from edgekit.quant.quantize import quantize_bundle

    b = export_bundle(convnext_like / "model.keras", tmp_path / "b", labels=list("abc"))
    photos = tmp_path / "photos"
    photos.mkdir()
    frames = photo_frames((32, 32), 24, seed=5)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(photos / f"{i}.png"), frame)
    quantize_bundle(b.path, photos, method="minmax", num_images=24, holdout=0, fp16=False, progress=False)
    b = Bundle.load(b.path)
    model = onnx.load(b.model_path("int8"))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def weight(name):  # through DequantizeLinear and QuantizeLinear to the initializer
        return inits[name] if name in inits else weight(producers[name].input[0])

    pointwise = [n for n in model.graph.node if n.op_type == "Conv" and weight(n.input[1]).shape[2:] == (1, 1)]
    assert len(pointwise) == 4
    for conv in pointwise:
        assert producers[conv.input[0]].op_type == producers[conv.input[1]].op_type == "DequantizeLinear", conv.name
    assert tensorrt_qdq_problems(model) == []
    x = b.preprocess.batch(frames)
    fp32, int8 = (_run(onnx.load(b.model_path(key)), x, "input") for key in ("fp32", "int8"))
    assert np.abs(int8 - fp32).max() <= 0.1 * np.ptp(fp32), (np.abs(int8 - fp32).max(), np.ptp(fp32))


@pytest.mark.parametrize("target, kept", [([-1, 1, H, W], False), ([0, 0, H, W], False), ([-1, 1, W, H], True)])
def test_only_a_reshape_to_its_own_shape_is_dropped(target, kept):
    """[N, 1, H, W] reshaped to [-1, 1, H, W] or [0, 0, H, W] is itself and goes; to [-1, 1, W, H] it stays
    (H != W), and the outputs do not change either way."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.graph.passes import Passes

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(target, np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    passes = Passes(model).drop_noop_reshapes()
    out = passes.model()
    assert (op_histogram(out).get("Reshape", 0) == 1) is kept and passes.applied[-1][1] == (0 if kept else 1)
    x = np.random.default_rng(0).normal(size=(2, 1, H, W)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_array_equal(run(out), run(model))
