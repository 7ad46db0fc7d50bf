"""TensorRT layer: the pure decisions everywhere; real builds and inference only where TensorRT runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.backends.select import tensorrt_available
from edgekit.backends.tensorrt.recipe import (
    BuildOptions,
    UnsupportedPrecisionError,
    check_dla,
    check_precision,
    folder_digest,
    oom_hint,
    parse_batch,
    profile_shapes,
    recipe,
    root_cause,
)
from edgekit.backends.tensorrt.runner import numpy_dtype
from edgekit.errors import BundleError, ModelError, UsageError
from conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
needs_tensorrt = pytest.mark.skipif(
    not tensorrt_available(), reason="needs the tensorrt Python bindings, pycuda or cuda-python, and an NVIDIA GPU (none here)"
)


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory):
    """The tiny model with its fp16 and Q/DQ int8 variants."""
    from edgekit.tiny import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("tiny") / "full", variants=True)


def test_parse_batch():
    assert parse_batch("8") == (1, 8, 8) and parse_batch(4) == (1, 4, 4)
    assert parse_batch("1,4,8") == (1, 4, 8) and parse_batch((2, 2, 2)) == (2, 2, 2)
    for bad in ("4,2,1", "0", "a,b", "1,2", (0, 1, 1)):
        with pytest.raises(UsageError):
            parse_batch(bad)


def test_profile_shapes():
    assert profile_shapes(["batch", 3, 32, 32], (1, 4, 8)) == ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    assert profile_shapes([1, 3, 8, 8], (1, 1, 1)) == ((1, 3, 8, 8),) * 3  # a fixed batch stays
    with pytest.raises(UsageError, match="fixed at 1"):
        profile_shapes([1, 3, 8, 8], (1, 4, 8))
    with pytest.raises(ModelError, match="dynamic dimensions"):
        profile_shapes(["batch", 3, "h", "w"], (1, 1, 1))


def test_recipe_per_tensorrt_release(tiny_bundle, full_bundle, tmp_path):
    assert recipe(tiny_bundle, "fp32", 8).model_key == "fp32"
    # TensorRT < 11: FP16 is a builder flag on the fp32 model; INT8 comes from the Q/DQ model.
    assert recipe(full_bundle, "fp16", 10) == recipe(tiny_bundle, "fp16", 8)
    assert recipe(tiny_bundle, "fp16", 10).flags == ("FP16",) and recipe(tiny_bundle, "fp16", 10).model_key == "fp32"
    int8 = recipe(full_bundle, "int8", 10)
    assert (int8.model_key, "INT8" in int8.flags, int8.calibrate) == ("int8", True, False)
    calibrated = recipe(tiny_bundle, "int8", 8, calibrate=tmp_path)
    assert (calibrated.model_key, calibrated.calibrate) == ("fp32", True)
    with pytest.raises(BundleError, match="no int8 .*Q/DQ.* model and no calibration set"):
        recipe(tiny_bundle, "int8", 10)
    # TensorRT 11: strongly typed, no precision flags; the ONNX decides.
    for precision in ("fp16", "int8"):
        r = recipe(full_bundle, precision, 11)
        assert (r.model_key, r.flags) == (precision, ())
        with pytest.raises(BundleError, match="strongly typed"):
            recipe(tiny_bundle, precision, 11)
    with pytest.raises(UsageError, match="removed implicit INT8 calibration"):
        recipe(full_bundle, "int8", 11, calibrate=tmp_path)


def test_precision_and_dla_checks():
    check_precision("fp16", "8.7")
    check_precision("int8", "7.2")
    with pytest.raises(UnsupportedPrecisionError, match="no fast INT8"):
        check_precision("int8", "5.3")  # Jetson Nano: FP16 yes, INT8 no
    with pytest.raises(UnsupportedPrecisionError, match="no fast FP16"):
        check_precision("fp16", "8.7", fast_fp16=False)  # TensorRT's own answer wins
    check_dla(None, 0, "fp32")
    check_dla(1, 2, "int8")
    with pytest.raises(UnsupportedPrecisionError, match="no DLA"):
        check_dla(0, 0, "fp16")
    with pytest.raises(UnsupportedPrecisionError, match="does not exist"):
        check_dla(2, 2, "fp16")
    with pytest.raises(UnsupportedPrecisionError, match="FP16 or INT8 only"):
        check_dla(0, 2, "fp32")


def test_build_options_validate():
    assert BuildOptions(batch="1,2,4").batch == (1, 2, 4)
    for bad in ({"precision": "bf16"}, {"workspace_mib": 0}, {"dla_core": -1}, {"batch": "3,1,1"}):
        with pytest.raises(UsageError):
            BuildOptions(**bad)


def test_oom_hint_and_calibration_digest(tmp_path):
    assert oom_hint(["Requested amount of GPU memory (1073741824 bytes) could not be allocated"])
    assert oom_hint(["[virtualMemoryBuffer.cpp::resizePhysical] Error Code 2: OutOfMemory (no further information)"])
    assert not oom_hint(["Network has dynamic or shape inputs, but no optimization profile"])
    (tmp_path / "a.png").write_bytes(b"12")
    (tmp_path / "b.png").write_bytes(b"123")
    first = folder_digest([tmp_path / "a.png", tmp_path / "b.png"])
    (tmp_path / "b.png").write_bytes(b"1234")
    assert folder_digest([tmp_path / "b.png", tmp_path / "a.png"]) != first


def test_workspace_from_free_memory_and_the_out_of_memory_line():
    from edgekit.backends.tensorrt.recipe import default_workspace_mib, oom_message

    assert default_workspace_mib(3000) == 1500 and default_workspace_mib(100) == 64
    assert default_workspace_mib(None) is None  # unknown: TensorRT's own default
    line = oom_message(1500, (1, 4, 8))
    assert "smaller --workspace than 1500 MiB" in line and "smaller --batch profile" in line and "swap" in line
    assert "--batch" not in oom_message(None, (1, 1, 1)) and "--workspace MiB" in oom_message(None, (1, 1, 1))


def test_dla_forces_a_static_profile():
    assert parse_batch("8", static=True) == (8, 8, 8) and parse_batch(4, static=True) == (4, 4, 4)
    assert BuildOptions(precision="int8", dla_core=0).batch == (1, 1, 1)
    assert BuildOptions(precision="int8", dla_core=0, batch="4").batch == (4, 4, 4)
    assert BuildOptions(precision="int8", dla_core=0, batch="2,2,2").batch == (2, 2, 2)
    with pytest.raises(UsageError, match="DLA needs a static batch"):
        BuildOptions(precision="int8", dla_core=0, batch="1,4,8")
    assert BuildOptions(precision="int8", batch="4").batch == (1, 4, 4)  # GPU: dynamic as before


def test_build_errors_name_the_root_cause():
    """TensorRT logs the cause first and a generic summary last (messages as TensorRT 8.6/10 print them)."""
    errors = [
        "ModelImporter.cpp:771: While parsing node number 3 [Mod -> \"out\"]: No importer registered for op: Mod",
        "[network.cpp::validate::3162] Error Code 4: Internal Error (Network validation failed.)",
        "2: [builder.cpp::buildSerializedNetwork::751] Error Code 2: Internal Error (Assertion engine != nullptr failed. )",
    ]
    assert "No importer registered for op: Mod" in root_cause(errors)
    assert root_cause(errors[1:]) == errors[1]  # only summaries: the first one
    assert root_cause([]) == "unknown error"


def test_build_options_take_a_chosen_precision_and_refuse_what_they_cannot_build():
    """The builder builds what it is given (``auto`` is resolved by the caller, select.choose_model);
    anything else it cannot build is one UsageError."""
    for precision in ("fp32", "fp16", "int8"):
        assert BuildOptions(precision=precision).precision == precision
    for bad, message in ((dict(precision="auto"), "not 'auto'"), (dict(precision="int4"), "int4"),
                         (dict(workspace_mib=0), "--workspace"), (dict(dla_core=-1), "--dla")):
        with pytest.raises(UsageError, match=message):
            BuildOptions(**bad)


def test_device_key_identifies_the_gpu_by_index_sms_and_memory(monkeypatch):
    """Which GPU the key describes follows options.device (probe answers are FAKE: no GPU here)."""
    from edgekit.backends.tensorrt import builder, probe

    gpus = {0: {"name": "Orin", "compute_capability": "8.7", "multiprocessors": 8, "memory_mib": 15000},
            1: {"name": "Orin", "compute_capability": "8.7", "multiprocessors": 4, "memory_mib": 7000}}
    monkeypatch.setattr(probe, "gpu_info", lambda device=0: gpus[device])
    monkeypatch.setattr(probe, "tensorrt_version", lambda: "10.3.0")
    shapes = ((1, 3, 8, 8),) * 3
    k0 = builder.device_key(BuildOptions(precision="fp16"), "ab" * 32, shapes)
    k1 = builder.device_key(BuildOptions(precision="fp16", device=1), "ab" * 32, shapes)
    assert (k0.device, k0.multiprocessors, k0.memory_mib) == (0, 8, 15000)
    assert (k1.device, k1.multiprocessors, k1.memory_mib) == (1, 4, 7000)
    assert k0.choice_id() != k1.choice_id()


def test_validate_opens_tensorrt_with_a_profile_covering_its_batch(full_bundle, monkeypatch):
    """Control flow only: validate's TensorRT rows ask for a 1..batch profile and may judge failed models.

    The runner is a FAKE that records its BuildOptions and refuses to run (no TensorRT here)."""
    from edgekit.backends import select
    from edgekit.backends.tensorrt import runner as trt_runner
    from edgekit.errors import DeviceError
    from edgekit.quant.gate import evaluate
    from edgekit.tiny import colour_frames

    seen = []

    def fake_from_bundle(bundle, precision="fp32", **options):
        seen.append(BuildOptions(precision=precision, **options))
        raise DeviceError("FAKE: no TensorRT")

    monkeypatch.setattr(select, "tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_runner.TensorRTRunner, "from_bundle", staticmethod(fake_from_bundle))
    x = full_bundle.preprocess.batch(np.concatenate([colour_frames()] * 8))  # 40 images, batches of 16
    report = evaluate(full_bundle, x, max_drop=1.0, batch_size=16)
    assert [o.precision for o in seen] == ["fp32", "fp16", "int8"]
    assert all(o.batch == (1, 16, 16) for o in seen)
    assert [r.skipped for r in report.results if r.backend == "tensorrt"] == ["FAKE: no TensorRT"] * 3


class FakeDataType:
    """FAKE stand-in for a ``trt.DataType`` member: only its ``name`` matters to the mapping."""

    def __init__(self, name):
        self.name = name


def test_dtype_mapping():
    assert numpy_dtype(FakeDataType("FLOAT")) == np.float32
    assert numpy_dtype(FakeDataType("HALF")) == np.float16
    assert numpy_dtype(FakeDataType("INT8")) == np.int8
    assert numpy_dtype("DataType.INT32") == np.int32  # str() form of a pybind11 enum member
    with pytest.raises(ModelError, match="BF16"):
        numpy_dtype(FakeDataType("BF16"))


def test_tensorrt_and_pycuda_only_imported_inside_the_layer():
    offenders = []
    for path in (REPO / "edgekit").rglob("*.py"):
        if "backends/tensorrt" in path.as_posix():
            continue
        text = path.read_text()
        if "import tensorrt" in text or "import pycuda" in text or "from pycuda" in text:
            offenders.append(str(path))
    assert offenders == []
    code = (
        "import sys, edgekit.cli.build, edgekit.cli.bench, edgekit.cli.doctor, edgekit.bench, edgekit.doctor,"
        " edgekit.backends.select, edgekit.backends.tensorrt.builder, edgekit.backends.tensorrt.runner,"
        " edgekit.backends.tensorrt.cache, edgekit.backends.tensorrt.cuda, edgekit.backends.tensorrt.network,"
        " edgekit.graph.engine_nms, edgekit.backends.measure;"
        " bad = [m for m in ('tensorrt', 'pycuda', 'cuda', 'tensorflow') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(tensorrt_available(), reason="checks the message shown where TensorRT is missing")
def test_build_without_tensorrt_is_one_clear_line(cli, tiny_bundle):
    result = cli("build", tiny_bundle.path, "--precision", "fp16")
    assert_one_line_error(result, "TensorRT is not available", "python3-libnvinfer")


def test_build_bad_input_is_one_line(cli, tmp_path, tiny_bundle):
    assert_one_line_error(cli("build", tmp_path / "missing"), "does not exist")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "edgekit.json").write_text("{truncated")
    assert_one_line_error(cli("build", tmp_path / "bad"), "corrupt manifest")
    assert_one_line_error(cli("build", tiny_bundle.path, "--batch", "8,1,1"), "--batch")
    assert_one_line_error(cli("build", tiny_bundle.path, "--workspace", "0"), "--workspace")


# ---- on a device ----------------------------------------------------------------------------
@needs_tensorrt
@pytest.mark.tensorrt
def test_selftest_every_precision_matches_onnxruntime(tmp_path):
    from edgekit.doctor import selftest

    results = selftest("tensorrt", cache_dir=str(tmp_path))
    assert [r.precision for r in results] == ["fp32", "fp16", "int8"]
    assert results[0].status == "pass"
    for r in results:
        assert r.status in ("pass", "unsupported"), r.line()


@needs_tensorrt
@pytest.mark.tensorrt
def test_build_then_cache_hit_and_runner(cli, full_bundle, tmp_path):
    from edgekit.backends.select import open_runner
    from edgekit.tiny import colour_frames

    first = cli("build", full_bundle.path, "--precision", "fp32", "--batch", "1,2,5", "--cache-dir", tmp_path)
    assert first.code == 0 and first.out.startswith("built: "), first
    plan = Path(first.out.split(": ", 1)[1].strip())
    assert plan.is_file() and Path(str(plan) + ".json").is_file()
    second = cli("build", full_bundle.path, "--precision", "fp32", "--batch", "1,2,5", "--cache-dir", tmp_path)
    assert second.out.strip() == f"cached: {plan}"
    frames = full_bundle.preprocess.batch(colour_frames())
    with open_runner(full_bundle, "tensorrt", "fp32", batch=(1, 2, 5), cache_dir=tmp_path) as runner:
        assert runner.plan_path == plan
        for n in (1, 3, 5):
            probs = runner.infer(frames[:n])["probs"]
            assert probs.shape == (n, 3) and list(probs.argmax(1)) == [0, 1, 2, 1, 2][:n]
        with pytest.raises(ModelError, match="outside the engine's profile"):
            runner.infer(np.concatenate([frames, frames]))


def _nms_bundle(path: Path):
    """A bundle whose fp32 model is only TensorRT's EfficientNMS_TRT plugin over a sliced input [1, 8, 7]."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.bundle import Bundle

    path.mkdir(parents=True)
    nodes = [
        helper.make_node("Slice", ["input", "s0", "s4", "ax"], ["boxes"]),
        helper.make_node("Slice", ["input", "s4", "s7", "ax"], ["scores"]),
        helper.make_node("EfficientNMS_TRT", ["boxes", "scores"],
                         ["num_detections", "detection_boxes", "detection_scores", "detection_classes"],
                         background_class=-1, box_coding=0, iou_threshold=0.5, max_output_boxes=4,
                         plugin_version="1", score_activation=0, score_threshold=0.1),
    ]
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s0", 0), ("s4", 4), ("s7", 7), ("ax", 2))]
    outputs = [helper.make_tensor_value_info("num_detections", TensorProto.INT32, [1, 1]),
               helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [1, 4, 4]),
               helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [1, 4]),
               helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [1, 4])]
    graph = helper.make_graph(nodes, "nms", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 7])],
                              outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path / "nms.onnx")
    bundle = Bundle(path, {"input": {"name": "input", "shape": [1, 8, 7]}, "models": {}})
    bundle.models["fp32"] = {"path": "nms.onnx", "usable": True}
    return bundle


