"""Verdicts stick: a model that failed its accuracy gate is refused by every command and the Python API,
``--precision auto`` picks the best usable model, and ``validate`` records its verdict in the manifest.

The bundles are edgekit.tiny's colour classifier. The "broken" model is that classifier with its
classes rotated (red is read as green ...): a real model that really fails a real gate on real
images, judged by ``edgekit validate`` (no verdict is written by hand, except where a test says so).
"""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
from conftest import assert_one_line_error

from edgekit.backends import select
from edgekit.backends.select import choose_model, open_runner
from edgekit.bundle import Bundle
from edgekit.errors import DeviceError, GateError
from edgekit.tiny import LABELS, tiny_classifier, write_tiny_bundle

no_tensorrt = pytest.mark.skipif(select.tensorrt_available(), reason="checks the CPU path, where TensorRT is missing")


@pytest.fixture(autouse=True)
def _int8_cpu_measures_faster(monkeypatch, tmp_path):
    """FAKE timings: ``auto`` measures its candidates (tests/test_measured_auto.py tests that); these tests
    are about verdicts, so the int8_cpu variant is made to time faster than fp32, in a fresh timing cache."""
    from edgekit.backends import measure

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(measure, "time_runner", lambda runner, batch: 1.0 if "int8_cpu" in str(runner.model_path) else 2.0)


def broken_classifier():
    """The tiny classifier with its output classes rotated: 0 % top-1 on pure colours."""
    import onnx.numpy_helper as nh

    model = tiny_classifier()
    for i, init in enumerate(model.graph.initializer):
        if init.name == "fc_w":
            model.graph.initializer[i].CopyFrom(nh.from_array(np.roll(nh.to_array(init), 1, axis=0), "fc_w"))
    return model


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, colour_media):
    root = tmp_path_factory.mktemp("labelled")
    for label in LABELS:
        colour_media.folder(root / label, [label] * 4)
    return root


def make_bundle(path, int8_cpu_broken: bool, int8_broken: bool = False) -> Bundle:
    """Tiny bundle with fp16, int8 (Q/DQ) and an int8_cpu variant, either one optionally broken."""
    import onnx

    bundle = write_tiny_bundle(path, variants=True)
    good_int8 = bundle.model_path("int8")
    broken = path / "broken.onnx"
    onnx.save(broken_classifier(), broken)
    bundle.add_model("int8_cpu", broken if int8_cpu_broken else good_int8, "model.int8_cpu.onnx",
                     precision="int8", for_backends=["onnxruntime"])
    if int8_broken:
        bundle.add_model("int8", broken, "model.int8.onnx", precision="int8")
    broken.unlink()
    bundle.save()
    return Bundle.load(path)


@pytest.fixture
def failed(tmp_path, labelled, cli):
    """A bundle whose int8_cpu and int8 failed `edgekit validate` (exit 3); fp16 passed."""
    bundle = make_bundle(tmp_path / "failed", int8_cpu_broken=True, int8_broken=True)
    result = cli("validate", bundle.path, "--images", labelled, "--no-tensorrt")
    assert result.code == 3, result
    return Bundle.load(bundle.path)


def test_validate_records_its_verdict_and_a_later_pass_restores_it(tmp_path, labelled, cli):
    bundle = make_bundle(tmp_path / "b", int8_cpu_broken=True)
    result = cli("validate", bundle.path, "--images", labelled, "--no-tensorrt")
    assert_one_line_error(result, "accuracy gate failed", "int8_cpu")
    models = Bundle.load(bundle.path).models
    v = models["int8_cpu"]["validation"]
    assert models["int8_cpu"]["usable"] is False and v["passed"] is False
    assert (v["metric"], v["value"], v["reference"], v["drop"], v["max_drop"], v["images"]) == \
        ("top1", 0.0, 100.0, 100.0, 1.0, 12)
    assert datetime.datetime.fromisoformat(v["at"]).tzinfo is not None
    assert models["int8"]["validation"]["passed"] is True and models["int8"]["usable"] is True
    assert models["fp16"]["validation"]["drop"] == 0.0
    assert "validation" not in models["fp32"] and models["fp32"]["usable"] is True  # the reference has no gate
    # The verdict is honoured afterwards: int8 on the CPU runs the Q/DQ model, which passed, and says why ...
    r = cli("bench", bundle.path, "--backend", "onnxruntime", "--precision", "int8", "--iterations", 2, "--json")
    assert r.code == 0 and json.loads(r.out)["precision"] == "int8", r
    assert "skipped int8_cpu failed `edgekit validate`" in r.err
    # ... until a later validation passes (here with a generous --max-drop): usable again.
    assert cli("validate", bundle.path, "--images", labelled, "--no-tensorrt", "--max-drop", 100).code == 0
    again = Bundle.load(bundle.path)
    assert again.usable("int8_cpu") and again.models["int8_cpu"]["validation"]["max_drop"] == 100
    r = cli("bench", again.path, "--backend", "onnxruntime", "--precision", "int8", "--iterations", 2, "--json")
    assert r.code == 0 and json.loads(r.out)["precision"] == "int8_cpu", r


