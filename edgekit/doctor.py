"""What a user on real hardware runs first: an environment report and the TensorRT self-test.

Exit-code semantics (``edgekit doctor``): 0 when everything ``edgekit run`` needs here is present,
that is Python, numpy, OpenCV and ONNX Runtime running the tiny model on the CPU; TensorRT, CUDA, a GPU
and cameras are reported, with hints, but only required with ``--require-tensorrt`` (then TensorRT,
pycuda or cuda-python, and a GPU must answer). ``--selftest`` always requires TensorRT and fails when any precision
the device supports disagrees with ONNX Runtime.
"""

from __future__ import annotations

import glob
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgekit import __version__
from edgekit.bundle import PRECISIONS
from edgekit.errors import EdgekitError, first_line

NV_TEGRA_RELEASE = "/etc/nv_tegra_release"
# L4T release -> JetPack (tensorrt-facts.md)
JETPACK = {"32.6": "4.6", "32.7": "4.6.x", "35": "5.1.x", "36.2": "6.0", "36.3": "6.0", "36.4": "6.1/6.2", "38": "7.x"}
# max |TensorRT - ONNX Runtime fp32| on the probabilities of the self-test's natural frames. INT8: on
# the host, ONNX Runtime running the same Q/DQ model (the quantization TensorRT applies) differs from
# FP32 by at most 1.4e-3 on those frames; 1e-2 leaves room for TensorRT's FP16 float layers, while a
# wrong engine errs by far more (one-hot vectors by 0.62). tests/test_selftest_judge.py re-measures both.
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "int8": 1e-2}


@dataclass
class Check:
    """One line of the report. ``required`` checks decide the exit code."""

    name: str
    ok: bool
    detail: str = ""
    hint: str = ""
    required: bool = False

    def line(self) -> str:
        status = "ok" if self.ok else "missing" if self.required else "absent"
        text = f"  {status:8s}{self.name:22s}{self.detail}"
        if not self.ok:
            meaning = MEANING.get(self.name, "")
            text += f"\n{'':32s}means: {meaning}" if meaning and not self.required else ""
            text += f"\n{'':32s}hint: {self.hint}" if self.hint else ""
        return text


@dataclass
class Report:
    checks: list

    @property
    def missing_required(self) -> list[str]:
        return [c.name for c in self.checks if c.required and not c.ok]

    @property
    def ok(self) -> bool:
        return not self.missing_required

    def verdict(self) -> str:
        """The one-line answer: can ``edgekit run`` work here, and on what."""
        have = {c.name for c in self.checks if c.ok}
        if not self.ok:
            return f"NOT READY: missing what is required: {', '.join(self.missing_required)}"
        if {"TensorRT", "CUDA layer", "GPU"} <= have:
            return ("ready: TensorRT on the GPU (prove it with `edgekit doctor --selftest`); "
                    "ONNX Runtime on the CPU as the fallback")
        return "ready on the CPU: `edgekit run` works with ONNX Runtime; TensorRT is not usable here (see optional)"

    def text(self) -> str:
        required = [c for c in self.checks if c.required]
        optional = [c for c in self.checks if not c.required]
        lines = [f"edgekit doctor: {self.verdict()}", "", "required (edgekit run needs these):"]
        lines += [c.line() for c in required]
        lines += ["", "optional (each adds something; under an absent one, what that means):"]
        lines += [c.line() for c in optional]
        jetson = any(c.name == "JetPack" and c.ok for c in self.checks)
        if jetson:
            lines += ["", "On this Jetson, `edgekit doctor --selftest` is the one command that proves TensorRT: it "
                          "builds a tiny model at FP32, FP16 and INT8 and compares each with ONNX Runtime."]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "verdict": self.verdict(),
                "checks": [{**asdict(c), "meaning": MEANING.get(c.name, "")} for c in self.checks]}


# what a missing optional item means for the user (the hint says how to get it)
MEANING = {
    "OpenCV GStreamer": "no CSI cameras (csi://) and no gst: pipelines",
    "OpenCV V4L2": "no USB cameras (0, /dev/videoN) through V4L2",
    "OpenCV FFMPEG": "no video files or RTSP streams",
    "OpenCV GUI": "no --display window (--serve shows the stream over HTTP)",
    "cameras": "no local camera now; files, image folders and network streams still work",
    "TensorRT": "no TensorRT engines: run, bench and build fall back to, or need, ONNX Runtime on the CPU",
    "CUDA layer": "TensorRT engines cannot be fed from Python (pycuda or cuda-python): run and bench use ONNX Runtime on the CPU",
    "CUDA": "no GPU inference: ONNX Runtime on the CPU",
    "cuDNN": "some TensorRT tactics are unavailable (TensorRT still builds)",
    "GPU": "no GPU inference: ONNX Runtime on the CPU",
    "DLA": "no --dla: the GPU runs the whole model",
}


