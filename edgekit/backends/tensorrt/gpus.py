"""Which GPUs run which precision fast, by compute capability (TensorRT's support matrix); pure, no CUDA.

Pascal's 6.1 has INT8 but no fast FP16, 6.0 and 6.2 (TX2) the reverse; Maxwell's 5.3 (Nano, TX1) FP16
only; everything from 7.0 both. Used by backend choice (``select``) and by the builder's checks.
"""

from __future__ import annotations

FAST = {"fp32": lambda cc: cc >= (3, 0),
        "fp16": lambda cc: cc in ((5, 3), (6, 0), (6, 2)) or cc >= (7, 0),
        "int8": lambda cc: cc == (6, 1) or cc >= (7, 0)}
# GPUs with 32K registers per block (TX1/TX2/Nano): EfficientNMS_TRT's initialize() keeps 2000 boxes
# before NMS there, 5000 on every other GPU (its header's 4096 is only a default it overrides).
SMALL_REGISTER_FILE = ((5, 3), (6, 2))
PLUGIN_TOP_K = 5000
PLUGIN_TOP_K_SMALL = 2000


def _cc(compute_capability: str) -> tuple[int, int]:
    major, minor = (int(v) for v in compute_capability.split(".")[:2])
    return major, minor


def fast_on(precision: str, compute_capability: str | None) -> bool:
    """True when a GPU of ``compute_capability`` runs ``precision`` fast (unknown capability: assume so)."""
    if not compute_capability:
        return True
    return FAST[precision](_cc(compute_capability))


def plugin_top_k(compute_capability: str | None) -> int:
    """The pre-NMS top-k EfficientNMS_TRT uses on a GPU of ``compute_capability`` (unknown: 5000)."""
    if compute_capability and _cc(compute_capability) in SMALL_REGISTER_FILE:
        return PLUGIN_TOP_K_SMALL
    return PLUGIN_TOP_K
