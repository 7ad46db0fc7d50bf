"""TensorRT layer: the pure decisions everywhere; real builds and inference only where TensorRT runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.backends.select import tensorrt_available
from edgekit.backends.tensorrt.builder import (
    BuildOptions,
    UnsupportedPrecisionError,
    check_dla,
    check_precision,
    folder_digest,
    oom_hint,
    parse_batch,
    profile_shapes,
    recipe,
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
        " edgekit.backends.tensorrt.cache, edgekit.backends.tensorrt.cuda;"
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

    first = cli("build", full_bundle.path, "--batch", "1,2,5", "--cache-dir", tmp_path)
    assert first.code == 0 and first.out.startswith("built: "), first
    plan = Path(first.out.split(": ", 1)[1].strip())
    assert plan.is_file() and Path(str(plan) + ".json").is_file()
    second = cli("build", full_bundle.path, "--batch", "1,2,5", "--cache-dir", tmp_path)
    assert second.out.strip() == f"cached: {plan}"
    frames = full_bundle.preprocess.batch(colour_frames())
    with open_runner(full_bundle, "tensorrt", "fp32", batch=(1, 2, 5), cache_dir=tmp_path) as runner:
        assert runner.plan_path == plan
        for n in (1, 3, 5):
            probs = runner.infer(frames[:n])["probs"]
            assert probs.shape == (n, 3) and list(probs.argmax(1)) == [0, 1, 2, 1, 2][:n]
        with pytest.raises(ModelError, match="outside the engine's profile"):
            runner.infer(np.concatenate([frames, frames]))