@needs_tensorrt
@pytest.mark.tensorrt
def test_plugin_engine_loads_from_the_cache_in_a_fresh_process(tmp_path):
    """init_libnvinfer_plugins runs before parsing and before deserializing: a cached engine holding
    EfficientNMS_TRT is read back (not rebuilt) by a new process."""
    from edgekit.backends.tensorrt import cuda
    from edgekit.backends.tensorrt.builder import load_engine

    bundle = _nms_bundle(tmp_path / "nms")
    options = BuildOptions(cache_dir=tmp_path / "cache")
    with cuda.CudaContext():
        engine, plan, built = load_engine(bundle, options)
        assert engine is not None and built
        del engine  # while the context is current
    code = (
        "import sys, json; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from edgekit.backends.tensorrt import cuda\n"
        "from edgekit.backends.tensorrt.builder import load_engine\n"
        "from edgekit.backends.tensorrt.recipe import BuildOptions\n"
        "from edgekit.bundle import Bundle\n"
        "bundle = Bundle(Path(sys.argv[2]), {'input': {'name': 'input', 'shape': [1, 8, 7]},\n"
        "                'models': {'fp32': {'path': 'nms.onnx', 'usable': True}}})\n"
        "with cuda.CudaContext():\n"
        "    engine, plan, built = load_engine(bundle, BuildOptions(cache_dir=Path(sys.argv[3])))\n"
        "    ok = engine is not None\n"
        "    del engine\n"
        "print(json.dumps({'built': built, 'plan': str(plan), 'ok': ok}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO), str(bundle.path), str(tmp_path / "cache")],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"built": False, "plan": str(plan), "ok": True}


@needs_tensorrt
@pytest.mark.tensorrt
def test_engine_nms_runs_at_the_threshold_the_builder_wrote(tmp_path):
    """Two engines of one detector: the loop's (score threshold 0.5) drops a 0.3 box that validate's
    (0.01) keeps; both are cached side by side."""
    from edgekit.backends.tensorrt.runner import TensorRTRunner

    bundle = _nms_bundle(tmp_path / "nms")
    bundle.manifest["task"] = "detection"
    bundle.models["fp32"]["tensorrt"] = {"path": "nms.onnx"}
    x = np.zeros((1, 8, 7), np.float32)
    x[0, :2, :4] = [[0, 0, 1, 1], [2, 2, 3, 3]]
    x[0, 0, 4], x[0, 1, 5] = 0.9, 0.3  # two disjoint boxes, one per class
    counts, plans = [], set()
    for threshold in (0.5, 0.01):
        with TensorRTRunner.from_bundle(bundle, "fp32", cache_dir=tmp_path / "cache", nms_score_threshold=threshold) as r:
            counts.append(int(r.infer(x)["num_detections"].ravel()[0]))
            plans.add(r.plan_path)
    assert counts == [1, 2] and len(plans) == 2
