"""The engine cache: serialized TensorRT engines keyed by everything that makes a plan valid.

Pure Python (no TensorRT import), so keys and rebuild decisions are testable anywhere. Layout::

    <root>/engines/<model>-<precision>-<id>.plan       the plan, untouched: trtexec and DeepStream read it
    <root>/engines/<model>-<precision>-<id>.plan.json  sidecar: the full key, plan sha256, build info
    <root>/timing/<tensorrt>-<gpu>-<cc>-<SMs>-<MiB>-<device>.cache   TensorRT timing cache, reused across builds

``<id>`` hashes what the user chose (model, precision, shapes, DLA core, CUDA device index); the
TensorRT version and the GPU (name, compute capability, SM count, memory: Jetson modules of one family
share a name and compute capability) are checked against the sidecar, so after a JetPack upgrade the old plan is rebuilt in place,
with a log line saying why, instead of piling up beside the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from edgekit.atomic import lock, sha256_file, write_bytes, write_json
from edgekit.errors import DeviceError, InputError, first_line

log = logging.getLogger(__name__)

SIDECAR_FORMAT = 1
BUILD_WAIT = 1800.0  # seconds a second process waits for another one building the same engine


def default_cache_dir() -> Path:
    """``$EDGEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgekit``, else ``~/.cache/edgekit``."""
    if os.environ.get("EDGEKIT_CACHE_DIR"):
        return Path(os.environ["EDGEKIT_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg if xdg else Path.home() / ".cache") / "edgekit"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on. ``shapes`` is the input's (min, opt, max) profile."""

    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    shapes: tuple
    dla_core: int | None = None
    calibration: str | None = None  # digest of the calibration set when built with a calibrator
    device: int = 0  # CUDA device index
    multiprocessors: int | None = None  # the GPU's SM count
    memory_mib: int | None = None  # the GPU's total memory
    nms: str | None = None  # a detector's NMS settings the builder wrote into the engine, e.g. "score_threshold=0.25"

    def choice_id(self) -> str:
        """Hash of the user's choices (not of TensorRT or the GPU): the plan's file name."""
        chosen = [self.onnx_sha256, self.precision, [list(s) for s in self.shapes], self.dla_core, self.calibration]
        if self.device:  # device 0 keeps the id plans had before the index was part of it
            chosen.append(self.device)
        if self.nms is not None:  # likewise for models without NMS settings
            chosen.append(self.nms)
        return hashlib.sha256(json.dumps(chosen).encode()).hexdigest()[:16]

    def gpu_identity(self) -> tuple:
        return (self.gpu, self.compute_capability, self.multiprocessors, self.memory_mib)

    def describe_gpu(self) -> str:
        return _describe(self.gpu, self.compute_capability, self.multiprocessors, self.memory_mib)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shapes"] = [list(s) for s in self.shapes]
        if d["nms"] is None:  # sidecars written before the field still match
            del d["nms"]
        return d


def _describe(gpu, compute_capability, multiprocessors, memory_mib) -> str:
    return f"{gpu} (sm {compute_capability}, {multiprocessors} SMs, {memory_mib} MiB)"


def rebuild_reason(key: EngineKey, sidecar: dict | None, plan: Path) -> str | None:
    """Why the cached plan at ``plan`` (with its parsed ``sidecar``) cannot serve ``key``; None for a hit."""
    if not plan.is_file():
        return "no cached engine"
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("key"), dict):
        return "the cached engine has no readable metadata"
    cached = sidecar["key"]
    if cached.get("tensorrt") != key.tensorrt:
        return f"the cached engine was built by TensorRT {cached.get('tensorrt')}, this is {key.tensorrt}"
    identity = tuple(cached.get(k) for k in ("gpu", "compute_capability", "multiprocessors", "memory_mib"))
    if identity != key.gpu_identity():
        return f"the cached engine was built for {_describe(*identity)}, this is {key.describe_gpu()}"
    if cached != key.to_dict():
        return "the cached engine was built from a different model or settings"
    if sidecar.get("plan_sha256") != sha256_file(plan):
        return "the cached engine file does not match its metadata (truncated or edited)"
    return None