# ---- parsers (pure) -------------------------------------------------------------------------
def parse_nv_tegra_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.0, ...`` -> ``"36.4.0"``."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def jetpack_for_l4t(l4t: str) -> str | None:
    """The JetPack release that ships L4T ``l4t`` (most specific match first)."""
    parts = l4t.split(".")
    return JETPACK.get(".".join(parts[:2])) or JETPACK.get(parts[0])


# ---- probes ---------------------------------------------------------------------------------
def l4t_release() -> str | None:
    """The L4T release from /etc/nv_tegra_release, else from dpkg's nvidia-l4t-core; None off Jetson."""
    try:
        found = parse_nv_tegra_release(Path(NV_TEGRA_RELEASE).read_text(errors="replace"))
        if found:
            return found
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "nvidia-l4t-core"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split("-")[0] if out.returncode == 0 and out.stdout else None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", getattr(mod, "VERSION", "unknown"))


def cpu_inference_check() -> tuple[bool, str]:
    """Run the tiny model on ONNX Runtime's CPU provider: the CPU twin of every device step."""
    try:
        from edgekit.backends.onnxruntime import OnnxRuntimeRunner
        from edgekit.tiny import LABELS, colour_frames, write_tiny_bundle

        with tempfile.TemporaryDirectory() as tmp:
            bundle = write_tiny_bundle(Path(tmp) / "tiny")
            with OnnxRuntimeRunner(bundle.model_path("fp32")) as runner:
                probs = runner.infer(bundle.preprocess.batch(colour_frames()[:3]))["probs"]
        if list(probs.argmax(axis=1)) != list(range(len(LABELS))):
            return False, "the tiny model gave wrong answers"
        return True, "tiny model classified correctly"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {first_line(exc)}"


def environment() -> Report:
    """Every check, never raising."""
    from edgekit.backends.tensorrt import probe

    checks = [
        Check("Python", sys.version_info >= (3, 8), platform.python_version(), "edgekit needs Python >= 3.8 (its workstation commands 3.10)", True),
        Check("edgekit", True, __version__),
        Check("numpy", True, np.__version__, required=True),
    ]
    ort = _version("onnxruntime")
    providers = []
    if ort:
        from edgekit.backends.onnxruntime import available_providers

        providers = available_providers()
    checks.append(Check("ONNX Runtime", ort is not None, f"{ort} ({', '.join(providers)})" if ort else "", "pip install onnxruntime", True))
    ok, detail = cpu_inference_check() if ort else (False, "needs ONNX Runtime")
    checks.append(Check("CPU inference", ok, detail, "reinstall onnxruntime and numpy", True))

    cv = _version("cv2")
    checks.append(Check("OpenCV", cv is not None, cv or "", "pip install 'opencv-python<5' (or JetPack's python3-opencv)", True))
    if cv:
        from edgekit.opencv_build import opencv_build

        build = opencv_build()
        checks += [
            Check("OpenCV GStreamer", build["GStreamer"], "yes" if build["GStreamer"] else "no",
                  "CSI cameras (nvarguscamerasrc) need JetPack's OpenCV: sudo apt install python3-opencv; pip uninstall opencv-python"),
            Check("OpenCV V4L2", build["V4L2"], "yes" if build["V4L2"] else "no", "USB cameras need an OpenCV built with V4L2"),
            Check("OpenCV FFMPEG", build["FFMPEG"], "yes" if build["FFMPEG"] else "no", "video files and RTSP need FFMPEG"),
        ]
        from edgekit.stream.sinks import gui_available

        why_not = gui_available()  # as --display judges it
        checks.append(Check("OpenCV GUI", why_not is None, build["GUI"] if why_not is None else why_not,
                            "install opencv-python (not -headless) and run where DISPLAY/WAYLAND_DISPLAY is set"))
    videos = sorted(glob.glob("/dev/video*"))
    checks.append(Check("cameras", bool(videos), " ".join(videos) or "no /dev/video*", "plug a USB/CSI camera, or run on a file or RTSP URL"))

    trt = probe.tensorrt_version()
    checks.append(Check("TensorRT", trt is not None, trt or "not importable", probe.TENSORRT_HINT))
    layer = probe.cuda_layer()
    checks.append(Check("CUDA layer", layer is not None, layer or "neither pycuda nor cuda-python imports",
                        "pip install pycuda (on the Jetson, with JetPack's CUDA in PATH) or pip install cuda-python"))
    cuda, cudnn = probe.cuda_version(), probe.cudnn_version()
    checks.append(Check("CUDA", cuda is not None, cuda or "not found", "part of JetPack (sudo apt install nvidia-jetpack)"))
    checks.append(Check("cuDNN", cudnn is not None, cudnn or "not found", "part of JetPack (sudo apt install nvidia-jetpack)"))
    gpu = probe.gpu_info()
    gpu_text = f"{gpu['name']} (sm {gpu['compute_capability']}, {gpu['memory_mib']} MiB)" if gpu else ""
    checks.append(Check("GPU", gpu is not None, gpu_text or "none", "no CUDA GPU answered (needs the NVIDIA driver and pycuda or cuda-python)"))
    dla = probe.dla_cores()
    checks.append(Check("DLA", bool(dla), f"{dla} core(s)" if dla else "none", "only Xavier and AGX/NX Orin have DLA; the GPU is used"))
    l4t = l4t_release()
    jp = jetpack_for_l4t(l4t) if l4t else None
    checks.append(Check("JetPack", l4t is not None, f"{jp or '?'} (L4T {l4t})" if l4t else "not a Jetson", "not needed off a Jetson"))
    return Report(checks)


