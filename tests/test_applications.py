"""Models users bring: preprocessing found (not guessed) for stock keras.applications and SavedModels,
and graphs without Transpose pairs or unfolded BatchNorm. The full matrix over the applications is
benchmarks/app_matrix.py; here each family's preprocessing is checked cheaply and a few networks end to end."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from conftest import assert_one_line_error

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# keras.applications module -> the --preprocess name export gives it (a family alias, as the user may type it)
MODULES = ["mobilenet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "efficientnet_v2", "resnet50", "resnet_v2",
           "vgg16", "densenet", "nasnet", "xception", "inception_v3", "inception_resnet_v2", "convnext"]


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    from edgekit.host import import_tf

    return import_tf()[1]


@pytest.mark.parametrize("module", MODULES)
def test_family_preprocessing_equals_keras_preprocess_input(keras, module):
    """edgekit's preprocessing of real photo crops under a family's name equals that family's own
    preprocess_input on the same pixels (RGB in, as Keras takes them), to 1e-5."""
    from edgekit.host.probe import photo_frames
    from edgekit.preprocess import Preprocess, named

    family = importlib.import_module(f"keras.applications.{module}")
    frames = photo_frames((40, 48), 4, seed=3)
    prep = Preprocess(size=(40, 48), **named(module))
    got = np.stack([prep.hwc(f) for f in frames])
    want = np.asarray(family.preprocess_input(np.stack(frames)[..., ::-1].astype(np.float32)))
    assert np.abs(got - want).max() <= 1e-5


def test_stock_networks_are_recognised_by_their_model_names(keras):
    """The model names keras.applications gives (also nested in a user's model) name their family."""
    from edgekit.host.scaling import application_family, keras_scopes

    built = {
        "mobilenet": keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, include_top=False),
        "mobilenet_v2": keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                                       include_top=False),
        "resnet": keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, include_top=False),
        "densenet": keras.applications.DenseNet121(input_shape=(32, 32, 3), weights=None, include_top=False),
    }
    for family, net in built.items():
        wrapped = keras.Sequential([keras.Input((32, 32, 3)), net, keras.layers.GlobalAveragePooling2D()])
        assert application_family(keras_scopes(wrapped))[1] == family
    assert application_family(["sequential", "my_resnet50_variant", "conv1"]) is None


def test_named_preprocess_values(keras):
    from edgekit.errors import UsageError
    from edgekit.preprocess import named

    assert named("caffe") == named("vgg16") == named("resnet50")
    assert named("scale=1/127.5,mean=1,order=bgr") == {"color": "BGR", "scale": 1 / 127.5, "mean": [1.0] * 3,
                                                        "std": [1.0] * 3}
    for bad in ("vgg", "scale=x", "mean=1/2", "order=rbg", "gain=2"):
        with pytest.raises(UsageError, match="raw, unit, symmetric, caffe, torch"):
            named(bad)


def _stats_from(keras, model, x):
    """Set every BatchNorm's moving statistics from ``x`` so an untrained network's output depends on its input."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer in norms:
        layer.momentum = 0.99
    return model


def test_mobilenetv3_saved_model_finds_its_own_scaling_and_runs_fast(keras, tmp_path):
    """MobileNetV3Small as a SavedModel: its Rescaling is read from the graph (raw 0-255 in, as
    preprocess_input says), parity holds on photos, and the FP32 graph has no Transpose and no
    BatchNorm Mul/Add left after a Conv (depthwise ones included)."""
    import onnx
    import onnx_graphsurgeon as gs

    from edgekit.graph.support import op_histogram
    from edgekit.host.export import export_bundle
    from edgekit.host.probe import photo_frames

    frames = photo_frames((32, 32), 8, seed=1)
    rgb = np.stack(frames)[..., ::-1].astype(np.float32)
    net = _stats_from(keras, keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4),
                      rgb)
    net.export(str(tmp_path / "saved"), verbose=False)
    b = export_bundle(tmp_path / "saved", tmp_path / "b", labels=list("abcd"))
    assert b.manifest["preprocess_origin"].startswith("the model scales its own input (x * 0.00784314 + -1)")
    prep = b.preprocess
    want = keras.applications.mobilenet_v3.preprocess_input(rgb.copy())
    assert np.abs(np.stack([prep.hwc(f) for f in frames]) - want).max() <= 1e-5
    assert b.manifest["parity"]["max_abs_error"] <= 1e-4
    model = onnx.load(b.model_path())
    assert op_histogram(model).get("Transpose", 0) == 0
    graph = gs.import_onnx(model)
    unfolded = [n.name for n in graph.nodes if n.op in ("Mul", "Add")
                and any(t.inputs and t.inputs[0].op == "Conv" for t in n.inputs)
                and any(isinstance(t, gs.Constant) and t.values.size > 1 for t in n.inputs)]
    assert not unfolded


def test_saved_model_with_rescaling_validates_like_its_keras_file(keras, trained_model, digits, tmp_path):
    """A trained model behind a Rescaling(1/255) layer, as .keras and as a SavedModel, exported without
    a sidecar: both find the scaling and score the same top-1 on the held-out digits."""
    from edgekit.host.export import export_bundle
    from edgekit.quant.gate import validate

    inner = keras.models.load_model(trained_model, compile=False)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255), inner])
    model.save(tmp_path / "scaled.keras")
    model.export(str(tmp_path / "scaled_saved"), verbose=False)
    scores = []
    for src in ("scaled.keras", "scaled_saved"):
        b = export_bundle(tmp_path / src, tmp_path / f"b_{src}", labels=[str(d) for d in range(10)])
        assert b.manifest["preprocess"]["scale"] == 1.0 and b.manifest["preprocess_origin"] != "given"
        scores.append(validate(b, digits / "val", tensorrt=False).results[0].accuracy)
    assert scores[0] == scores[1] and scores[0] > 50, scores


def test_saved_model_without_scaling_is_refused(cli, keras, tmp_path):
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x)).export(str(tmp_path / "saved"), verbose=False)
    assert_one_line_error(cli("export", tmp_path / "saved", "-o", tmp_path / "b", "--labels", "x,y,z"),
                          "cannot tell how saved expects its input scaled", "give --preprocess raw, unit, symmetric")
    assert not (tmp_path / "b").exists()


def test_grouped_conv_and_exact_gelu_convert(keras, tmp_path):
    """What stopped ConvNeXt: Keras 3 runs a grouped Conv2D as an XLA function and exact GELU as Erfc;
    both convert now (a grouped ONNX Conv, 1 - Erf), with parity."""
    import onnx

    from edgekit.graph.support import op_histogram
    from edgekit.host.export import export_bundle

    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(keras.layers.Rescaling(1 / 255)(inp))
    x = keras.layers.Conv2D(8, 3, padding="same", groups=8)(x)
    x = keras.layers.Activation("gelu")(x)  # exact GELU (approximate=False): Erfc in TensorFlow
    x = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, x).save(tmp_path / "grouped.keras")
    b = export_bundle(tmp_path / "grouped.keras", tmp_path / "b", labels=list("abc"))
    assert b.manifest["parity"]["max_abs_error"] <= 1e-5
    ops = op_histogram(onnx.load(b.model_path()))
    assert ops["Conv"] == 2 and ops["Erf"] == 1 and "Transpose" not in ops, ops