class EngineCache:
    """Plans and timing caches under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def plan_path(self, key: EngineKey, model_name: str = "model") -> Path:
        return self.root / "engines" / f"{_slug(model_name)}-{key.precision}-{key.choice_id()}.plan"

    @staticmethod
    def sidecar_path(plan: Path) -> Path:
        return plan.with_name(plan.name + ".json")

    def timing_cache_path(self, key: EngineKey) -> Path:
        """The timing cache for ``key``'s TensorRT and GPU (timings are only valid on that exact GPU)."""
        parts = (key.tensorrt, *key.gpu_identity(), key.device)
        return self.root / "timing" / ("-".join(_slug(str(p)) for p in parts) + ".cache")

    def check_writable(self) -> None:
        """Raise InputError now, before a long build, when plans cannot be written under ``root``."""
        folder = self.root / "engines"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.", suffix=".tmp"):
                pass
        except OSError as exc:
            raise InputError(
                f"engine cache {self.root} is not writable ({exc.strerror or exc}); pass --cache-dir DIR"
            ) from exc

    def lookup(self, key: EngineKey, model_name: str = "model") -> tuple[Path, str | None]:
        """The plan path for ``key`` and why it must be (re)built, or None when the cached plan fits."""
        plan = self.plan_path(key, model_name)
        sidecar = None
        with contextlib.suppress(OSError, ValueError):
            sidecar = json.loads(self.sidecar_path(plan).read_text("utf-8"))
        return plan, rebuild_reason(key, sidecar, plan)

    def store(self, key: EngineKey, plan_bytes: bytes, model_name: str = "model", **info) -> Path:
        """Write the plan, then its sidecar, each atomically; a failed sidecar removes the plan."""
        plan = self.plan_path(key, model_name)
        write_bytes(plan, plan_bytes)
        try:
            write_json(
                self.sidecar_path(plan),
                {
                    "format": SIDECAR_FORMAT,
                    "key": key.to_dict(),
                    "plan_sha256": hashlib.sha256(plan_bytes).hexdigest(),
                    "plan_bytes": len(plan_bytes),
                    **info,
                },
            )
        except BaseException:
            plan.unlink(missing_ok=True)
            raise
        return plan

    def load_or_build(
        self,
        key: EngineKey,
        build: Callable[[], bytes],
        deserialize: Callable[[bytes], object],
        model_name: str = "model",
        force: bool = False,
        **info,
    ):
        """The deserialized engine for ``key``: from the cache, or built, stored and deserialized.

        ``deserialize`` returns None (or raises) for a plan it cannot read; such a plan is rebuilt.
        Returns ``(engine, plan_path, built)``.
        """
        plan, reason = self.lookup(key, model_name)
        seen = _stamp(plan)
        if force:
            reason = "--force"
        if reason is None:
            engine = _try(deserialize, plan.read_bytes())
            if engine is not None:
                log.info("engine: cached %s", plan)
                return engine, plan, False
            reason = "the cached engine failed to deserialize"
        self.check_writable()
        with lock(plan, BUILD_WAIT, what=f"engine {plan}"):  # one builder per plan; the others wait for it
            if not force and _stamp(plan) != seen and self.lookup(key, model_name)[1] is None:
                engine = _try(deserialize, plan.read_bytes())
                if engine is not None:
                    log.info("engine: built meanwhile by another process: %s", plan)
                    return engine, plan, False
            log.info("engine: building %s (%s)", plan.name, reason)
            data = bytes(build())
            plan = self.store(key, data, model_name, **info)
        engine = _try(deserialize, data)
        if engine is None:
            raise DeviceError("TensorRT cannot deserialize the engine it just built")
        return engine, plan, True


def _stamp(plan: Path) -> tuple | None:
    try:
        st = plan.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _try(deserialize: Callable[[bytes], object], data: bytes):
    try:
        return deserialize(data)
    except Exception as exc:  # TensorRT raises or returns None for a foreign or corrupt plan
        log.warning("engine: cached plan unreadable: %s", first_line(exc))
        return None
