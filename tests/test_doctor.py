"""doctor: the environment report, its exit codes, the parsers, and the self-test's comparison."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error

from edgekit import doctor
from edgekit.backends.select import tensorrt_available
from edgekit.backends.tensorrt import probe
from edgekit.opencv_build import parse as parse_opencv_build

no_tensorrt = pytest.mark.skipif(tensorrt_available(), reason="checks the report of a machine without TensorRT/GPU")

OPENCV_INFO = """
  GUI:                           NONE
    GTK+:                        NO
  Video I/O:
    FFMPEG:                      YES
      avcodec:                   YES (58.134.100)
    GStreamer:                   YES (1.20.3)
    v4l/v4l2:                    NO
"""


def test_parsers():
    assert doctor.parse_nv_tegra_release(
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024") == "36.4.0"
    assert doctor.parse_nv_tegra_release("# R32 (release), REVISION: 7.1, GCID: 29818004") == "32.7.1"
    assert doctor.parse_nv_tegra_release("garbage") is None
    assert doctor.jetpack_for_l4t("36.4.0") == "6.1/6.2"
    assert doctor.jetpack_for_l4t("35.5.0") == "5.1.x"
    assert doctor.jetpack_for_l4t("99.0") is None
    assert parse_opencv_build(OPENCV_INFO) == {"GStreamer": True, "V4L2": False, "FFMPEG": True, "GUI": "NONE"}
    assert probe.parse_cuda_version('{"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}') == "12.6.68"
    assert probe.parse_cuda_version("CUDA Version 10.2.300") == "10.2.300"
    assert probe.parse_cuda_version("nothing") is None
    header = "#define CUDNN_MAJOR 9\n#define CUDNN_MINOR 3\n#define CUDNN_PATCHLEVEL 0\n"
    assert probe.parse_cudnn_header(header) == "9.3.0" and probe.parse_cudnn_header("#define CUDNN_MAJOR 9") is None


def test_a_build_without_gui_line_has_no_gui():
    assert parse_opencv_build("  GStreamer:  NO\n")["GUI"] == "NONE"


def test_real_opencv_build_is_parsed():
    import cv2

    build = parse_opencv_build(cv2.getBuildInformation())
    assert set(build) == {"GStreamer", "V4L2", "FFMPEG", "GUI"} and isinstance(build["GStreamer"], bool)


def test_l4t_from_nv_tegra_release(tmp_path, monkeypatch):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    monkeypatch.setattr(doctor, "NV_TEGRA_RELEASE", str(release))
    assert doctor.l4t_release() == "35.4.1"


@no_tensorrt
def test_report_without_gpu_exit_zero(cli):
    result = cli("doctor")
    assert result.code == 0, result
    text = result.out
    assert text.splitlines()[0].startswith("edgekit doctor: ready on the CPU")  # the verdict first
    required, optional = text.split("\nrequired")[1].split("\noptional")
    lines = {line.strip()[8:30].strip(): line.strip() for line in text.splitlines() if line.split()
             and line.split()[0] in ("ok", "missing", "absent")}
    for name in ("Python", "ONNX Runtime", "CPU inference", "OpenCV"):
        assert lines[name].startswith("ok") and lines[name] in required, lines[name]
    for name in ("TensorRT", "GPU"):
        assert lines[name].startswith("absent") and lines[name] in optional, lines[name]
    assert lines["CUDA layer"] in optional  # pycuda or cuda-python, whichever imports here (or neither)
    assert "missing" not in text  # nothing required is missing on a healthy CPU machine
    assert "python3-libnvinfer" in text  # the hint under the TensorRT line
    assert "means: no TensorRT engines" in text  # and what its absence means


def test_gui_line_judges_as_display_does(cli, monkeypatch):
    from edgekit.stream import sinks

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    why = sinks.gui_available()
    report = json.loads(cli("doctor", "--json").out)
    gui = next(c for c in report["checks"] if c["name"] == "OpenCV GUI")
    assert gui["ok"] is False and gui["detail"] == why  # "no screen" or "no GUI support", never "QT5" alone


def test_jetson_report_names_the_selftest(monkeypatch):
    monkeypatch.setattr(doctor, "l4t_release", lambda: "36.4.0")
    text = doctor.environment().text()
    assert "`edgekit doctor --selftest` is the one command that proves TensorRT" in text


@no_tensorrt
def test_require_tensorrt_and_selftest_fail_without_it(cli):
    assert_one_line_error(cli("doctor", "--require-tensorrt"), "TensorRT", "GPU")
    result = cli("doctor", "--selftest")
    assert_one_line_error(result, "--selftest needs TensorRT")
    assert "self-test" not in result.out


def test_json_report(cli):
    result = cli("doctor", "--json")
    report = json.loads(result.out)
    names = [c["name"] for c in report["checks"]]
    for name in ("Python", "edgekit", "ONNX Runtime", "TensorRT", "CUDA layer", "CUDA", "cuDNN", "GPU", "DLA", "JetPack", "cameras",
                 "OpenCV GStreamer", "OpenCV V4L2", "OpenCV FFMPEG", "OpenCV GUI"):
        assert name in names
    assert report["ok"] == (result.code == 0)


def test_missing_required_item_fails(monkeypatch, cli):
    monkeypatch.setattr(doctor, "cpu_inference_check", lambda: (False, "broken"))
    assert_one_line_error(cli("doctor"), "CPU inference")


def test_selftest_comparison_on_onnxruntime(monkeypatch):
    """The self-test's machinery, run against ONNX Runtime's fp16 and Q/DQ models (TensorRT's job on a device)."""
    results = doctor.selftest("onnxruntime")
    assert [(r.precision, r.status) for r in results] == [("fp32", "pass"), ("fp16", "pass"), ("int8", "pass")]
    assert results[0].max_error == 0.0 and 0 < results[2].max_error < doctor.TOLERANCE["int8"]
    monkeypatch.setitem(doctor.TOLERANCE, "int8", 1e-9)  # the Q/DQ model's real error must now fail
    assert doctor.selftest("onnxruntime", precisions=("int8",))[0].status == "fail"


def test_verdict_names_the_checks_environment_makes():
    """The verdict's TensorRT condition uses the names environment() gives its checks (a renamed check
    made a healthy Jetson read 'ready on the CPU')."""
    names = {c.name for c in doctor.environment().checks}
    needed = {"TensorRT", "CUDA layer", "GPU"}
    assert needed <= names
    gpu_ready = doctor.Report([doctor.Check(n, True, required=n == "Python") for n in names])
    assert gpu_ready.verdict().startswith("ready: TensorRT on the GPU")
    no_layer = doctor.Report([doctor.Check(n, n != "CUDA layer", required=n == "Python") for n in names])
    assert no_layer.verdict().startswith("ready on the CPU")
    assert all(n in doctor.MEANING for n in needed)  # each absent one says what it means
