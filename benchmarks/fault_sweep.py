"""Fault sweep: corrupt manifests and bad inputs against every command; prints the tally of clean cases.

A case is *clean* when the command exits non-zero with exactly one ``edgekit: error:`` line on
stderr and no traceback (the house rule for errors a user can cause); ``inspect`` may instead
report a missing model file as MISSING, as it is meant to. Each manifest fault (a wrong
type, a missing key, a wrong length, a non-finite or absurd value, a label count that does not
match the model, a model path outside the bundle) is tried on inspect, run, bench, build, validate
and quantize, in process. Issue 19's families follow (benchmarks/fault_families.py): option
numbers, output paths (devices, FIFOs, symlinks, outputs onto inputs), dataset values, and HTTP
(slow clients, HEAD); each has its own meaning of clean, given there.

    python benchmarks/fault_sweep.py            # prints each unclean case, then the tally per family
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from edgekit.tiny import write_tiny_bundle
from fault_families import attempt, one_line_error


def _set(path: str, value):
    def apply(m):
        *parents, last = path.split(".")
        for key in parents:
            m = m[key]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value

    return apply


FAULTS = {
    **{f"{k}: {label}": _set(k, v) for k in ("labels", "input", "preprocess", "outputs", "models", "task")
       for label, v in (("null", None), ("a string", "x"), ("a number", 5), ("missing", KeyError))},
    "labels: 2 for 3 classes": _set("labels", ["a", "b"]),
    "labels: 1000 for 3 classes": _set("labels", [f"c{i}" for i in range(1000)]),
    "labels: numbers": _set("labels", [1, 2, 3]),
    "labels: empty": _set("labels", []),
    "labels: duplicates": _set("labels", ["a", "a", "b"]),
    "input.shape: string": _set("input.shape", "1x3x32x32"),
    "input.name: null": _set("input.name", None),
    "preprocess.size: null": _set("preprocess.size", None),
    "preprocess.size: [0, 0]": _set("preprocess.size", [0, 0]),
    "preprocess.size: one number": _set("preprocess.size", [32]),
    "preprocess.mean: 2 values": _set("preprocess.mean", [0, 0]),
    "preprocess.std: a zero": _set("preprocess.std", [1, 0, 1]),
    "preprocess: unknown key": _set("preprocess.gamma", 2.2),
    "outputs: empty": _set("outputs", []),
    "outputs[0]: a string": _set("outputs", ["probs"]),
    "models: empty": _set("models", {}),
    "models.fp32: null": _set("models.fp32", None),
    "models.fp32.path: null": _set("models.fp32.path", None),
    "models.fp32.path: a number": _set("models.fp32.path", 7),
    "models.fp32.path: outside": _set("models.fp32.path", "../../etc/passwd"),
    "models.fp32.path: absolute": _set("models.fp32.path", "/etc/passwd"),
    "models.fp32.path: missing file": _set("models.fp32.path", "nope.onnx"),
    "models.fp32.sha256: not hex": _set("models.fp32.sha256", "zz"),
    "models.int4: unknown key": _set("models.int4", {"path": "model.onnx"}),
    "schema_version: 2": _set("schema_version", 2),
    "task: detection without nms": _set("task", "detection"),
    "preprocess.scale: NaN": _set("preprocess.scale", float("nan")),
    "preprocess.mean: an inf": _set("preprocess.mean", [0, float("inf"), 0]),
    "preprocess.size: [100000, 100000]": _set("preprocess.size", [100000, 100000]),
    "outputs: a detector's, task classification": _set("outputs", [{"name": "boxes", "meaning": "boxes"},
                                                                    {"name": "scores", "meaning": "scores"}]),
    "the whole manifest: 100k-deep JSON": "[" * 100000 + "]" * 100000,
}


def commands(bundle: Path, images: Path, tmp: Path):
    return {
        "inspect": ["inspect", bundle],
        "run": ["run", bundle, "--source", images / "red" / "0.png", "--max-frames", "1"],
        "bench": ["bench", bundle, "--backend", "onnxruntime", "--iterations", "2", "--warmup", "1"],
        "build": ["build", bundle, "--cache-dir", tmp / "cache"],
        "validate": ["validate", bundle, "--images", images, "--no-tensorrt"],
        "quantize": ["quantize", bundle, "--images", images, "--holdout", "0"],
    }


def clean(command: str, code: int, out: str, err: str) -> bool:
    if command == "inspect" and code == 0 and "MISSING" in out:
        return True  # inspect reports a missing model file rather than failing (by design)
    return one_line_error(code, err)


def main_() -> None:
    with tempfile.TemporaryDirectory(prefix="edgekit-faults-") as tmp:
        tmp = Path(tmp)
        good = write_tiny_bundle(tmp / "good").path
        images = tmp / "images"
        for label, bgr in (("red", (0, 0, 255)), ("green", (0, 255, 0)), ("blue", (255, 0, 0))):
            (images / label).mkdir(parents=True)
            for i in range(6):
                cv2.imwrite(str(images / label / f"{i}.png"), np.full((32, 32, 3), bgr, np.uint8))
        manifest = json.loads((good / "edgekit.json").read_text())
        tried = passed = 0
        for name, fault in FAULTS.items():
            bundle = tmp / "case"
            shutil.rmtree(bundle, ignore_errors=True)
            shutil.copytree(good, bundle)
            if isinstance(fault, str):
                (bundle / "edgekit.json").write_text(fault)
            else:
                m = copy.deepcopy(manifest)
                fault(m)
                (bundle / "edgekit.json").write_text(json.dumps(m))
            for command, args in commands(bundle, images, tmp).items():
                code, out, err = attempt(args)
                tried += 1
                if clean(command, code, out, err):
                    passed += 1
                else:
                    print(f"NOT CLEAN  {name:32s} {command:9s} exit {code}: {err.strip().splitlines()[-1:]}")
        print(f"manifest faults: {len(FAULTS)} x {len(commands(good, images, tmp))} commands = {tried} cases, "
              f"{passed} clean, {tried - passed} not")
        from fault_families import FAMILIES

        for family, sweep in FAMILIES.items():
            n, ok = sweep(good, tmp / family.replace(" ", "-"))
            print(f"{family}: {n} cases, {ok} clean, {n - ok} not")
            tried, passed = tried + n, passed + ok
        print(f"all: {tried} cases tried, {passed} clean ({100 * passed / tried:.0f} %)")
    sys.exit(0 if passed == tried else 1)


if __name__ == "__main__":
    main_()