def test_every_command_refuses_a_failed_gate(failed, tmp_path, cli, colour_media):
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(6))
    fragments = ("int8_cpu failed `edgekit validate`", "top-1 % 0 (fp32 100), a drop of 100 points (max 1) on 12 images", "--allow-failed-gate")
    for args in (
        ("run", failed.path, "--source", video, "--precision", "int8", "--backend", "onnxruntime",
         "--json", tmp_path / "out.jsonl"),
        ("bench", failed.path, "--precision", "int8", "--backend", "onnxruntime"),
        ("service", "install", failed.path, "--root", tmp_path / "root", "--source", video, "--precision", "int8"),
    ):
        result = cli(*args)
        assert_one_line_error(result, *fragments)
        assert result.code == 3, result
    assert not (tmp_path / "root").exists()  # service install refused before writing anything
    assert not (tmp_path / "out.jsonl").exists()  # run refused before opening its outputs
    # build refuses on TensorRT's int8 model even here, before it looks for TensorRT
    result = cli("build", failed.path, "--precision", "int8")
    assert_one_line_error(result, "int8 failed `edgekit validate`", "--allow-failed-gate")
    # the Python API too
    with pytest.raises(GateError, match="int8_cpu failed"):
        open_runner(failed, "onnxruntime", "int8")


@no_tensorrt
def test_allow_failed_gate_runs_it_with_a_warning(failed, tmp_path, cli, colour_media):
    labels = colour_media.labels(6)
    video = colour_media.video(tmp_path / "v.mp4", labels)
    out = tmp_path / "out.jsonl"
    r = cli("run", failed.path, "--source", video, "--precision", "int8", "--allow-failed-gate", "--json", out)
    assert r.code == 0, r
    assert "edgekit: warning: int8_cpu failed `edgekit validate`" in r.err and "running it anyway" in r.err
    got = [json.loads(x)["results"][0]["label"] for x in out.read_text().splitlines()]
    assert got == [LABELS[(LABELS.index(x) + 1) % 3] for x in labels]  # the broken model did run
    r = cli("service", "install", failed.path, "--root", tmp_path / "root", "--source", video, "--precision", "int8",
            "--allow-failed-gate")
    assert r.code == 0 and "running it anyway" in r.err, r


@no_tensorrt
def test_auto_default_uses_int8_cpu_when_it_passed(tmp_path, labelled, cli, colour_media):
    """`edgekit run BUNDLE --source video` with no --precision runs int8_cpu on ONNX Runtime once it passed."""
    bundle = make_bundle(tmp_path / "good", int8_cpu_broken=False)
    assert cli("validate", bundle.path, "--images", labelled, "--no-tensorrt").code == 0
    labels = colour_media.labels(9)
    video = colour_media.video(tmp_path / "v.mp4", labels)
    out = tmp_path / "out.jsonl"
    r = cli("run", bundle.path, "--source", video, "--json", out)
    assert r.code == 0, r
    assert "backend: onnxruntime (CPUExecutionProvider; int8_cpu model, int8): auto: measured here" in r.err
    assert "int8_cpu 2.00x fp32; int8_cpu passed" in r.err
    assert [json.loads(x)["results"][0]["label"] for x in out.read_text().splitlines()] == labels
    bench = json.loads(cli("bench", bundle.path, "--iterations", 2, "--json").out)
    assert bench["precision"] == "int8_cpu"


@no_tensorrt
def test_auto_skips_a_failed_model_and_says_why(failed, tmp_path, cli, colour_media):
    labels = colour_media.labels(6)
    video = colour_media.video(tmp_path / "v.mp4", labels)
    out = tmp_path / "out.jsonl"
    r = cli("run", failed.path, "--source", video, "--json", out)
    assert r.code == 0, r
    line = next(x for x in r.err.splitlines() if x.startswith("edgekit: backend:"))
    assert "fp32 model, fp32): auto: skipped int8_cpu failed `edgekit validate`" in line
    assert [json.loads(x)["results"][0]["label"] for x in out.read_text().splitlines()] == labels
    assert cli("service", "install", failed.path, "--root", tmp_path / "root", "--source", video).code == 0


def test_choice_reaches_metrics_and_status(tmp_path, colour_media):
    from edgekit.stream.loop import run_loop

    bundle = write_tiny_bundle(tmp_path / "t")
    video = colour_media.video(tmp_path / "v.mp4", colour_media.labels(3))
    summary = run_loop(bundle, str(video), backend="onnxruntime")
    assert summary["model"]["key"] == "fp32" and summary["model"]["reason"].startswith("auto")
    from edgekit.stream.metrics import Metrics

    m = Metrics()
    m.model = {"backend": "onnxruntime", "key": "int8_cpu", "precision": "int8", "reason": 'a "quoted" reason'}
    assert 'edgekit_model_info{backend="onnxruntime",key="int8_cpu",precision="int8",reason="a \\"quoted\\" reason"} 1' \
        in m.prometheus()
    assert m.snapshot()["model"]["key"] == "int8_cpu"


