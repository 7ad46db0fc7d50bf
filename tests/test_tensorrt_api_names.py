"""Every TensorRT name edgekit's TensorRT layer uses exists in each release where that code can run.

No TensorRT needed: ``tests/data/tensorrt-python-names/<version>.txt.gz`` lists the identifiers inside
the real bindings of 8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106 (copied from the shared reference). The
code is parsed with ``ast``; a use is reachable on a release unless an enclosing ``if``/``else`` on
``major`` (TensorRT's major version) excludes it, also through the call sites of the function holding
it. Names compiled into the bindings but removed from the API (facts file) are checked by qualified name.
"""

from __future__ import annotations

import ast
import gzip
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES = Path(__file__).parent / "data" / "tensorrt-python-names"
SOURCES = sorted((REPO / "edgekit" / "backends" / "tensorrt").glob("*.py"))
# Variables (or self attributes) holding TensorRT objects, whose attributes are TensorRT API.
TRT_OBJECTS = {"builder", "network", "parser", "config", "profile", "runtime", "engine", "context"}
# Defined by tensorrt/__init__.py in Python, so not inside the compiled module.
PYTHON_LEVEL = {"__version__"}
# Still spelled in 11.x's binary (other enums) but removed from this class in 11.0 (tensorrt-facts.md).
REMOVED = {"BuilderFlag.FP16": 11, "BuilderFlag.INT8": 11, "BuilderFlag.BF16": 11, "BuilderFlag.FP8": 11}


@lru_cache(maxsize=None)
def release_names(version: str) -> frozenset:
    with gzip.open(NAMES / f"{version}.txt.gz", "rt") as f:
        return frozenset(line.strip() for line in f if line.strip())


RELEASES = sorted((p.name[: -len(".txt.gz")] for p in NAMES.glob("*.txt.gz")), key=lambda v: [int(x) for x in v.split(".")])


def major_of(version: str) -> int:
    return int(version.split(".")[0])


def has_name(version: str, name: str) -> bool:
    """``name`` is in the release (short names may be stored as the tail of a longer string)."""
    names = release_names(version)
    return name in names or any(n.endswith(name) for n in names)


