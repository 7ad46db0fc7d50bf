"""Runner selection and the ONNX Runtime runner (the CPU twin of every device step)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import assert_one_line_error

from edgekit.backends.onnxruntime import OnnxRuntimeRunner
from edgekit.backends.select import onnxruntime_providers, open_runner, tensorrt_available
from edgekit.bundle import Bundle
from edgekit.errors import BundleError, EdgekitError, ModelError, UsageError
from edgekit.tiny import colour_frames, write_tiny_bundle

no_tensorrt = pytest.mark.skipif(tensorrt_available(), reason="checks behaviour where TensorRT is missing")


@pytest.fixture(scope="module")
def cpu_int8_bundle(tmp_path_factory):
    """The tiny bundle with fp16, int8 (Q/DQ) and an int8_cpu variant."""
    bundle = write_tiny_bundle(tmp_path_factory.mktemp("b") / "tiny", variants=True)
    bundle.add_model("int8_cpu", bundle.model_path("int8"), "model.int8_cpu.onnx")
    bundle.save()
    return Bundle.load(bundle.path)


def test_onnxruntime_runner_classifies(tiny_bundle):
    frames = tiny_bundle.preprocess.batch(colour_frames())
    with open_runner(tiny_bundle, "onnxruntime") as runner:
        assert runner.input_spec.shape == (None, 3, 32, 32) and runner.input_spec.dtype == np.float32
        assert [s.name for s in runner.output_specs] == ["probs"]
        for n in (1, 5):
            probs = runner.infer(frames[:n])["probs"]
            assert probs.shape == (n, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert list(runner.infer(frames)["probs"].argmax(1)) == [0, 1, 2, 1, 2]
    assert not runner.is_active


@no_tensorrt
def test_auto_picks_onnxruntime_and_says_so(tiny_bundle, caplog):
    caplog.set_level(logging.INFO, logger="edgekit")
    runner = open_runner(tiny_bundle, "auto")
    assert isinstance(runner, OnnxRuntimeRunner) and runner.providers == ["CPUExecutionProvider"]
    assert "backend: onnxruntime (CPUExecutionProvider; fp32 model, fp32): auto: no int8_cpu model" in caplog.text


@no_tensorrt
def test_explicit_tensorrt_without_it_is_a_device_error(cli, tiny_bundle):
    assert_one_line_error(cli("bench", tiny_bundle.path, "--backend", "tensorrt"), "TensorRT is not available")


def test_provider_order_and_model_choice(cpu_int8_bundle, monkeypatch):
    assert onnxruntime_providers(["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    # On the CPU, int8 runs the CPU-fast variant; with a GPU provider, the S8S8 Q/DQ model.
    cpu = open_runner(cpu_int8_bundle, "onnxruntime", "int8")
    assert cpu.model_path.name == "model.int8_cpu.onnx"
    import edgekit.backends.onnxruntime as ort_mod

    monkeypatch.setattr(ort_mod, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    if not tensorrt_available():
        gpu = open_runner(cpu_int8_bundle, "auto", "int8")
        assert gpu.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert gpu.model_path.name == "model.int8.onnx"


def test_options_reach_the_right_runner(tiny_bundle):
    runner = open_runner(tiny_bundle, "onnxruntime", intra_op_threads=1, inter_op_threads=1,
                         batch=(1, 4, 4), cache_dir="/nonexistent", workspace_mib=None)
    assert (runner.intra_op_threads, runner.inter_op_threads) == (1, 1)
    with runner:
        assert runner.infer(tiny_bundle.preprocess.batch(colour_frames()[:2]))["probs"].shape == (2, 3)
    with pytest.raises(UsageError, match="unknown runner option"):
        open_runner(tiny_bundle, "onnxruntime", threads=2)
    with pytest.raises(UsageError, match="unknown backend"):
        open_runner(tiny_bundle, "cuda")
    with pytest.raises(UsageError, match="unknown precision"):
        open_runner(tiny_bundle, "onnxruntime", "bf16")
    with pytest.raises(BundleError, match="no int8 model"):
        open_runner(tiny_bundle, "onnxruntime", "int8")


def test_input_validation_is_clear(tiny_bundle):
    good = tiny_bundle.preprocess.batch(colour_frames()[:1])
    with open_runner(tiny_bundle, "onnxruntime") as runner:
        with pytest.raises(ModelError, match=r"needs dtype float32, got float64"):
            runner.infer(good.astype(np.float64))
        with pytest.raises(ModelError, match=r"needs shape \?x3x32x32, got 1x3x16x16"):
            runner.infer(good[:, :, :16, :16])
        with pytest.raises(ModelError, match=r"needs shape \?x3x32x32, got 3x32x32"):
            runner.infer(good[0])
    with pytest.raises(EdgekitError, match="before activate"):
        runner.infer(good)


def test_every_precision_runs_on_the_cpu(cpu_int8_bundle):
    frames = cpu_int8_bundle.preprocess.batch(colour_frames())
    with open_runner(cpu_int8_bundle, "onnxruntime", "fp32") as runner:
        ref = runner.infer(frames)["probs"]
    for precision in ("fp16", "int8"):
        with open_runner(cpu_int8_bundle, "onnxruntime", precision) as runner:
            probs = runner.infer(frames)["probs"]
        assert np.abs(probs - ref).max() < 1e-2 and (probs.argmax(1) == ref.argmax(1)).all()


def test_corrupt_or_incomplete_bundles_are_one_line(cli, tmp_path):
    bundle = write_tiny_bundle(tmp_path / "b")
    bundle.model_path("fp32").unlink()
    assert_one_line_error(cli("bench", bundle.path, "--backend", "onnxruntime"), "lacks its fp32 model")
    corrupt = write_tiny_bundle(tmp_path / "c")
    corrupt.model_path("fp32").write_bytes(b"not an onnx model")
    assert_one_line_error(cli("bench", corrupt.path), "sha256")
    # A model that does not load (hash updated to match the garbage): ONNX Runtime's error, one line.
    corrupt.add_model("fp32", corrupt.model_path("fp32"), "model.onnx")
    corrupt.save()
    assert_one_line_error(cli("bench", corrupt.path, "--backend", "onnxruntime"), "ONNX Runtime cannot load")
    fp32_only = write_tiny_bundle(tmp_path / "d")
    assert_one_line_error(cli("bench", fp32_only.path, "--precision", "int8"), "no int8 model", "edgekit quantize")
