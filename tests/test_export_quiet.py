"""Export as a new user meets it: quiet on success, honest about preprocessing and parity, Lambda layers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_one_line_error

LABELS = ",".join("abcdefghij")


@pytest.fixture(scope="session")
def keras_models(tmp_path_factory):
    """A stock MobileNetV3Small (weights=None, 96x96, 10 classes) whose BatchNorm statistics were set
    from one batch, so its output depends on its input; a model with a constant output; a Lambda model."""
    pytest.importorskip("tensorflow")
    from edgekit.host import import_tf

    _, keras = import_tf()
    out = tmp_path_factory.mktemp("keras")
    x = np.random.default_rng(0).integers(0, 256, (8, 96, 96, 3)).astype("float32")
    mnv3 = keras.applications.MobileNetV3Small(input_shape=(96, 96, 3), weights=None, classes=10)
    norms = [layer for layer in mnv3.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0  # moving statistics := this batch's
    mnv3(x, training=True)
    for layer in norms:
        layer.momentum = 0.999
    mnv3.save(out / "mnv3.keras")

    inp = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    const = keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros")(pooled)
    keras.Model(inp, const).save(out / "constant.keras")

    doubled = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    lam = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(doubled))
    keras.Model(inp, lam).save(out / "lambda.keras")
    return out


def test_mobilenetv3_export_is_quiet_on_success_and_keeps_its_own_scaling(keras_models, tmp_path):
    """tf2onnx's recovered "Failed to apply optimize_transpose" tracebacks are held back; the model's
    own Rescaling layer means the bundle feeds raw 0-255 RGB pixels."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "edgekit", "export", keras_models / "mnv3.keras", "-o", tmp_path / "b",
                        "--labels", LABELS], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Failed to apply" not in r.stderr, r.stderr
    assert not [line for line in r.stderr.splitlines() if re.search("warn", line, re.I)], r.stderr
    assert all(line.startswith("edgekit: ") for line in r.stderr.splitlines()), r.stderr
    assert "scales its own input (Rescaling" in r.stderr
    prep = json.loads((tmp_path / "b" / "edgekit.json").read_text())["preprocess"]
    assert (prep["scale"], prep["mean"], prep["std"], prep["color"]) == (1.0, [0, 0, 0], [1, 1, 1], "RGB")


def test_scaling_twice_is_called_out(cli, keras_models, tmp_path):
    r = cli("export", keras_models / "mnv3.keras", "-o", tmp_path / "b", "--labels", LABELS, "--preprocess", "small")
    assert r.code == 0, r
    assert "scales its own input (Rescaling " in r.err and ") and its preprocessing scales too" in r.err


def test_constant_output_is_called_out(cli, keras_models, tmp_path):
    r = cli("export", keras_models / "constant.keras", "-o", tmp_path / "b", "--labels", "x,y,z",
            "--preprocess", "unit")
    assert r.code == 0, r
    assert "gives the same output for 8 different images" in r.err and "proves little" in r.err


def test_trained_model_is_not_called_constant(cli, trained_model, tmp_path):
    """The probe feeds photo crops: a trained model answers them differently, so no "same output" warning."""
    r = cli("export", trained_model, "-o", tmp_path / "b")
    assert r.code == 0, r
    assert "same output" not in r.err, r.err


def test_model_without_scaling_or_sidecar_is_refused(cli, keras_models, tmp_path):
    """No sidecar, no scaling in the graph, no stock network name: export does not guess."""
    assert_one_line_error(cli("export", keras_models / "constant.keras", "-o", tmp_path / "b", "--labels", "x,y,z"),
                          "cannot tell how constant.keras expects its input scaled", "--preprocess raw, unit, "
                          "symmetric, caffe, torch, or scale=")
    assert not (tmp_path / "b").exists()


def test_lambda_layer_needs_unsafe_load(cli, keras_models, tmp_path):
    assert_one_line_error(cli("export", keras_models / "lambda.keras", "-o", tmp_path / "a", "--labels", "x,y,z"),
                          "Lambda", "--unsafe-load")
    assert not (tmp_path / "a").exists()
    r = cli("export", keras_models / "lambda.keras", "-o", tmp_path / "b", "--labels", "x,y,z", "--unsafe-load")
    assert r.code == 0, r
    assert "--unsafe-load: loading lambda.keras with Keras' safe_mode off" in r.err


def test_captured_output_is_replayed_only_on_failure(capfd):
    import warnings

    from edgekit.quiet import captured

    with captured():
        os.write(2, b"C++ noise\n")
        warnings.warn("library chatter")
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError), captured():
        os.write(2, b"C++ noise\n")
        warnings.warn("library chatter")
        raise RuntimeError("step failed")
    err = capfd.readouterr().err
    assert "C++ noise" in err and "UserWarning: library chatter" in err


def test_gate_advice_names_options_both_commands_have():
    import click

    from edgekit.cli import export, inspect, quantize
    from edgekit.quant.report import Report, Result
    from edgekit.quant.quantize import _advice

    report = Report("b", 200, True, 1.0, [Result("fp32", "fp32", "onnxruntime"),
                                         Result("int8", "int8", "onnxruntime", drop=3.0, passed=False)])
    advice = _advice(report, ["entropy"], "b")
    named = set(re.findall(r"--[a-z][a-z0-9-]+", advice))
    assert {"--method", "--keep-float", "--nodes"} <= named
    for cmd in (export.command, quantize.command):
        opts = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        assert named - {"--nodes"} <= opts, cmd.name
    assert "--nodes" in {o for p in inspect.command.params for o in p.opts}


def test_export_int8_takes_quantizes_option_names():
    import click

    from edgekit.cli import export, quantize

    def visible(cmd):
        return {o for p in cmd.params if isinstance(p, click.Option) and not p.hidden for o in p.opts}

    assert visible(quantize.command) - {"-h", "--help"} <= visible(export.command)