# ---- the analysis -----------------------------------------------------------------------------
def _chain(node) -> list[str] | None:
    """``trt.A.B`` -> ["A", "B"]; None when not rooted at ``trt``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return parts[::-1] if isinstance(node, ast.Name) and node.id == "trt" else None


def _is_trt_object(node) -> bool:
    if isinstance(node, ast.Name):
        return node.id in TRT_OBJECTS
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in TRT_OBJECTS


class Uses(ast.NodeVisitor):
    """Collects (qualified name, node) for every TensorRT name, and the parent of every node."""

    def __init__(self, tree):
        self.parents, self.uses = {}, []
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
        self.visit(tree)

    def visit_Attribute(self, node):
        chain = _chain(node)
        if chain is not None:
            if not isinstance(self.parents.get(node), ast.Attribute) or _chain(self.parents[node]) is None:
                self.uses.append((".".join(chain), node))
            return
        if _is_trt_object(node.value):
            self.uses.append((node.attr, node))
        self.generic_visit(node)

    def visit_ClassDef(self, node):
        # Methods of a subclass of a TensorRT interface are TensorRT API (log, get_batch, phase_start ...).
        if any(_chain(base) for base in node.bases):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name != "__init__":
                    self.uses.append((item.name, item))
        self.generic_visit(node)


def _gate(test, branch_true: bool, releases: set) -> set:
    keep = set()
    code = compile(ast.Expression(test), "<gate>", "eval")
    for version in releases:
        try:
            value = bool(eval(code, {"__builtins__": {}}, {"major": major_of(version)}))
        except Exception:  # the gate depends on more than ``major``: it may go either way
            keep.add(version)
            continue
        if value == branch_true:
            keep.add(version)
    return keep


def analyse(source: str) -> list[tuple[str, int, set]]:
    """(qualified name, line, releases where that line can run) for every TensorRT name in ``source``."""
    tree = ast.parse(source)
    uses = Uses(tree)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            calls.setdefault(node.func.id, []).append(node)

    def reachable(node, seen=frozenset()) -> set:
        releases = set(RELEASES)
        child = node
        parent = uses.parents.get(child)
        while parent is not None:
            if isinstance(parent, (ast.If, ast.IfExp)) and child is not parent.test:
                body = parent.body if isinstance(parent.body, list) else [parent.body]
                releases = _gate(parent.test, child in body, releases)
            if isinstance(parent, ast.FunctionDef) and parent.name in calls and parent.name not in seen:
                sites = set().union(*(reachable(c, seen | {parent.name}) for c in calls[parent.name]))
                releases &= sites
            child, parent = parent, uses.parents.get(parent)
        return releases

    return [(name, node.lineno, reachable(node)) for name, node in uses.uses]


def problems(source: str) -> list[str]:
    found = []
    for qualified, line, releases in analyse(source):
        leaf = qualified.split(".")
        for version in sorted(releases):
            if qualified in REMOVED and major_of(version) >= REMOVED[qualified]:
                found.append(f"line {line}: {qualified} was removed in TensorRT {REMOVED[qualified]} but runs on {version}")
            for part in leaf:
                if part not in PYTHON_LEVEL and not has_name(version, part):
                    found.append(f"line {line}: {qualified} is not in TensorRT {version}'s bindings")
    return found


# ---- tests ------------------------------------------------------------------------------------
def test_reference_data_present():
    assert [major_of(v) for v in RELEASES] == [8, 10, 10, 11]
    assert has_name("10.3.0", "execute_async_v3") and not has_name("10.3.0", "execute_async_v2")
    assert has_name("10.13.3.9", "IInt8EntropyCalibrator2") and not has_name("11.4.0.106", "IInt8EntropyCalibrator2")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_tensorrt_name_exists_where_it_runs(path):
    assert problems(path.read_text()) == []


def test_the_layer_uses_the_named_tensor_api():
    used = {name for path in SOURCES for name, _, _ in analyse(path.read_text())}
    for name in ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "set_input_shape", "set_tensor_address",
                 "execute_async_v3", "build_serialized_network", "set_memory_pool_limit", "deserialize_cuda_engine",
                 "create_optimization_profile", "create_timing_cache", "IProgressMonitor", "IInt8EntropyCalibrator2"):
        assert any(u == name or u.endswith("." + name) or u.startswith(name + ".") for u in used), name
    for removed in ("execute_async_v2", "execute_v2", "build_engine", "max_workspace_size", "get_binding_shape"):
        assert removed not in used


def test_version_gated_names_are_gated():
    by_name = {}
    for path in SOURCES:
        for name, _, releases in analyse(path.read_text()):
            by_name.setdefault(name, set()).update(releases)
    assert by_name["NetworkDefinitionCreationFlag.EXPLICIT_BATCH"] == {"8.6.1"}
    assert "11.4.0.106" not in by_name["int8_calibrator"]
    assert "11.4.0.106" not in by_name["IInt8EntropyCalibrator2"]  # through entropy_calibrator's call site
    assert "8.6.1" not in by_name["IProgressMonitor"]
    assert by_name["execute_async_v3"] == set(RELEASES)


def test_checker_catches_ungated_and_accepts_gated_uses():
    """The analysis itself: a removed name is flagged unless a ``major`` gate excludes those releases."""
    bad = "def f(context, trt):\n    context.execute_async_v2([], 0)\n    config.set_flag(trt.BuilderFlag.INT8)\n"
    flagged = problems(bad)
    assert any("execute_async_v2" in p and "10.3.0" in p for p in flagged)
    assert any("BuilderFlag.INT8" in p and "11.4.0.106" in p for p in flagged)
    good = (
        "def f(context, config, trt, major):\n"
        "    if major < 10:\n        context.execute_async_v2([], 0)\n"
        "    else:\n        context.execute_async_v3(0)\n"
        "    if major < 11:\n        config.set_flag(trt.BuilderFlag.INT8)\n"
    )
    assert problems(good) == []
    via_call = "def g(trt):\n    return trt.IProgressMonitor\n\ndef f(major, trt):\n    if major >= 10:\n        g(trt)\n"
    assert problems(via_call) == []
    assert problems(via_call.replace("major >= 10", "True")) != []
