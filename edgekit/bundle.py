"""The bundle: the contract between host and device.

A bundle is a folder holding ONNX models and ``edgekit.json``, the manifest::

    {
      "schema_version": 1,
      "task": "classification",
      "labels": ["cat", "dog"],
      "input": {"name": "input", "shape": ["batch", 3, 224, 224], "layout": "NCHW", "dtype": "float32"},
      "preprocess": {"size": [224, 224], "resize": "stretch", "color": "RGB", "scale": 0.00392,
                     "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "NCHW"},
      "outputs": [{"name": "probs", "meaning": "probabilities"}],
      "models": {"fp32": {"path": "model.onnx", "sha256": "...", "usable": true, ...},
                 "int8": {"path": "model.int8.onnx", ...}},
      "source": {"path": "...", "format": "keras", "sha256": "..."},
      "opset": 17,
      "target": {"name": "jetpack-6.1", "tensorrt": "10.3", "verdict": "ok", "problems": []},
      "parity": {"max_abs_error": 1e-6, "tolerance": 1e-4},
      "tools": {"edgekit": "0.1.0", ...}
    }

Model keys: ``fp32`` (always), ``fp16``, ``int8`` (Q/DQ for TensorRT), ``int8_cpu`` (a variant only
ONNX Runtime on the CPU may use). Loading checks the manifest against the published JSON schema
(``edgekit/schema/manifest.schema.json``), the label count against the model, and the hashes.

Verdicts: a reduced-precision model entry carries ``usable`` and, from quantize's gate, ``gate``; a
labelled ``edgekit validate`` adds ``validation`` ({passed, metric, value, reference, drop, max_drop,
images, at}) and sets ``usable`` from it, so the latest judgement wins. FP32 is the reference and is
never gated. :meth:`Bundle.verdict` says in one line why a model may not be used.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.atomic import copy_file, sha256_file, write_json
from edgekit.errors import BundleError, UsageError
from edgekit.jsonfile import read_json
from edgekit.preprocess import Preprocess

SCHEMA_VERSION = 1
MANIFEST = "edgekit.json"
TASKS = ("classification", "detection")
PRECISIONS = ("fp32", "fp16", "int8")
MODEL_KEYS = ("fp32", "fp16", "int8", "int8_cpu")
METRIC_NAMES = {"top1": "top-1 %", "map50": "mAP@0.5"}


def gate_basis(metric: str | None, labelled: bool) -> str:
    """What a gate compared: accuracy on labelled images, else agreement with FP32 (top-1, or mAP@0.5
    against FP32's detections for a detector)."""
    if metric == "map50":
        return "mAP@0.5" if labelled else "mAP@0.5 against FP32's detections"
    return "top-1 accuracy" if labelled else "top-1 agreement with FP32"
CLASS_OUTPUTS = ("probabilities", "logits", "scores")  # outputs whose last dimension is the class count
SCHEMA_FILE = Path(__file__).parent / "schema" / "manifest.schema.json"


@dataclass
class Bundle:
    """A bundle folder and its manifest (a plain dict, validated on load)."""

    path: Path
    manifest: dict = field(default_factory=dict)

    # ---- loading and saving -------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        """Open a bundle folder; check its manifest and, with ``verify``, its models' hashes."""
        path = Path(path)
        mpath = path / MANIFEST
        if not path.exists():
            raise BundleError(f"bundle {path} does not exist")
        if not mpath.is_file():
            raise BundleError(f"{path} is not an edgekit bundle (no {MANIFEST})")
        manifest = read_json(mpath, BundleError, f"corrupt manifest {mpath}")
        bundle = cls(path, manifest)
        bundle.validate()
        if verify:
            bundle.verify_hashes()
        return bundle

    def validate(self) -> None:
        """Check the manifest against the published schema, then the label count; raise one BundleError line."""
        m = self.manifest
        where = self.path / MANIFEST
        if not isinstance(m, dict):
            raise BundleError(f"corrupt manifest {where}: not a JSON object")
        version = m.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(
                f"{where} has schema version {version!r}; this edgekit reads version {SCHEMA_VERSION}"
            )
        if isinstance(m.get("models"), dict) and "fp32" not in m["models"]:
            raise BundleError(f"bundle {self.path} has no fp32 model")
        problem = schema_problem(m)
        if problem:
            raise BundleError(f"corrupt manifest {where}: {problem}")
        if m["task"] not in TASKS:
            raise BundleError(f"{where}: unknown task {m['task']!r}")
        meanings = [o.get("meaning") for o in m["outputs"]]
        if m["task"] == "classification" and ("boxes" in meanings or len(meanings) != 1):
            raise BundleError(f"corrupt manifest {where}: task classification, but the outputs are "
                              f"{', '.join(o['name'] for o in m['outputs'])} (a classifier has one; boxes are a detector's)")
        Preprocess.from_dict(m["preprocess"])  # raises BundleError on a bad spec
        if "nms" in m:  # what the schema cannot say: eval threshold <= run threshold
            from edgekit.nms import NmsParams

            try:
                NmsParams.from_dict(m["nms"])
            except UsageError as exc:
                raise BundleError(f"corrupt manifest {where}: nms: {exc}") from exc
        classes = self.class_count()
        if classes is not None and classes != len(m["labels"]):
            raise BundleError(
                f"corrupt manifest {where}: {len(m['labels'])} labels for a model of {classes} classes"
            )

    def class_count(self) -> int | None:
        """Classes the fp32 model tells apart: the manifest's output shape, else its ONNX graph (None if unknown)."""
        outputs = [o for o in self.manifest["outputs"] if o.get("meaning") in CLASS_OUTPUTS] or self.manifest["outputs"][:1]
        shape = outputs[0].get("shape") or []
        if shape and isinstance(shape[-1], int):
            return shape[-1]
        return _onnx_output_size(self.path / self.manifest["models"]["fp32"]["path"], outputs[0]["name"])

    def verify_hashes(self) -> None:
        """Raise BundleError when a model file is missing or its sha256 differs from the manifest."""
        for key, model in self.manifest["models"].items():
            for entry in (model, model.get("tensorrt") or {}) if isinstance(model, dict) else ():
                if "path" not in entry:
                    continue
                file = self.path / entry["path"]
                if not file.is_file():
                    raise BundleError(f"bundle {self.path} lacks its {key} model {entry['path']}")
                if entry.get("sha256") and sha256_file(file) != entry["sha256"]:
                    raise BundleError(f"{file} does not match its sha256 in the manifest (corrupt or edited)")

    def save(self) -> None:
        """Write the manifest atomically."""
        write_json(self.path / MANIFEST, self.manifest)

    # ---- accessors -------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def input(self) -> dict:
        return self.manifest["input"]

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.manifest["preprocess"])

    @property
    def models(self) -> dict:
        return self.manifest["models"]

    def has_model(self, key: str) -> bool:
        return key in self.models

    def model_path(self, key: str = "fp32") -> Path:
        """Path of the model stored under ``key``; BundleError if the bundle has none."""
        if key not in self.models:
            have = ", ".join(self.models)
            raise BundleError(f"bundle {self.path} has no {key} model (it has: {have})")
        return self.path / self.models[key]["path"]

    def model_sha256(self, key: str = "fp32") -> str:
        entry = self.models[key] if key in self.models else None
        if entry is None:
            self.model_path(key)
        return entry.get("sha256") or sha256_file(self.path / entry["path"])

    def add_model(self, key: str, src: str | os.PathLike, filename: str, **info) -> dict:
        """Copy ``src`` into the bundle as ``filename`` under ``key``, record its hash and ``info``."""
        if key not in MODEL_KEYS:
            raise BundleError(f"unknown model key {key!r}")
        dst = self.path / filename
        if Path(src).resolve() != dst.resolve():
            copy_file(src, dst)
        entry = {"path": filename, "sha256": sha256_file(dst), "usable": True, **info}
        self.models[key] = entry
        return entry

    # ---- verdicts --------------------------------------------------------------------------
    def usable(self, key: str) -> bool:
        """True when model ``key`` has no verdict or its ``usable`` is the boolean True: a failed gate, or
        anything but a real boolean (``"false"``, 0), makes it unusable."""
        return self.models.get(key, {}).get("usable", True) is True

    def verdict(self, key: str) -> str | None:
        """One line naming the gate result that makes model ``key`` unusable; None when it may be used."""
        if self.usable(key):
            return None
        entry = self.models[key]
        v, g = entry.get("validation"), entry.get("gate")
        if isinstance(v, dict) and v.get("passed") is False:
            metric = METRIC_NAMES.get(v.get("metric"), v.get("metric"))
            return (
                f"{key} failed `edgekit validate` ({v.get('at', 'unknown time')}): {metric} {_num(v.get('value'))} "
                f"(fp32 {_num(v.get('reference'))}), a drop of {_num(v.get('drop'))} points "
                f"(max {_num(v.get('max_drop'))}) on {v.get('images', '?')} images"
            )
        if isinstance(g, dict):
            basis = gate_basis(g.get("metric"), bool(g.get("labelled")))
            return (
                f"{key} failed the quantize accuracy gate: {basis} dropped {_num(g.get('drop'))} points "
                f"(max {_num(g.get('max_drop'))}) on {g.get('images', '?')} held-out images"
            )
        return f"{key} is marked unusable in {self.path / MANIFEST}"

    def record_validation(self, key: str, validation: dict) -> None:
        """Store ``validate``'s verdict on model ``key`` (not saved): ``usable`` follows ``passed``."""
        if key == "fp32":
            raise BundleError("the fp32 model is the reference; it has no gate")
        entry = self.models[key]
        entry["validation"] = dict(validation)
        entry["usable"] = bool(validation["passed"])


def _num(value) -> str:
    return "?" if not isinstance(value, (int, float)) else f"{value:.2f}".rstrip("0").rstrip(".")


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def schema_problem(manifest: dict) -> str | None:
    """The first schema violation of ``manifest`` as ``json.path: message``, or None."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(manifest))
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
    return f"{where or 'top level'}: {message}"


def _onnx_output_size(model: Path, name: str) -> int | None:
    """The static last dimension of output ``name`` of an ONNX file (None if unreadable or dynamic)."""
    import onnx

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception:  # missing or corrupt: verify_hashes and the runners say so
        return None
    for out in graph.output:
        if out.name == name:
            dims = out.type.tensor_type.shape.dim
            return (dims[-1].dim_value or None) if dims else None
    return None
