"""The device-memory layer: pycuda, else cuda-python, else one clear error; ``auto`` never hides its absence.

Here there is no NVIDIA driver: cuda-python imports and its calls fail, which is checked for real. Layers
are made absent for real too (a ``None`` entry in ``sys.modules`` makes ``import`` raise ImportError).
The GPU round trip runs where a GPU answers.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from edgekit.backends.tensorrt import cuda, probe
from edgekit.errors import DeviceError
from conftest import assert_one_line_error

PYCUDA = ("pycuda", "pycuda.driver")
CUDA_PYTHON = ("cuda", "cuda.bindings", "cuda.bindings.driver", "cuda.cuda")
has_cuda_python = importlib.util.find_spec("cuda") is not None and (
    importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cuda") is not None
)
needs_cuda_python = pytest.mark.skipif(not has_cuda_python, reason="cuda-python is not installed (pip install cuda-python)")


@pytest.fixture
def fresh_layer(monkeypatch):
    """Choose the layer anew in this test (and drop the probes' cached answers), restoring both after."""
    monkeypatch.setattr(cuda, "_LAYER", None)
    for fn in (probe.gpu_present, probe.gpu_info, probe.cuda_version):
        fn.cache_clear()
    yield monkeypatch
    for fn in (probe.gpu_present, probe.gpu_info, probe.cuda_version):
        fn.cache_clear()


def hide(monkeypatch, modules) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@needs_cuda_python
def test_cuda_python_is_chosen_without_pycuda(fresh_layer):
    hide(fresh_layer, PYCUDA)
    lay = cuda.layer()
    assert lay.name == "cuda-python"
    assert probe.cuda_layer().startswith("cuda-python ")


def test_neither_layer_is_one_error_naming_both(fresh_layer):
    hide(fresh_layer, PYCUDA + CUDA_PYTHON)
    with pytest.raises(DeviceError) as err:
        cuda.layer()
    message = str(err.value)
    assert "pip install pycuda" in message and "pip install cuda-python" in message and "\n" not in message
    assert probe.cuda_layer() is None
    assert probe.gpu_present() is False and probe.gpu_info() is None  # probes never raise


@needs_cuda_python
@pytest.mark.skipif(probe.gpu_present(), reason="checks the error where no NVIDIA driver/GPU answers")
def test_cuda_python_without_driver_fails_cleanly(fresh_layer):
    hide(fresh_layer, PYCUDA)
    with pytest.raises(DeviceError) as err:
        cuda.CudaContext(0).push()
    assert str(err.value).startswith("CUDA cannot open GPU 0: ") and "\n" not in str(err.value)
    with pytest.raises(cuda.CudaPythonError):
        cuda.layer().driver_version()
    assert probe.gpu_present() is False and probe.gpu_info() is None


# A labelled fake: TensorRT "imports" (probe.tensorrt_version answers a version) on this machine without it.
# The real path is `edgekit bench BUNDLE` on a Jetson with python3-libnvinfer and no pycuda/cuda-python.
def test_auto_refuses_cpu_fallback_when_tensorrt_imports_without_a_cuda_layer(fresh_layer, cli, tiny_bundle):
    hide(fresh_layer, PYCUDA + CUDA_PYTHON)
    fresh_layer.setattr(probe, "tensorrt_version", lambda: "10.3.0")
    result = cli("bench", str(tiny_bundle.path), "--iterations", "2", "--warmup", "0")
    assert_one_line_error(result, "TensorRT 10.3.0 imports but neither pycuda nor cuda-python imports",
                          "pip install pycuda", "--backend onnxruntime")
    ok = cli("bench", str(tiny_bundle.path), "--backend", "onnxruntime", "--iterations", "2", "--warmup", "0")
    assert ok.code == 0, ok


def test_doctor_names_the_layer(fresh_layer):
    from edgekit.doctor import environment

    hide(fresh_layer, PYCUDA + CUDA_PYTHON)
    check = next(c for c in environment().checks if c.name == "CUDA layer")
    assert not check.ok and "cuda-python" in check.hint


@pytest.mark.gpu
@pytest.mark.skipif(not probe.gpu_present(), reason="needs an NVIDIA GPU and pycuda or cuda-python (none here)")
@pytest.mark.parametrize("only", ["pycuda", "cuda-python"])
def test_round_trip_through_pinned_and_device_buffers(fresh_layer, only):
    if only == "cuda-python":
        hide(fresh_layer, PYCUDA)
    lay = None
    try:
        lay = cuda.layer()
    except DeviceError:
        pass
    if lay is None or lay.name != only:
        pytest.skip(f"{only} is not importable here")
    data = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    with cuda.CudaContext(0):
        stream = cuda.Stream()
        assert isinstance(stream.handle, int)
        buf = cuda.HostDeviceBuffer((4, 3, 5), np.float32)
        buf.to_device(data, stream)
        stream.synchronize()
        buf.host[:] = 0
        out = buf.to_host(2, stream)
        stream.synchronize()
        np.testing.assert_array_equal(out, data)
        buf.device.upload(data[::-1])  # the synchronous path (calibration)
        out = buf.to_host(2, stream)
        stream.synchronize()
        np.testing.assert_array_equal(out, data[::-1])
        buf.free()