def test_inspect_shows_the_verdicts(failed, cli):
    r = cli("inspect", failed.path)
    assert r.code == 0, r
    assert "validate: FAIL, top-1 0.00% vs 100.00% fp32, drop 100.00 points (max 1) on 12 images" in r.out
    assert "refused by build/bench/run/service: int8 failed" in r.out
    assert "validate: pass, top-1 100.00%" in r.out  # fp16
    data = json.loads(cli("inspect", failed.path, "--json").out)
    assert data["models"]["int8_cpu"]["usable"] is False and "failed" in data["models"]["int8_cpu"]["verdict"]
    assert data["models"]["fp16"]["verdict"] is None


def test_quantize_gate_verdict_is_named(tmp_path):
    """A verdict from quantize's gate (the entry quantize writes, reproduced here) reads as such."""
    bundle = write_tiny_bundle(tmp_path / "q", variants=True)
    bundle.models["int8"].update(usable=False, gate={"images": 200, "labelled": False, "drop": 3.5, "max_drop": 1.0,
                                                     "agreement": 96.5})
    assert bundle.verdict("int8") == ("int8 failed the quantize accuracy gate: top-1 agreement with FP32 dropped "
                                      "3.5 points (max 1) on 200 held-out images")
    assert bundle.verdict("fp16") is None and bundle.usable("fp16")


# ---- choose_model on TensorRT: pure decisions, no TensorRT needed ---------------------------------
def test_tensorrt_auto_order_device_support_and_dla(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "v", variants=True)
    assert choose_model(bundle, "tensorrt", "auto", compute_capability="8.7").key == "int8"
    nano = choose_model(bundle, "tensorrt", "auto", compute_capability="5.3")  # Jetson Nano: no fast INT8
    assert (nano.key, nano.precision) == ("fp16", "fp16") and "no fast int8" in nano.reason
    bundle.models["int8"]["usable"] = False
    c = choose_model(bundle, "tensorrt", "auto", compute_capability="8.7")
    assert c.key == "fp16" and "skipped int8 is marked unusable" in c.reason
    bundle.models["fp16"]["usable"] = False
    assert choose_model(bundle, "tensorrt", "auto").key == "fp32"
    with pytest.raises(GateError, match="no usable int8 or fp16 model for DLA"):
        choose_model(bundle, "tensorrt", "auto", dla=True)
    with pytest.raises(DeviceError, match="no fast fp32|runs here"):
        choose_model(bundle, "tensorrt", "auto", compute_capability="2.0")
    allowed = choose_model(bundle, "tensorrt", "int8", allow_failed_gate=True)
    assert allowed.key == "int8" and "running it anyway" in allowed.warning
    # fp16 without an fp16 model (TensorRT < 11 builds it from fp32): nothing to judge, the builder decides
    fp32_only = write_tiny_bundle(tmp_path / "f")
    assert choose_model(fp32_only, "tensorrt", "fp16").key == "fp32"
    assert choose_model(fp32_only, "tensorrt", "auto", dla=False).key == "fp32"


def test_onnxruntime_int8_falls_back_to_the_passing_qdq_model(tmp_path):
    bundle = make_bundle(tmp_path / "b", int8_cpu_broken=True)
    bundle.models["int8_cpu"]["usable"] = False
    c = choose_model(bundle, "onnxruntime", "int8")
    assert c.key == "int8" and "skipped int8_cpu is marked unusable" in c.reason
    assert choose_model(bundle, "onnxruntime", "auto", cpu=False).key == "fp32"  # GPU providers: fp32
    with open_runner(bundle, "onnxruntime", "int8") as runner:
        assert runner.choice.key == "int8" and runner.model_path.name == "model.int8.onnx"


def test_service_install_reads_the_run_options_both_ways(failed, tmp_path, cli):
    for args in (("--precision=int8",), ("--backend", "onnxruntime", "--precision", "int8")):
        result = cli("service", "install", failed.path, "--root", tmp_path / "root", "--camera", "0", *args)
        assert_one_line_error(result, "failed `edgekit validate`", "--allow-failed-gate")
    assert cli("service", "install", failed.path, "--root", tmp_path / "root", "--camera", "0",
               "--precision=fp32").code == 0


def test_dla_with_a_batch_range_is_one_line(cli, failed):
    assert_one_line_error(cli("build", failed.path, "--precision", "fp16", "--dla", "0", "--batch", "1,2,4"),
                          "DLA needs a static batch", "--batch N")
