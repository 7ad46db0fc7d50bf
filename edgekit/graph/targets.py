"""Export targets: a JetPack or TensorRT version -> TensorRT release, operator table and opset range.

Names: ``jetpack-6.1`` (or ``jp6.1``) and ``tensorrt-10.3`` (or ``trt-10.3``, ``trt-10``, ``tensorrt-10.x``).
Operator tables are onnx-tensorrt's ``docs/operators.md`` per branch (``edgekit/graph/ops/*.json``);
TensorRT 8.0 (JetPack 4.6) uses the 8.2 table and TensorRT 10.x/11.x the 10.1 table, the closest published.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edgekit.errors import UsageError

OPS_DIR = Path(__file__).with_name("ops")
DEFAULT_TARGET = "jetpack-6.1"
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class Target:
    """A TensorRT release to check a graph against: its operator table and the opsets its parser reads."""

    name: str  # canonical, e.g. "jetpack-6.1"
    tensorrt: str  # e.g. "10.3"
    op_table: str  # file stem in ops/, e.g. "10.1-GA"
    max_opset: int
    min_opset: int = 7
    note: str = ""

    @property
    def trt_major(self) -> int:
        return int(self.tensorrt.split(".")[0])

    @property
    def default_opset(self) -> int:
        return min(DEFAULT_OPSET, self.max_opset)

    @property
    def supported_ops(self) -> frozenset[str]:
        return _table(self.op_table)[0]

    @property
    def unsupported_ops(self) -> frozenset[str]:
        return _table(self.op_table)[1]


def _t(name, trt, table, max_opset, note=""):
    return Target(name, trt, table, max_opset, 9 if int(trt.split(".")[0]) >= 10 else 7, note)


TARGETS = {
    t.name: t
    for t in (
        _t("jetpack-4.6", "8.0", "8.2-GA", 13, "Nano/TX2, end of line; checked with the TensorRT 8.2 table"),
        _t("jetpack-4.6.1", "8.2", "8.2-GA", 13, "Nano/TX2, end of line"),
        _t("jetpack-5.1", "8.5", "8.5-GA", 17, "Xavier, Orin"),
        _t("jetpack-6.0", "8.6", "8.6-GA", 17, "Orin"),
        _t("jetpack-6.1", "10.3", "10.1-GA", 20, "Orin"),
        _t("jetpack-6.2", "10.3", "10.1-GA", 20, "Orin"),
        _t("jetpack-7.0", "10.13", "10.1-GA", 20, "Thor"),
        _t("jetpack-7.1", "10.13", "10.1-GA", 20, "Thor"),
        _t("jetpack-7.2", "11.4", "10.1-GA", 20, "AGX Orin, Thor; INT8 only from Q/DQ"),
        _t("tensorrt-8.2", "8.2", "8.2-GA", 13),
        _t("tensorrt-8.5", "8.5", "8.5-GA", 17),
        _t("tensorrt-8.6", "8.6", "8.6-GA", 17),
        _t("tensorrt-10", "10", "10.1-GA", 20, "any TensorRT 10.x"),
        _t("tensorrt-11", "11", "10.1-GA", 20, "any TensorRT 11.x; INT8 only from Q/DQ"),
    )
}

# TensorRT minor releases that exist (NVIDIA's release notes, 2026-11): a later minor is refused rather
# than checked with a table that may not fit it; ``tensorrt-10``/``tensorrt-11`` cover "any of them".
KNOWN_MINORS = {10: 16, 11: 4}

ALIASES = {"jetpack-4.6.2": "jetpack-4.6.1", "jetpack-4.6.3": "jetpack-4.6.1", "jetpack-4.6.4": "jetpack-4.6.1",
           "jetpack-5.1.1": "jetpack-5.1", "jetpack-5.1.2": "jetpack-5.1", "jetpack-5.1.3": "jetpack-5.1",
           "jetpack-5.1.4": "jetpack-5.1", "jetpack-5.1.5": "jetpack-5.1", "jetpack-7": "jetpack-7.0",
           "jetpack-7.2.2": "jetpack-7.2", "jetpack-6": "jetpack-6.0"}


def get_target(name: str) -> Target:
    """Resolve a target name (JetPack or TensorRT version); UsageError listing the valid ones."""
    key = _normalise(name)
    key = ALIASES.get(key, key)
    if key in TARGETS:
        return TARGETS[key]
    m = re.fullmatch(r"tensorrt-(10|11)(?:\.(\d+|x))?(?:\.\d+)*", key)
    if m:
        base = TARGETS[f"tensorrt-{m[1]}"]
        minor = m[2] if m[2] and m[2] != "x" else None
        if minor is None:
            return base
        newest = KNOWN_MINORS[int(m[1])]
        if int(minor) > newest:
            raise UsageError(f"unknown TensorRT release {m[1]}.{minor} (known: {m[1]}.0 to {m[1]}.{newest}); "
                             f"--target tensorrt-{m[1]} checks with the {m[1]}.x table")
        return Target(f"tensorrt-{m[1]}.{minor}", f"{m[1]}.{minor}", base.op_table, base.max_opset, base.min_opset)
    m = re.fullmatch(r"tensorrt-(8\.[256])\.\d+(?:\.\d+)*", key)
    if m:
        return TARGETS[f"tensorrt-{m[1]}"]
    raise UsageError(f"unknown target {name!r}; valid targets: {', '.join(valid_names())}")


def valid_names() -> list[str]:
    """Target names for messages: the table's, and the TensorRT 10/11 minor-version patterns."""
    return list(TARGETS) + ["tensorrt-10.N", "tensorrt-11.N"]


def _normalise(name: str) -> str:
    s = str(name).strip().lower().replace(" ", "-").replace("_", "-")
    s = re.sub(r"^(jp|jetpack)-?(?=\d)", "jetpack-", s)
    s = re.sub(r"^(trt|tensorrt)-?(?=\d)", "tensorrt-", s)
    return s


@lru_cache(maxsize=None)
def _table(stem: str) -> tuple[frozenset[str], frozenset[str]]:
    data = json.loads((OPS_DIR / f"{stem}.json").read_text("utf-8"))
    return frozenset(data["supported"]), frozenset(data["unsupported"])
