"""What a TensorRT build uses, decided without TensorRT: options, profile shapes, source model and flags,
precision and DLA checks, workspace, and how to read TensorRT's error messages. Pure and testable anywhere.

TensorRT 11 is strongly typed: an INT8 engine is built from the Q/DQ model as it is, so the layers
the quantizer left in float (score heads, ``--keep-float`` nodes, non-fused ops) run in FP32, not
FP16 as with TensorRT <= 10's FP16 flag. edgekit keeps them FP32 (the gate measured exactly that
model) and says so in the build log; FP16 islands would need their own gated model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.backends.tensorrt.gpus import fast_on
from edgekit.bundle import PRECISIONS, Bundle
from edgekit.errors import BundleError, DeviceError, ModelError, UsageError

OOM_MARKERS = ("out of memory", "outofmemory", "insufficient memory", "cudamalloc", "requested amount of gpu memory")
# TensorRT's closing summaries of a failed build: they name no cause, the errors before them do.
GENERIC_ERRORS = ("buildserializednetwork", "engine != nullptr", "network validation failed",
                  "engine could not be created", "failed to build", "builder failed", "could not build engine")


class UnsupportedPrecisionError(DeviceError):
    """The device cannot run the asked precision or DLA core (doctor's self-test reports it as unsupported)."""


# ---- pure decisions -------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    """What a TensorRT build takes. ``precision`` is concrete (the caller chose it: ``select.choose_model``);
    ``batch`` is the (min, opt, max) batch of the optimization profile (static, min = opt = max, with
    ``dla_core``); ``device`` is the CUDA device index; ``workspace_mib`` None: from the GPU's free memory
    (:func:`default_workspace_mib`); ``nms_score_threshold`` sets a detector's NMS score threshold in the
    engine (the loop's engine carries the run threshold, validate's the eval threshold)."""

    precision: str = "fp32"
    batch: tuple = (1, 1, 1)
    workspace_mib: int | None = None
    dla_core: int | None = None
    calibrate: Path | None = None
    cache_dir: Path | None = None
    force: bool = False
    device: int = 0
    nms_score_threshold: float | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise UsageError(f"TensorRT builds {', '.join(PRECISIONS)}, not {self.precision!r}")
        object.__setattr__(self, "batch", parse_batch(self.batch, static=self.dla_core is not None))
        if self.workspace_mib is not None and self.workspace_mib <= 0:
            raise UsageError("--workspace must be a positive number of MiB")
        if self.dla_core is not None and self.dla_core < 0:
            raise UsageError("--dla must be a DLA core number (0 or 1)")


def parse_batch(spec, static: bool = False) -> tuple[int, int, int]:
    """``"8"`` -> (1, 8, 8); ``"1,4,8"`` -> (1, 4, 8); tuples pass through. Needs 1 <= min <= opt <= max.

    ``static`` (DLA, which has no dynamic shapes): ``"8"`` -> (8, 8, 8), and a range is refused.
    """
    if isinstance(spec, int):
        spec = (spec,) * 3 if static else (1, spec, spec)
    elif isinstance(spec, str):
        try:
            parts = tuple(int(p) for p in spec.split(","))
        except ValueError:
            raise UsageError(f"--batch takes N or MIN,OPT,MAX, got {spec!r}") from None
        spec = (parts[0] if static else 1, parts[0], parts[0]) if len(parts) == 1 else parts
    spec = tuple(int(v) for v in spec)
    if len(spec) != 3 or not 1 <= spec[0] <= spec[1] <= spec[2]:
        raise UsageError(f"--batch needs 1 <= MIN <= OPT <= MAX, got {','.join(map(str, spec))}")
    if static and spec[0] != spec[2]:
        raise UsageError(
            f"DLA needs a static batch (min = opt = max), got {','.join(map(str, spec))}; pass --batch N with --dla"
        )
    return spec


def profile_shapes(input_shape, batch: tuple[int, int, int]) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) input shapes from the manifest's input shape and the batch profile."""
    rest = list(input_shape[1:])
    if not all(isinstance(d, int) and d > 0 for d in rest):
        raise ModelError(f"input shape {input_shape} has dynamic dimensions besides the batch; TensorRT needs them fixed")
    fixed = input_shape[0]
    if isinstance(fixed, int) and fixed > 0 and batch != (fixed, fixed, fixed):
        if batch != (1, 1, 1) or fixed != 1:
            raise UsageError(f"the model's batch is fixed at {fixed}; --batch cannot change it")
        batch = (fixed,) * 3
    elif isinstance(fixed, int) and fixed > 0:
        batch = (fixed,) * 3
    return tuple(tuple([b] + rest) for b in batch)


@dataclass(frozen=True)
class Recipe:
    """Which bundle model TensorRT parses, with which builder flags, and whether a calibrator runs."""

    model_key: str
    flags: tuple = field(default_factory=tuple)
    calibrate: bool = False


def recipe(bundle: Bundle, precision: str, major: int, calibrate: Path | None = None) -> Recipe:
    """Choose the source model and builder flags for ``precision`` on TensorRT ``major``.

    TensorRT < 11 builds FP16 from the fp32 model with the FP16 flag, and INT8 from the Q/DQ model
    (or, with ``calibrate``, from fp32 with an entropy calibrator). TensorRT 11 is strongly typed:
    precision comes from the ONNX, so FP16 needs the fp16 model and INT8 the Q/DQ model.
    """
    if precision == "fp32":
        return Recipe("fp32")
    if major >= 11:
        if calibrate is not None:
            raise UsageError("TensorRT 11 removed implicit INT8 calibration; use the bundle's Q/DQ model (edgekit quantize)")
        if not bundle.has_model(precision):
            how = "edgekit quantize" if precision == "int8" else "an fp16 export of the model"
            raise BundleError(
                f"TensorRT {major} is strongly typed: {precision} needs the bundle's {precision} model ({how}); {bundle.path} has none"
            )
        return Recipe(precision)
    if precision == "fp16":
        return Recipe("fp32", ("FP16",))
    if bundle.has_model("int8") and calibrate is None:
        return Recipe("int8", ("INT8", "FP16"))
    if calibrate is not None:
        return Recipe("fp32", ("INT8", "FP16"), calibrate=True)
    raise BundleError(
        f"bundle {bundle.path} has no int8 (Q/DQ) model and no calibration set: run `edgekit quantize` (or `edgekit build --calibrate DIR`)"
    )


def check_precision(precision: str, compute_capability: str | None, fast_fp16=None, fast_int8=None) -> None:
    """Raise DeviceError when the GPU cannot run ``precision`` (TensorRT's own answer wins when given)."""
    fast = {"fp16": fast_fp16, "int8": fast_int8}.get(precision)
    if fast is None:
        fast = fast_on(precision, compute_capability)
    if fast is False:
        raise UnsupportedPrecisionError(
            f"this GPU (sm {compute_capability}) has no fast {precision.upper()}; build with --precision fp32"
            + (" or fp16" if precision == "int8" and (fast_fp16 is not False) else "")
        )


def check_dla(dla_core: int | None, num_dla_cores: int, precision: str) -> None:
    """Raise DeviceError when DLA core ``dla_core`` cannot be used for ``precision``."""
    if dla_core is None:
        return
    if num_dla_cores == 0:
        raise UnsupportedPrecisionError("this device has no DLA (Orin Nano and desktop GPUs have none); drop --dla")
    if dla_core >= num_dla_cores:
        raise UnsupportedPrecisionError(f"DLA core {dla_core} does not exist; this device has {num_dla_cores} (0..{num_dla_cores - 1})")
    if precision == "fp32":
        raise UnsupportedPrecisionError("DLA runs FP16 or INT8 only; pass --precision fp16 or int8 with --dla")


def folder_digest(paths) -> str:
    """A digest of image file names and sizes: identifies a calibration set in the engine key."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(f"{Path(p).name}:{os.path.getsize(p)}\n".encode())
    return h.hexdigest()[:16]


def root_cause(messages: list[str]) -> str:
    """The first error TensorRT logged that names a cause, not its closing "build failed" summary."""
    specific = [m for m in messages if not any(g in m.lower().replace(" ", "") for g in
                                               (x.replace(" ", "") for x in GENERIC_ERRORS))]
    return (specific or messages or ["unknown error"])[0].strip()


def default_workspace_mib(free_mib: int | None) -> int | None:
    """The builder's workspace limit when ``--workspace`` is not given: half the GPU's free memory (a
    Jetson shares it with the CPU; TensorRT's default, the whole device, is what runs small ones out of
    memory), at least 64 MiB. None when the free memory is unknown (TensorRT's default then)."""
    if not free_mib:
        return None
    return max(64, int(free_mib) // 2)


def oom_message(workspace_mib: int | None, batch: tuple[int, int, int]) -> str:
    """The one line for a build that ran out of memory: what to try, with options that exist."""
    limit = f"a smaller --workspace than {workspace_mib} MiB" if workspace_mib else "--workspace MiB"
    smaller = " or a smaller --batch profile" if batch[2] > 1 else ""
    return (f"TensorRT ran out of memory building the engine: build it with {limit}{smaller}"
            " (`edgekit build BUNDLE`), close other GPU programs or add swap (common on small Jetsons)")


def oom_hint(messages: list[str]) -> bool:
    """True when TensorRT's error messages say the build ran out of memory."""
    text = " ".join(messages).lower().replace(" ", "")
    return any(marker.replace(" ", "") in text for marker in OOM_MARKERS)
