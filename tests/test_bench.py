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


class RawDetector(Runner):
    """A pre-plugin detection model stand-in: ``n`` boxes in a row, every one scoring ``score``."""

    name = "onnxruntime"

    def __init__(self, n, score):
        super().__init__()
        self.n, self.score = n, score

    input_spec = TensorSpec("input", (None, 8, 8, 3), np.dtype(np.float32))
    output_specs = [TensorSpec("boxes", (None, None, 4), np.dtype(np.float32)),
                    TensorSpec("scores", (None, None, 1), np.dtype(np.float32))]

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def infer_impl(self, batch):
        x1 = np.arange(self.n, dtype=np.float32) / self.n  # disjoint boxes: NMS keeps every one
        boxes = np.stack([x1, x1 * 0, x1 + 0.5 / self.n, x1 * 0 + 0.1], 1)
        return {"boxes": np.repeat(boxes[None], len(batch), 0),
                "scores": np.full((len(batch), self.n, 1), self.score, np.float32)}


@pytest.mark.parametrize("n, score, capped", [(150, 0.9, True), (150, 0.1, False), (20, 0.9, False)])
def test_detector_bench_times_model_and_nms_apart_and_reports_cap_hits(n, score, capped):
    from edgekit.backends.detection import DetectionRunner
    from edgekit.nms import NmsParams

    runner = DetectionRunner(RawDetector(n, score), NmsParams(max_detections=100))
    batches = [np.zeros((2, 8, 8, 3), np.float32), np.ones((2, 8, 8, 3), np.float32)]
    with runner:
        result = bench(runner, batches, warmup=1, iterations=5)
    check_consistent(result, 2)
    assert len(result.model_ms) == len(result.nms_ms) == 5
    for model, nms, total in zip(result.model_ms, result.nms_ms, result.latencies_ms):
        assert model > 0 and nms > 0 and model + nms <= total + 1e-6
    expected = 0 if score < 0.25 else min(n, 100)
    assert result.detections == [expected] * 10  # 5 inferences of 2 images
    assert result.capped == (10 if capped else 0)
    text = result.summary()
    assert "model" in text and "NMS" in text and f"cap was hit on {result.capped} of 10 images" in text
    assert ("every image filled the detection cap" in text) == capped
    d = result.to_dict()
    assert d["capped_images"] == result.capped and d["nms_ms_p50"] == pytest.approx(np.median(result.nms_ms))


def test_scene_frames_look_like_images_not_noise():
    from edgekit.bench import scene_frames

    frames = scene_frames(4, (96, 128))
    assert [f.shape for f in frames] == [(96, 128, 3)] * 4 and frames[0].dtype == np.uint8
    for f in frames:
        g = f.astype(np.float64).mean(2)
        neighbours = np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1]
        assert neighbours > 0.9  # smooth like a photo (uniform noise: ~0)
        assert g.std() > 10  # but not flat
    assert not np.array_equal(frames[0], frames[1])