def require_tensorrt(report: Report) -> Report:
    """Mark TensorRT, the CUDA layer and the GPU as required (``--require-tensorrt``)."""
    for check in report.checks:
        if check.name in ("TensorRT", "CUDA layer", "GPU"):
            check.required = True
    return report


# ---- self-test ------------------------------------------------------------------------------
@dataclass
class SelftestResult:
    precision: str
    status: str  # pass, fail, unsupported
    max_error: float | None = None
    detail: str = ""

    def line(self) -> str:
        err = f"max error {self.max_error:.2e} (tolerance {TOLERANCE[self.precision]:.0e})" if self.max_error is not None else ""
        return f"{self.status:12s}{self.precision:6s}{err} {self.detail}".rstrip()


def judge(precision: str, probs: np.ndarray, reference: np.ndarray) -> SelftestResult:
    """Pass when every probability of every frame is within TOLERANCE of ONNX Runtime FP32's and every top-1 agrees."""
    probs = np.asarray(probs, np.float32)
    if probs.shape != reference.shape:
        return SelftestResult(precision, "fail", detail=f"output shape {probs.shape}, expected {reference.shape}")
    err = float(np.abs(probs - reference).max())
    agree = bool((probs.argmax(axis=1) == reference.argmax(axis=1)).all())
    ok = err <= TOLERANCE[precision] and agree
    return SelftestResult(precision, "pass" if ok else "fail", err, "" if agree else "top-1 differs")


def selftest(backend: str = "tensorrt", precisions=PRECISIONS, cache_dir: str | None = None) -> list[SelftestResult]:
    """Build edgekit.tiny's model at each precision on ``backend`` and compare with ONNX Runtime FP32.

    The inputs are :func:`edgekit.tiny.natural_frames`, on which the probabilities are spread, so
    :func:`judge` compares whole probability vectors; one precision the device cannot do (a
    DeviceError) is ``unsupported``, not failed. Engines go to a fresh temporary cache unless
    ``cache_dir`` is given, so the build path is always exercised.
    """
    from edgekit.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.backends.select import open_runner
    from edgekit.backends.tensorrt.recipe import UnsupportedPrecisionError
    from edgekit.tiny import natural_frames, write_tiny_bundle

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle = write_tiny_bundle(Path(tmp) / "tiny", variants=True)
        inputs = bundle.preprocess.batch(natural_frames())
        with OnnxRuntimeRunner(bundle.model_path("fp32")) as ref_runner:
            reference = ref_runner.infer(inputs)["probs"]
        for precision in precisions:
            options = {"batch": (1, len(inputs), len(inputs)), "cache_dir": cache_dir or Path(tmp) / "engines"}
            try:
                with open_runner(bundle, backend, precision, **options) as runner:
                    probs = runner.infer(inputs)["probs"]
            except UnsupportedPrecisionError as exc:
                results.append(SelftestResult(precision, "unsupported", detail=str(exc)))
                continue
            except EdgekitError as exc:
                results.append(SelftestResult(precision, "fail", detail=str(exc)))
                continue
            results.append(judge(precision, probs, reference))
    return results
