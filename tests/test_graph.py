"""Graph passes, targets and the op-support check on hand-made ONNX graphs (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _run(model, x):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


# ---- targets ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, canonical, trt, table, max_opset",
    [
        ("jetpack-4.6", "jetpack-4.6", "8.0", "8.2-GA", 13),
        ("jp4.6.1", "jetpack-4.6.1", "8.2", "8.2-GA", 13),
        ("JetPack 5.1", "jetpack-5.1", "8.5", "8.5-GA", 17),
        ("jetpack-5.1.2", "jetpack-5.1", "8.5", "8.5-GA", 17),
        ("jetpack-6.0", "jetpack-6.0", "8.6", "8.6-GA", 17),
        ("jetpack-6.2", "jetpack-6.2", "10.3", "10.1-GA", 20),
        ("jetpack-7", "jetpack-7.0", "10.13", "10.1-GA", 20),
        ("jetpack-7.2", "jetpack-7.2", "11.4", "10.1-GA", 20),
        ("trt-8.2", "tensorrt-8.2", "8.2", "8.2-GA", 13),
        ("tensorrt-8.6.1", "tensorrt-8.6", "8.6", "8.6-GA", 17),
        ("tensorrt-10.x", "tensorrt-10", "10", "10.1-GA", 20),
        ("trt-10.3", "tensorrt-10.3", "10.3", "10.1-GA", 20),
        ("tensorrt-11", "tensorrt-11", "11", "10.1-GA", 20),
    ],
)
def test_targets_resolve(name, canonical, trt, table, max_opset):
    from edgekit.graph.targets import get_target

    t = get_target(name)
    assert (t.name, t.tensorrt, t.op_table, t.max_opset) == (canonical, trt, table, max_opset)
    assert "Conv" in t.supported_ops and t.default_opset == min(17, max_opset)


@pytest.mark.parametrize("name", ["jetpack-9", "tensorrt-7.1", "orin", ""])
def test_unknown_target_lists_valid_ones(name):
    from edgekit.errors import UsageError
    from edgekit.graph.targets import get_target

    with pytest.raises(UsageError, match="unknown target .*jetpack-4.6.1.*tensorrt-11"):
        get_target(name)


def test_op_tables_are_packaged():
    from edgekit.graph.targets import OPS_DIR, TARGETS

    for t in TARGETS.values():
        assert (OPS_DIR / f"{t.op_table}.json").is_file()
    assert "LayerNormalization" not in TARGETS["jetpack-5.1"].supported_ops
    assert "NonZero" in TARGETS["jetpack-6.1"].supported_ops - TARGETS["jetpack-4.6.1"].supported_ops


# ---- passes ---------------------------------------------------------------------------------
def _conv_bn_model(kind):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    if kind == "bn":
        for n, v in (("g", rng.uniform(0.5, 2, 4)), ("b", rng.normal(size=4)), ("m", rng.normal(size=4)),
                     ("v", rng.uniform(0.5, 2, 4))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), n))
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y0"], name="bn"))
    else:
        inits += [numpy_helper.from_array(rng.uniform(0.5, 2, (4, 1, 1)).astype(np.float32), "s"),
                  numpy_helper.from_array(rng.normal(size=(1, 4, 1, 1)).astype(np.float32), "t")]
        nodes += [helper.make_node("Mul", ["c", "s"], ["cm"], name="mul"),
                  helper.make_node("Add", ["t", "cm"], ["y0"], name="add")]
    nodes += [helper.make_node("Dropout", ["y0"], ["y1"], name="drop"),
              helper.make_node("Relu", ["y1"], ["y2"], name="relu"),
              helper.make_node("Identity", ["y2"], ["y"], name="ident")]
    return _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], inits)


@pytest.mark.parametrize("kind", ["bn", "mul_add"])
def test_strip_and_fold_batchnorm_keep_outputs(kind):
    from edgekit.graph.passes import Passes

    model = _conv_bn_model(kind)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    want = _run(model, x)
    p = Passes(model).strip_training().fold_constants().fold_batchnorm().cleanup().toposort()
    out = p.model()
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu"]
    assert out.graph.output[0].name == "y"  # the Identity before the output is gone, the name kept
    assert dict(p.applied)["fold_batchnorm"] == (1 if kind == "bn" else 2)
    assert dict(p.applied)["strip_training"] == 2
    np.testing.assert_allclose(_run(out, x), want, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_leaves_non_per_channel_mul():
    from edgekit.graph.passes import Passes

    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    s = numpy_helper.from_array(np.arange(4, dtype=np.float32), "s")  # broadcasts along W, not C
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "s"], ["y"])],
                   [_vi("x", [1, 1, 4, 4])], [_vi("y", [1, 2, 4, 4])], [w, s])
    out = Passes(model).fold_batchnorm().model()
    assert [n.op_type for n in out.graph.node] == ["Conv", "Mul"]


def test_fold_constants_cast_double_set_batch_and_ir_version():
    import onnx

    from edgekit.graph.passes import Passes

    a = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "a")
    b = numpy_helper.from_array(np.array([3.0, 4.0], np.float32), "b")
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"], name="const_add"),
             helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["xd"], ["xf"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xf", "ab"], ["y"], name="mul")]
    model = _model(nodes, [_vi("x", ["unk__1", 2])], [_vi("y", ["unk__2", 2])], [a, b])
    out = Passes(model).fold_constants().cast_double().set_batch("batch").cleanup().model()
    assert "Add" not in [n.op_type for n in out.graph.node]
    assert all(n.attribute[0].i == TensorProto.FLOAT for n in out.graph.node if n.op_type == "Cast")
    for v in (out.graph.input[0], out.graph.output[0]):
        assert v.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.ir_version == 8  # the lowest IR for opset 17, which onnxruntime 1.31 and TensorRT accept
    onnx.checker.check_model(out)
    np.testing.assert_allclose(_run(out, np.ones((3, 2), np.float32)), [[4, 6]] * 3)
    fixed = Passes(model).set_batch(4).model()
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


# ---- op-support check -----------------------------------------------------------------------
def _nonzero_unique_model():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="find_nonzero"),
             helper.make_node("Unique", ["x"], ["u"], name="dedupe"),
             helper.make_node("Relu", ["x"], ["y"], name="relu")]
    return _model(nodes, [_vi("x", [4])], [_vi("y", [4]), _vi("nz", [1, "n"], TensorProto.INT64),
                                           _vi("u", ["m"])], opset=13)


def test_unsupported_ops_named_with_nodes_and_hint():
    from edgekit.errors import UnsupportedOpError
    from edgekit.graph.support import check

    report = check(_nonzero_unique_model(), "jetpack-4.6.1")
    assert report.verdict == "unsupported"
    assert {(p.op, p.node) for p in report.errors} == {("NonZero", "find_nonzero"), ("Unique", "dedupe")}
    with pytest.raises(UnsupportedOpError) as exc:
        report.raise_if_unsupported()
    msg = str(exc.value)
    assert "\n" not in msg
    for fragment in ("NonZero (find_nonzero)", "Unique (dedupe)", "TensorRT 8.2", "hint:", "--allow-unsupported"):
        assert fragment in msg
    # TensorRT 10 runs NonZero, still not Unique
    assert [p.op for p in check(_nonzero_unique_model(), "jetpack-6.1").errors] == ["Unique"]


def test_opset_beyond_target():
    from edgekit.graph.support import check

    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1])], [_vi("y", [1])], opset=17)
    assert [p.op for p in check(model, "jetpack-4.6.1").errors] == ["opset"]
    assert check(model, "jetpack-5.1").verdict == "ok"


def test_restrictions_constant_inputs_resize_qdq_topk_cast():
    from edgekit.graph.support import check

    zp_u8 = numpy_helper.from_array(np.array(3, np.uint8), "zp_u8")
    zp_i8 = numpy_helper.from_array(np.array(0, np.int8), "zp_i8")
    sc = numpy_helper.from_array(np.array(0.1, np.float32), "sc")
    k = numpy_helper.from_array(np.array([5000], np.int64), "k")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Slice", ["x", "shp", "shp"], ["sl"], name="dyn_slice"),  # starts from a tensor
        helper.make_node("Unsqueeze", ["x", "axes"], ["us"], name="const_unsqueeze"),  # fine
        helper.make_node("Resize", ["x4", "", "scales"], ["rz"], name="cubic", mode="cubic"),
        helper.make_node("QuantizeLinear", ["x", "sc", "zp_u8"], ["q"], name="q_uint8"),
        helper.make_node("DequantizeLinear", ["q2", "sc", "zp_i8"], ["dq"], name="dq_ok"),
        helper.make_node("TopK", ["x", "k"], ["tv", "ti"], name="topk_big"),
        helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=TensorProto.DOUBLE),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    outs = [_vi(n, None) for n in ("sl", "us", "rz", "q", "dq", "tv", "ti", "xd")]
    model = _model(nodes, [_vi("x", [8]), _vi("x4", [1, 1, 2, 2]), _vi("q2", [8], TensorProto.INT8)], outs,
                   [zp_u8, zp_i8, sc, k, axes, scales], opset=13)
    report = check(model, "jetpack-5.1")
    errors = {p.node: p.message for p in report.errors}
    assert set(errors) == {"dyn_slice", "cubic", "q_uint8", "topk_big"}, errors
    assert "must be a constant" in errors["dyn_slice"] and "cubic" in errors["cubic"]
    assert "INT8" in errors["q_uint8"] and "3840" in errors["topk_big"]
    assert [p.node for p in report.warnings] == ["to_double"]
    assert "cubic" not in {p.node for p in check(model, "jetpack-6.1").errors}  # TensorRT 10 has cubic


def test_custom_domain_and_subgraph_nodes_are_checked():
    from edgekit.graph.support import check

    then = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="inner_unique")], "then", [],
                             [_vi("u", None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["o"], name="inner_id")], "else", [],
                              [_vi("o", None)])
    nodes = [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other),
             helper.make_node("MyPlugin", ["x"], ["z"], name="plugin", domain="com.example")]
    model = _model(nodes, [_vi("c", [], TensorProto.BOOL), _vi("x", [4])], [_vi("y", None), _vi("z", None)])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    errors = {p.node: p.message for p in check(model, "jetpack-6.1").errors}
    assert set(errors) == {"inner_unique", "plugin"} and "plugin" in errors["plugin"]


def test_replace_unsupported_reciprocal_for_tensorrt_8_2():
    from edgekit.graph.passes import Passes
    from edgekit.graph.support import check
    from edgekit.graph.targets import get_target

    nodes = [helper.make_node("Reciprocal", ["x"], ["r"], name="recip"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    model = _model(nodes, [_vi("x", ["N", 5])], [_vi("y", ["N", 5])], opset=13)
    trt82 = get_target("jetpack-4.6.1")
    assert [p.node for p in check(model, trt82).errors] == ["recip"]
    x = np.array([[0.1, 0.5, -0.3, 2.0, -4.0]], np.float32)
    want = _run(model, x)
    p = Passes(model).replace_unsupported(trt82.supported_ops).toposort()
    out = p.model()
    assert dict(p.applied)["replace_unsupported"] == 1
    assert check(out, trt82).verdict == "ok"
    assert [n.op_type for n in out.graph.node] == ["Div", "Relu"]
    np.testing.assert_allclose(_run(out, x), want, rtol=1e-6)
    # a target that has Reciprocal keeps it
    kept = Passes(model).replace_unsupported(get_target("jetpack-5.1").supported_ops).model()
    assert [n.op_type for n in kept.graph.node] == ["Reciprocal", "Relu"]
