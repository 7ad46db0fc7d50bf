"""Benchmark figures: counts and statistics internally consistent (never wall-time thresholds)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.backends.base import Runner, TensorSpec
from edgekit.bench import bench, bench_bundle, sample_batch
from edgekit.errors import UsageError


class CountingRunner(Runner):
    """A CPU runner that counts its calls (tests the timing loop, not a backend)."""

    name = "counting"

    def __init__(self):
        super().__init__()
        self.calls = 0

    input_spec = TensorSpec("x", (None, 2), np.dtype(np.float32))
    output_specs = [TensorSpec("y", (None, 2), np.dtype(np.float32))]

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def infer_impl(self, batch):
        self.calls += 1
        return {"y": batch * 2}


def check_consistent(result, batch):
    lat = result.latency()
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert len(result.latencies_ms) == result.iterations
    assert sum(result.latencies_ms) / 1e3 <= result.wall_s  # timed calls fit in the measured wall time
    assert result.inferences_per_s == pytest.approx(result.iterations / result.wall_s)
    assert result.images_per_s == pytest.approx(result.inferences_per_s * batch)


def test_iterations_and_warmup_are_counted():
    with CountingRunner() as runner:
        result = bench(runner, np.zeros((3, 2), np.float32), warmup=4, iterations=25)
    assert runner.calls == 29 and result.iterations == 25 and result.batch == 3
    check_consistent(result, 3)


def test_duration_mode_runs_until_the_deadline():
    with CountingRunner() as runner:
        result = bench(runner, np.zeros((1, 2), np.float32), warmup=0, duration=0.05)
    assert result.iterations >= 1 and result.wall_s >= 0.05
    check_consistent(result, 1)


def test_bad_settings():
    with CountingRunner() as runner:
        x = np.zeros((1, 2), np.float32)
        for kwargs in ({"iterations": 5, "duration": 1.0}, {"iterations": 0}, {"duration": -1.0}, {"warmup": -1}):
            with pytest.raises(UsageError):
                bench(runner, x, **kwargs)


def test_bundle_bench_on_onnxruntime(tiny_bundle):
    batch = sample_batch(tiny_bundle, 4)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == np.float32 and 0 <= batch.min() and batch.max() <= 1
    result = bench_bundle(tiny_bundle, "onnxruntime", "fp32", batch=4, warmup=2, iterations=20, intra_op_threads=1)
    assert (result.backend, result.precision, result.batch, result.iterations) == ("onnxruntime", "fp32", 4, 20)
    check_consistent(result, 4)
    with pytest.raises(UsageError):
        bench_bundle(tiny_bundle, "onnxruntime", batch=0)


def test_bundle_bench_checks_counts_before_opening_the_runner(tiny_bundle):
    # TensorRT's runner would build an engine first (minutes on a Jetson); without TensorRT, a DeviceError.
    for kwargs in ({"iterations": 5, "duration": 1.0}, {"iterations": 0}, {"warmup": -1}):
        with pytest.raises(UsageError):
            bench_bundle(tiny_bundle, "tensorrt", **kwargs)


def test_cli_text_and_json(cli, tiny_bundle):
    text = cli("bench", tiny_bundle.path, "--backend", "onnxruntime", "--iterations", "10", "--warmup", "1", "--batch", "2")
    assert text.code == 0, text
    assert "inferences/s" in text.out and "images/s" in text.out and "p99" in text.out
    out = cli("bench", tiny_bundle.path, "--backend", "onnxruntime", "--iterations", "10", "--threads", "1", "--json")
    assert out.code == 0, out
    figures = json.loads(out.out)
    assert figures["iterations"] == 10 and figures["batch"] == 1
    assert set(figures["latency_ms"]) == {"min", "p50", "p90", "p99", "max", "mean"}
    assert figures["images_per_s"] == pytest.approx(figures["inferences_per_s"])
    both = cli("bench", tiny_bundle.path, "--iterations", "10", "--duration", "1")
    assert both.code == 2 and "--iterations or --duration" in both.err
