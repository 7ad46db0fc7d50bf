"""``auto`` is measured: each usable model is timed briefly on this machine, the fastest is kept (fp32
unless another beats it beyond noise), the figures are cached per bundle + backend + device, logged,
shown by ``bench`` and kept in the runner's choice (which /status.json reports).

The bundle is edgekit.tiny's colour classifier with its Q/DQ model registered as the int8_cpu variant.
"""

from __future__ import annotations

import json
import logging

import pytest

from edgekit.backends import measure
from edgekit.backends.select import open_runner


@pytest.fixture
def cpu_variant_bundle(tmp_path):
    from edgekit.bundle import Bundle
    from edgekit.tiny import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "b", variants=True)
    bundle.add_model("int8_cpu", bundle.model_path("int8"), "model.int8_cpu.onnx", precision="int8",
                     for_backends=["onnxruntime"])
    bundle.models["int8_cpu"]["usable"] = True
    bundle.save()
    return Bundle.load(tmp_path / "b")


def test_pick_needs_a_win_beyond_noise():
    order = ["int8_cpu", "fp32"]
    assert measure.pick({"int8_cpu": 0.5, "fp32": 1.0}, order) == "int8_cpu"
    assert measure.pick({"int8_cpu": 1.3, "fp32": 1.0}, order) == "fp32"  # the case: int8_cpu slower
    assert measure.pick({"int8_cpu": 0.97, "fp32": 1.0}, order) == "fp32"  # within noise: the reference
    assert measure.pick({"int8": 1.0, "fp16": 0.5, "fp32": 2.0}, ["int8", "fp16", "fp32"]) == "fp16"
    assert "int8_cpu 2.00x fp32" in measure.describe({"int8_cpu": 0.5, "fp32": 1.0}, "int8_cpu")


def test_auto_measures_once_per_bundle_backend_and_device(cpu_variant_bundle, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="edgekit")
    cache = tmp_path / "cache"
    runner = open_runner(cpu_variant_bundle, "onnxruntime", "auto", cache_dir=cache)
    choice = runner.choice
    assert set(choice.measured_ms) == {"int8_cpu", "fp32"} and all(v > 0 for v in choice.measured_ms.values())
    assert choice.key == measure.pick(choice.measured_ms, ["int8_cpu", "fp32"])  # the faster, by its own figures
    assert "auto: measured here (batch 1, median ms)" in choice.reason and "measured here" in caplog.text
    assert choice.to_dict()["measured_ms"] == choice.measured_ms  # what /status.json's "model" shows
    files = list((cache / "auto").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["timings_ms"] == pytest.approx(choice.measured_ms, abs=1e-3)

    def no_timing(runner, batch):
        raise AssertionError("measured again although cached")

    monkeypatch.setattr(measure, "time_runner", no_timing)
    again = open_runner(cpu_variant_bundle, "onnxruntime", "auto", cache_dir=cache).choice
    assert (again.key, again.measured_ms) == (choice.key, choice.measured_ms)
    # another device (here: another thread setting) is measured anew
    monkeypatch.setattr(measure, "time_runner", lambda runner, batch: 2.0 if "int8_cpu" in str(runner.model_path) else 1.0)
    other = open_runner(cpu_variant_bundle, "onnxruntime", "auto", cache_dir=cache, intra_op_threads=1).choice
    assert other.key == "fp32" and "none beats fp32" in other.reason
    # an explicit precision is not measured
    assert open_runner(cpu_variant_bundle, "onnxruntime", "int8", cache_dir=cache).choice.measured_ms is None


def test_bench_auto_says_what_it_chose_and_why(cpu_variant_bundle, cli, tmp_path, monkeypatch):
    monkeypatch.setattr(measure, "time_runner", lambda runner, batch: 1.0 if "int8_cpu" in str(runner.model_path) else 3.0)
    result = cli("bench", cpu_variant_bundle.path, "--backend", "onnxruntime", "--iterations", 2, "--warmup", 0,
                 "--cache-dir", tmp_path / "c")
    assert result.code == 0, result
    chosen = next(line for line in result.out.splitlines() if line.startswith("chosen: "))
    assert "int8_cpu 3.00x fp32" in chosen and "precision: int8_cpu" in result.out


def test_int8_cpu_is_a_precision_of_onnxruntime_only(cpu_variant_bundle, cli, caplog):
    from edgekit.backends.select import choose_model
    from edgekit.errors import UsageError

    assert choose_model(cpu_variant_bundle, "onnxruntime", "int8_cpu").key == "int8_cpu"
    int8 = choose_model(cpu_variant_bundle, "onnxruntime", "int8")
    assert int8.key == "int8_cpu" and "int8 prefers the int8_cpu variant" in int8.reason
    with pytest.raises(UsageError, match="--backend onnxruntime, or --precision int8 on TensorRT"):
        choose_model(cpu_variant_bundle, "tensorrt", "int8_cpu")
    result = cli("bench", cpu_variant_bundle.path, "--backend", "onnxruntime", "--precision", "int8_cpu",
                 "--iterations", 2, "--warmup", 0)
    assert result.code == 0 and "precision: int8_cpu" in result.out, result
