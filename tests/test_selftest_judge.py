"""``doctor --selftest``'s judgement, on the CPU: its frames and tolerance tell a correct INT8 engine
from a wrong one.

The correct INT8 engine is played by ONNX Runtime running the same Q/DQ model TensorRT builds; the
wrong ones are outputs an engine could really return (one-hot vectors, uniform or class-permuted
probabilities, an INT8 model with its input scale off by 2x). No TensorRT needed: ``doctor.judge``
is the comparison the self-test applies to the engine's output.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit import doctor
from edgekit.preprocess import Preprocess
from edgekit.tiny import SIZE, natural_frames, tiny_classifier, tiny_classifier_fp16, tiny_classifier_qdq

ort = pytest.importorskip("onnxruntime")  # a third-party runtime, not edgekit's own module


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def outputs():
    """FP32 (the reference), the Q/DQ INT8 and FP16 models on the self-test's frames, by ONNX Runtime."""
    prep = Preprocess(size=(SIZE, SIZE), resize="stretch", color="RGB", scale=1 / 255)
    x = prep.batch(list(natural_frames()))
    return {"x": x, "fp32": _run(tiny_classifier(), x), "int8": _run(tiny_classifier_qdq(), x),
            "fp16": _run(tiny_classifier_fp16(), x)}


def _misscaled_int8(x):
    """The Q/DQ model with its input scale halved: inputs above 0.5 saturate (a wrong calibration)."""
    from onnx import numpy_helper

    model = tiny_classifier_qdq()
    for init in model.graph.initializer:
        if init.name == "x_scale":
            init.CopyFrom(numpy_helper.from_array(np.float32(0.5 / 127.0), "x_scale"))
    return _run(model, x)


WRONG = {
    "one-hot": lambda o: np.eye(3, dtype=np.float32)[o["fp32"].argmax(1)],
    "uniform": lambda o: np.full_like(o["fp32"], 1 / 3),
    "classes permuted": lambda o: np.roll(o["fp32"], 1, axis=1),
    "int8 input scale off by 2x": lambda o: _misscaled_int8(o["x"]),
    "one frame's vector repeated": lambda o: np.repeat(o["fp32"][:1], len(o["fp32"]), 0),
    "wrong shape": lambda o: o["fp32"][:, :2],
}


def test_frames_give_spread_probabilities(outputs):
    """Saturated colours gave top probabilities > 0.985, so one-hot vectors passed; these frames do not."""
    ref = outputs["fp32"]
    assert ref.max(1).max() < 0.85 and ref.max(1).min() < 0.5
    assert len(set(ref.argmax(1).tolist())) == 3  # every class is the top one somewhere


def test_int8_tolerance_rests_on_the_measured_spread(outputs):
    """The tolerance is several times the INT8 model's own error on the host, and far below a wrong engine's."""
    spread = float(np.abs(outputs["int8"] - outputs["fp32"]).max())
    assert 0 < spread  # the Q/DQ model really quantizes
    assert 4 * spread <= doctor.TOLERANCE["int8"]  # room for TensorRT's kernels and FP16 float layers
    assert float(np.abs(outputs["fp16"] - outputs["fp32"]).max()) <= doctor.TOLERANCE["fp16"] / 4
    onehot = float(np.abs(WRONG["one-hot"](outputs) - outputs["fp32"]).max())
    assert onehot >= 20 * doctor.TOLERANCE["int8"]


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_judge_accepts_a_correct_engine(outputs, precision):
    result = doctor.judge(precision, outputs[precision], outputs["fp32"])
    assert result.status == "pass", result.line()
    assert doctor.judge("fp32", outputs["fp32"], outputs["fp32"]).status == "pass"


@pytest.mark.parametrize("wrong", sorted(WRONG))
def test_judge_rejects_a_wrong_engine(outputs, wrong):
    result = doctor.judge("int8", WRONG[wrong](outputs), outputs["fp32"])
    assert result.status == "fail", (wrong, result.line())


def test_selftest_passes_the_onnxruntime_twins_on_natural_frames():
    """The whole self-test with ONNX Runtime in TensorRT's place: every precision passes within tolerance."""
    results = doctor.selftest("onnxruntime")
    assert [(r.precision, r.status) for r in results] == [("fp32", "pass"), ("fp16", "pass"), ("int8", "pass")]
    assert 0 < results[2].max_error <= doctor.TOLERANCE["int8"] / 4


def test_selftest_fails_an_engine_that_returns_one_hot_vectors(monkeypatch):
    """The self-test end to end with an engine (ONNX Runtime, outputs made one-hot) that is confidently wrong."""
    import contextlib

    from edgekit.backends import select

    real = select.open_runner

    class OneHot:
        def __init__(self, runner):
            self.runner = runner

        def infer(self, x):
            probs = self.runner.infer(x)["probs"]
            return {"probs": np.eye(probs.shape[1], dtype=np.float32)[probs.argmax(1)]}

    @contextlib.contextmanager
    def one_hot_runner(bundle, backend, precision, **options):
        with real(bundle, "onnxruntime", precision, **options) as runner:
            yield OneHot(runner)

    monkeypatch.setattr(select, "open_runner", one_hot_runner)
    results = doctor.selftest("fake-one-hot", precisions=("int8",))
    assert [r.status for r in results] == ["fail"] and results[0].max_error > 0.5, results[0].line()
