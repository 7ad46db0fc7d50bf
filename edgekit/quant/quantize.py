"""Add INT8 (and FP16) models to a bundle, gated on held-out images: the API behind ``edgekit quantize``.

The bundle is rebuilt beside itself and swapped in only when complete, so a failure or an
interruption leaves the old bundle as it was. A model failing the gate is kept but marked
``usable: false`` and GateError says by how much and what to try.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path

from edgekit.atomic import atomic_dir, locked, temp_dir, write_json
from edgekit.bundle import Bundle, gate_basis
from edgekit.errors import GateError, UsageError
from edgekit.progress import heartbeat

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
INT8_CPU_FILE = "model.int8_cpu.onnx"
RANGES_FILE = "model.int8.ranges.json"
FP16_FILE = "model.fp16.onnx"


@locked("bundle")
def quantize_bundle(
    bundle_path: str | os.PathLike,
    images: str | os.PathLike,
    *,
    method: str = "auto",
    num_images: int = 500,
    holdout: int = 200,
    gate_images: str | os.PathLike | None = None,
    max_drop: float = 1.0,
    fp16: bool = True,
    cpu_variant: bool = False,
    keep_float: tuple[str, ...] = (),
    every: int = 10,
    seed: int = 0,
    progress: bool = True,
    bundle_name: str | None = None,
):
    """Quantize the bundle at ``bundle_path`` with calibration images from ``images`` (folder or video).

    Adds ``int8`` (Q/DQ, for TensorRT) with its activation ranges, ``int8_cpu`` (ONNX Runtime only)
    with ``cpu_variant``, and ``fp16`` with ``fp16``. ``method`` is entropy, percentile, minmax, or
    auto: all three from one calibration pass, keeping the one closest to FP32 on the held-out
    images. ``holdout`` images (fewer for a small set; 0 to skip) are kept out of calibration and
    gate the new models at ``max_drop`` points of top-1 (accuracy when ``images`` is a
    class-per-folder set named by the bundle's labels, else agreement with FP32). Returns the gate's
    Report (None without hold-out); raises GateError, after saving, when a model fails. Third-party
    warnings are held back (:func:`edgekit.quiet.captured`). ``bundle_name`` is the path validation.json
    records (export stages a bundle elsewhere first; default ``bundle_path``).
    """
    from edgekit.quiet import captured

    with captured():  # a failed gate is a verdict, not a failure of the libraries: raised outside
        report, tried = _quantize(bundle_path, images, method=method, num_images=num_images, holdout=holdout,
                                  gate_images=gate_images, max_drop=max_drop, fp16=fp16, cpu_variant=cpu_variant,
                                  keep_float=keep_float, every=every, seed=seed, progress=progress,
                                  bundle_name=str(bundle_name or bundle_path))
    if report is None:
        log.warning("the new models were not gated (no hold-out): run `edgekit validate` on labelled images")
    else:
        log.info("gate on %d images:\n%s", report.images, report.summary())
        if report.failures:
            raise GateError(_advice(report, tried, bundle_name or bundle_path))
    return report


def _quantize(bundle_path, images, *, method, num_images, holdout, gate_images, max_drop, fp16, cpu_variant,
              keep_float, every, seed, progress, bundle_name):
    import onnx
    import onnxruntime

    from edgekit.quant.calibration import calibration_set
    from edgekit.quant.fp16 import convert_fp16
    from edgekit.quant.gate import evaluate, fp32_reference, labelled_tensors, write_report
    from edgekit.quant.qdq import METHODS, Quantizer, ranges_document
    from edgekit.quiet import live_stderr

    if method != "auto" and method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; choose from auto, {', '.join(METHODS)}")
    if max_drop < 0:
        raise UsageError("--max-drop must not be negative")
    bundle = Bundle.load(bundle_path)
    if gate_images is not None:
        holdout = 0
        x, y = labelled_tensors(bundle, gate_images)
    pool = calibration_set(
        images, bundle.preprocess, num_images=num_images, holdout=holdout, every=every, seed=seed,
        labels=None if bundle.task == "detection" else bundle.labels, progress=progress,
    )
    cal, held = pool.split()
    if gate_images is None:
        x, y = held.tensors() if len(held) else (None, None)
        y = y if held.labelled else None
    log.info("calibrating on %d images from %s; gate on %s", len(cal), images,
             f"{len(x)} images" if x is not None else "nothing (no hold-out)")
    report = None
    busy = heartbeat("quantizing", enabled=progress and not live_stderr().isatty())  # a bar shows progress on a tty
    with atomic_dir(bundle.path, force=True) as tmp, busy:
        for entry in bundle.path.iterdir():
            if not entry.name.startswith("."):
                (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        new = Bundle(tmp, copy.deepcopy(bundle.manifest))
        for key in ("int8", "fp16" if fp16 else None, "int8_cpu" if cpu_variant else None):
            if key and new.has_model(key):  # replaced below; a kept fp16 (--no-fp16) is gated again
                (tmp / new.models.pop(key)["path"]).unlink(missing_ok=True)
        if new.has_model("int8_cpu") and not cpu_variant:
            log.info("kept the existing int8_cpu model and its verdict (--cpu-variant makes a new one)")
        with temp_dir("edgekit-quant") as work:
            quantizer = Quantizer(new.model_path("fp32"), work).calibrate(cal)
            if new.task == "detection":  # box-decode and score heads stay float
                from edgekit.quant.detection_gate import head_nodes

                keep_float = tuple(sorted(set(keep_float) | head_nodes(quantizer.model)))
            candidates = {}
            reference = None
            if method == "auto":
                pick_x = x if x is not None else cal.take(200).tensors()[0]
                reference = fp32_reference(new, pick_x)  # one FP32 pass for every candidate, and the gate (same x)
                for m in METHODS:
                    quantizer.write(tmp / INT8_FILE, m, tuple(keep_float))
                    new.add_model("int8", tmp / INT8_FILE, INT8_FILE)
                    r = evaluate(new, pick_x, y, models=["int8"], tensorrt=False, reference=reference).result("int8")
                    candidates[m] = {"drop": r.drop, "agreement": r.agreement, "mean_abs_error": r.mean_abs_error}
                method = min(METHODS, key=lambda m: (-candidates[m]["agreement"], candidates[m]["mean_abs_error"]))
                log.info("method %s kept (agreement with FP32: %s)", method,
                         ", ".join(f"{m} {c['agreement']:.2f}%" for m, c in candidates.items()))
            result = quantizer.write(tmp / INT8_FILE, method, tuple(keep_float),
                                     cpu_path=tmp / INT8_CPU_FILE if cpu_variant else None)
        write_json(tmp / RANGES_FILE, ranges_document(result, onnx.load(str(new.model_path("fp32")))))
        calibration = {"source": str(Path(images).resolve()), "images": len(cal), "held_out": len(held),
                       "seed": seed, "method": method, **({"candidates": candidates} if candidates else {})}
        new.add_model(
            "int8", tmp / INT8_FILE, INT8_FILE, precision="int8", format="qdq-s8s8-symmetric-per-channel",
            ranges=RANGES_FILE, calibration=calibration, float_nodes=result.float_nodes,
            quantizer=f"onnxruntime {onnxruntime.__version__}",
        )
        if cpu_variant:
            new.add_model("int8_cpu", tmp / INT8_CPU_FILE, INT8_CPU_FILE, precision="int8",
                          format="qdq-u8s8-asymmetric-per-channel", for_backends=["onnxruntime"], calibration=calibration)
        if fp16:
            convert_fp16(new.model_path("fp32"), tmp / FP16_FILE)
            new.add_model("fp16", tmp / FP16_FILE, FP16_FILE, precision="fp16", format="fp16-io-fp32")
        if new.task == "detection":  # what TensorRT builds: each model with EfficientNMS_TRT appended
            from edgekit.graph.nms import attach_plugin_model

            for key in ("int8", "fp16"):
                if new.has_model(key):
                    attach_plugin_model(new, key)
        if x is not None:
            keys = [k for k in ("int8", "int8_cpu" if cpu_variant else None, "fp16") if k and new.has_model(k)]
            report = evaluate(new, x, y, max_drop=max_drop, models=keys, tensorrt=False, reference=reference)
            for r in report.results:
                if r.name in keys:
                    new.models[r.name]["usable"] = bool(r.passed)
                    new.models[r.name]["gate"] = {"images": report.images, "labelled": report.labelled,
                                                  "metric": getattr(report, "metric", None) or "top1",
                                                  "drop": r.drop, "max_drop": max_drop, "agreement": r.agreement}
            report.bundle = bundle_name  # not the temporary folder it was judged in
            write_report(report, tmp)
        new.save()
    return report, list(candidates) or [method]


def _advice(report, tried: list[str], bundle_path) -> str:
    from edgekit.quant.qdq import METHODS

    worst = max(report.failures, key=lambda r: r.drop)
    basis = gate_basis(getattr(report, "metric", None), report.labelled)
    others = [m for m in METHODS if m not in tried]
    method = f"--method {' or '.join(others)}, " if others else ""
    return (
        f"{worst.name} failed the accuracy gate: {basis} dropped {worst.drop:.2f} points (max {report.max_drop:g}) "
        f"on {report.images} gate images; it is kept but marked unusable. Try more or more varied "
        f"calibration images from the deployment camera, {method}or --keep-float NODE for sensitive layers "
        f"(`edgekit inspect {bundle_path} --nodes` lists them)"
    )
