"""The checker behind tests/test_tensorrt_api_names.py: every TensorRT name edgekit's TensorRT layer uses
exists, on the class it is used on, in each release where that code can run (not collected by pytest).

No TensorRT needed. ``tests/data/tensorrt-python-names/classes-<release>.json`` lists, per release, the
names of each class and enum of the Python bindings (derived from NVIDIA/TensorRT's pybind11 sources by
``derive.py`` there: 8.5.3 for JetPack 5, 8.6.1, 10.3.0 for JetPack 6, 10.13.3, 11.1), and
``<version>.txt.gz`` every identifier inside the compiled bindings of 8.6.1, 10.3.0, 10.13.3.9 and 11.4.0.106.

``signatures-<release>.json`` (also by ``derive.py``) says per name whether it is a property or a method
and, from pybind11's argument annotations, how many arguments a method takes.

The code is parsed with ``ast``. ``tensorrt`` is followed under any import name (``import tensorrt``,
``import tensorrt as t``, ``from tensorrt import X``) and ``trt`` by convention. The class of each
receiver is inferred statically: ``trt.X(...)`` is an ``X``; a method or property of a known class
returns the class in :data:`RETURNS`; an assignment (also to tuple targets, ``with ... as``, ``:=``)
carries its value's class to the variable (or ``self`` attribute); an annotated parameter
(``e: "trt.ICudaEngine"``) has its annotation's class; a variable or ``self`` attribute whose class is
not inferred falls back to edgekit's naming convention (:data:`CONVENTIONAL`). A TensorRT-only name
(:data:`DISTINCTIVE`) on a receiver whose class is still unknown is reported, not skipped. Methods of a
subclass of ``trt.X`` must be names of ``X``. A use is reachable on a release unless an enclosing
``if``/``else`` on ``major`` (TensorRT's major version) excludes it, also through the call sites of the
function holding it. The modules are found by glob (``edgekit/backends/tensorrt/**/*.py``).
"""

from __future__ import annotations

import ast
import gzip
import json
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMES = Path(__file__).parent / "data" / "tensorrt-python-names"
SOURCES = sorted((REPO / "edgekit" / "backends" / "tensorrt").rglob("*.py"))  # every module, however split
# Variables (or self attributes) of these names hold these classes unless an assignment says otherwise.
CONVENTIONAL = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "profile": "IOptimizationProfile", "runtime": "Runtime", "engine": "ICudaEngine", "context": "IExecutionContext",
}
# What a method (called) or property (read) of a class returns, where that is a TensorRT class.
RETURNS = {
    ("Builder", "create_network"): "INetworkDefinition",
    ("Builder", "create_builder_config"): "IBuilderConfig",
    ("Builder", "create_optimization_profile"): "IOptimizationProfile",
    ("Builder", "build_serialized_network"): "IHostMemory",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
    ("INetworkDefinition", "get_input"): "ITensor",
    ("INetworkDefinition", "get_output"): "ITensor",
    ("OnnxParser", "get_error"): "ParserError",
    ("Runtime", "deserialize_cuda_engine"): "ICudaEngine",
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",
    ("ICudaEngine", "serialize"): "IHostMemory",
    ("IExecutionContext", "engine"): "ICudaEngine",
}


def _version_key(version: str) -> list[int]:
    return [int(x) for x in version.split(".")]


RELEASES = sorted((p.stem[len("classes-"):] for p in NAMES.glob("classes-*.json")), key=_version_key)
FLAT_RELEASES = sorted((p.name[: -len(".txt.gz")] for p in NAMES.glob("*.txt.gz")), key=_version_key)


def major_of(version: str) -> int:
    return int(version.split(".")[0])


@lru_cache(maxsize=None)
def api(version: str) -> dict:
    return json.loads((NAMES / f"classes-{version}.json").read_text())


@lru_cache(maxsize=None)
def flat_names(version: str) -> frozenset:
    with gzip.open(NAMES / f"{version}.txt.gz", "rt") as f:
        return frozenset(line.strip() for line in f if line.strip())


PYTHON_LEVEL = frozenset(n for v in RELEASES for n in api(v)["python"])


def lineage(version: str, cls: str) -> list[str]:
    """``cls`` and its bases, nearest first (empty when the release has no such class)."""
    classes = api(version)["classes"]
    out, todo = [], [cls]
    while todo:
        c = todo.pop(0)
        if c in classes and c not in out:
            out.append(c)
            todo.extend(classes[c]["bases"])
    return out


def has(version: str, owner: str, name: str) -> bool:
    """``owner.name`` exists in ``version`` (owner "" is the ``tensorrt`` module)."""
    data = api(version)
    if owner == "":
        return name in data["module"] or name in data["python"]
    return any(name in data["classes"][c]["names"] for c in lineage(version, owner))


def nested_class(owner: str, name: str) -> str | None:
    """The class ``owner.name`` names in any release (``trt.Builder``, ``trt.ILogger.Severity``, via bases too)."""
    for version in RELEASES:
        if owner == "":
            if name in api(version)["classes"]:
                return name
            continue
        for c in lineage(version, owner):
            if f"{c}.{name}" in api(version)["classes"]:
                return f"{c}.{name}"
    return None


# ---- the analysis -----------------------------------------------------------------------------
@lru_cache(maxsize=None)
def signatures(version: str) -> dict:
    """Per class, ``"property"``, ``[min, max]`` method arguments or None (unknown), from derive.py."""
    return json.loads((NAMES / f"signatures-{version}.json").read_text())["classes"]


def kind(version: str, owner: str, name: str):
    """What ``owner.name`` is in ``version``: "property", [min, max], or None (unknown or absent)."""
    for c in lineage(version, owner):
        found = signatures(version).get(c, {})
        if name in found:
            return found[name]
    return None


def _generic_names() -> frozenset:
    """Attribute names of everyday Python objects: on an untyped receiver they say nothing of TensorRT."""
    import logging
    import threading

    import numpy as np

    objects = (object, str, bytes, list, dict, set, tuple, int, float, Path, np.ndarray, np.dtype,
               logging.Logger, threading.Thread, threading.Event, memoryview, type(iter([])))
    words = {"name", "shape", "dtype", "size", "log", "read", "write", "precision", "free"}  # edgekit's objects have them too
    return frozenset(n for o in objects for n in dir(o)) | words


# Names that only TensorRT's API has: such an attribute on a receiver whose class is not inferred is
# reported (a use the checker cannot verify), not skipped.
DISTINCTIVE = frozenset(
    n for v in RELEASES for c in api(v)["classes"].values() for n in c["names"] if not n.startswith("__")
) - _generic_names()


def _resolve(chain: list[str]) -> list[tuple[str, str]]:
    """The (owner, name) lookups ``trt.<chain>`` makes, down to the first name that is not a class."""
    owner, out = "", []
    for part in chain:
        out.append((owner, part))
        owner = nested_class(owner, part)
        if owner is None:
            break
    return out


def _class_of_chain(chain: list[str]) -> str | None:
    owner = ""
    for part in chain:
        owner = nested_class(owner, part) if owner is not None else None
    return owner


class Module:
    """Every TensorRT (owner class, name) looked up in a module, with its node; calls on typed receivers;
    TensorRT-looking names on receivers whose class is not inferred (``untyped``)."""

    def __init__(self, tree):
        self.parents = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self.parents[child] = parent
        self.module = tree
        self.aliases = {"trt"}  # names bound to the tensorrt module (``trt`` also by convention)
        self.imported: dict = {}  # name -> tensorrt module-level name (``from tensorrt import X as name``)
        self.other_modules: set = set()  # names bound to other modules (numpy, cuda ...): not TensorRT receivers
        self.uses = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "tensorrt":
                        self.aliases.add(a.asname or "tensorrt")
                    else:
                        self.other_modules.add(a.asname or a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if node.module == "tensorrt":
                        self.imported[a.asname or a.name] = a.name
                        self.uses.append(("", a.name, node))
                    else:
                        self.other_modules.add(a.asname or a.name)
        self.env: dict = {}  # (scope node, variable) -> class
        self.self_env: dict = {}  # self attribute -> class
        for _ in range(3):  # assignments may use classes inferred from later lines
            for node in ast.walk(tree):
                for target, value in self._bindings(node):
                    cls = value if isinstance(value, str) else self.class_of(value)
                    if cls and isinstance(target, ast.Name):
                        self.env[(self.scope(target), target.id)] = cls
                    elif cls and self._self_attr(target):
                        self.self_env[target.attr] = cls
        self.calls = []  # (owner, name, argument count or None with */**, node)
        self.untyped = []  # (name, node)
        for node in ast.walk(tree):
            self._collect(node)

    def _bindings(self, node):
        """(target, value expression or class name) pairs a statement binds."""
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    yield from zip(target.elts, node.value.elts)
                else:
                    yield target, node.value
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            yield node.target, node.value
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    yield item.optional_vars, item.context_expr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # annotated parameters: ``e: trt.ICudaEngine``
            for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
                cls = self._annotation(arg.annotation)
                if cls:
                    name = ast.Name(arg.arg, ast.Load())
                    self.parents[name] = node.body[0]  # scoped to the function
                    yield name, cls

    def _annotation(self, node) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                node = ast.parse(node.value, mode="eval").body
            except SyntaxError:
                return None
        chain = self.chain(node) if node is not None else None
        return _class_of_chain(chain) if chain else None

    def chain(self, node) -> list[str] | None:
        """``trt.A.B`` (any alias of tensorrt, or a name imported from it) -> ["A", "B"]; None otherwise."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        if node.id in self.aliases:
            return parts[::-1]
        if node.id in self.imported:
            return [self.imported[node.id]] + parts[::-1]
        return None

    def scope(self, node):
        while node is not None and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Module)):
            node = self.parents.get(node)
        return node

    @staticmethod
    def _self_attr(node) -> bool:
        return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"

    def class_of(self, node) -> str | None:
        """The TensorRT class of expression ``node``, or None."""
        if isinstance(node, ast.Name) and node.id not in self.imported:
            scope = self.scope(node)
            return self.env.get((scope, node.id)) or self.env.get((self.module, node.id)) or CONVENTIONAL.get(node.id)
        if self._self_attr(node):
            return self.self_env.get(node.attr) or CONVENTIONAL.get(node.attr)
        if isinstance(node, ast.Call):
            chain = self.chain(node.func)
            if chain:
                return _class_of_chain(chain)
            if isinstance(node.func, ast.Attribute):
                return RETURNS.get((self.class_of(node.func.value), node.func.attr))
        if isinstance(node, ast.Attribute):
            return RETURNS.get((self.class_of(node.value), node.attr))
        return None

    def _collect(self, node) -> None:
        if isinstance(node, ast.Attribute):
            chain = self.chain(node)
            if chain is not None:
                parent = self.parents.get(node)
                if not (isinstance(parent, ast.Attribute) and self.chain(parent) is not None):
                    root = self._root(node)
                    lookups = _resolve(chain)
                    if root in self.imported:  # ``X.y`` after ``from tensorrt import X``: X is checked at the import
                        lookups = lookups[1:]
                    self.uses += [(owner, name, node) for owner, name in lookups]
                return
            owner = self.class_of(node.value)
            if owner:
                self.uses.append((owner, node.attr, node))
            elif (node.attr in DISTINCTIVE and self._root(node) not in self.other_modules
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                self.untyped.append((node.attr, node))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if self.chain(node.func) is None:
                owner = self.class_of(node.func.value)
                if owner:
                    starred = any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords)
                    self.calls.append((owner, node.func.attr, None if starred else len(node.args) + len(node.keywords),
                                       node.func))
        elif isinstance(node, ast.ClassDef):
            # Methods of a subclass of a TensorRT class override that class's methods (log, get_batch ...).
            for base in node.bases:
                chain = self.chain(base)
                cls = _class_of_chain(chain) if chain else None
                if cls:
                    self.uses += [(cls, item.name, item) for item in node.body if isinstance(item, ast.FunctionDef)]

    @staticmethod
    def _root(node):
        while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
            node = node.value if not isinstance(node, ast.Call) else node.func
        return node.id if isinstance(node, ast.Name) else None


def _gate(test, branch_true: bool, majors: set) -> set:
    keep = set()
    code = compile(ast.Expression(test), "<gate>", "eval")
    for major in majors:
        try:
            value = bool(eval(code, {"__builtins__": {}}, {"major": major}))
        except Exception:  # the gate depends on more than ``major``: it may go either way
            keep.add(major)
            continue
        if value == branch_true:
            keep.add(major)
    return keep


ALL_MAJORS = frozenset(major_of(v) for v in RELEASES + FLAT_RELEASES)


def _analysis(source: str):
    """The module's analysis and ``reachable(node)``: the majors where ``node`` can run."""
    tree = ast.parse(source)
    mod = Module(tree)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            calls.setdefault(node.func.id, []).append(node)

    def reachable(node, seen=frozenset()) -> set:
        majors = set(ALL_MAJORS)
        child = node
        parent = mod.parents.get(child)
        while parent is not None:
            if isinstance(parent, (ast.If, ast.IfExp)) and child is not parent.test:
                body = parent.body if isinstance(parent.body, list) else [parent.body]
                majors = _gate(parent.test, child in body, majors)
            if isinstance(parent, ast.FunctionDef) and parent.name in calls and parent.name not in seen:
                majors &= set().union(*(reachable(c, seen | {parent.name}) for c in calls[parent.name]))
            child, parent = parent, mod.parents.get(parent)
        return majors

    return mod, reachable


def analyse(source: str) -> list[tuple[str, int, set]]:
    """(``Owner.name``, line, majors where that line can run) for every TensorRT lookup in ``source``.

    The owner of a module-level name is ``trt``.
    """
    mod, reachable = _analysis(source)
    return [(f"{owner or 'trt'}.{name}", node.lineno, reachable(node)) for owner, name, node in mod.uses]


def in_flat(version: str, name: str) -> bool:
    """``name`` is in the compiled bindings of ``version``: as a whole line, or, only where the newest
    derived release of the same major has it, as the tail of a longer string (the compiler stores a short
    string inside a longer one ending with it). A tail alone never proves a name: ``io_tensors`` is not
    a name because ``num_io_tensors`` is."""
    names = flat_names(version)
    if name in names:
        return True
    derived = [v for v in RELEASES if major_of(v) == major_of(version)]
    known = bool(derived) and any(name in c["names"] or name in api(derived[-1])["module"]
                                  for c in api(derived[-1])["classes"].values())
    return known and any(n.endswith(name) for n in names)


def problems(source: str) -> list[str]:
    """One line per (use, release) where the name is missing from its class (or the class is missing), a
    property is called, or a method gets a wrong number of arguments; one line per TensorRT-looking name
    on a receiver whose class the checker cannot infer (annotate it, e.g. ``engine: "trt.ICudaEngine"``)."""
    mod, reachable = _analysis(source)
    found = []
    for owner, name, node in mod.uses:
        majors, qualified, line = reachable(node), f"{owner or 'trt'}.{name}", node.lineno
        for version in RELEASES:
            if major_of(version) not in majors:
                continue
            if owner and not lineage(version, owner):
                found.append(f"line {line}: {qualified}: TensorRT {version} has no class {owner}")
            elif not has(version, owner, name):
                found.append(f"line {line}: {qualified} is not in TensorRT {version}")
        for version in FLAT_RELEASES:  # 11.4 is newer than the binding sources: its compiled module's names
            if major_of(version) in majors and name not in PYTHON_LEVEL and not in_flat(version, name):
                found.append(f"line {line}: {qualified} is not in TensorRT {version}'s bindings")
    for owner, name, count, node in mod.calls:
        majors = reachable(node)
        for version in RELEASES:
            if major_of(version) not in majors or not has(version, owner, name):
                continue  # a missing name is reported above
            what = kind(version, owner, name)
            if what == "property":
                found.append(f"line {node.lineno}: {owner}.{name} is a property in TensorRT {version}, called as a method")
            elif isinstance(what, list) and count is not None and not what[0] <= count <= what[1]:
                takes = f"{what[0]}" if what[0] == what[1] else f"{what[0]}-{what[1]}"
                found.append(f"line {node.lineno}: {owner}.{name} takes {takes} argument(s) in TensorRT {version}, "
                             f"given {count}")
    for name, node in mod.untyped:
        found.append(f"line {node.lineno}: cannot infer the TensorRT class of the receiver of .{name} "
                     f"({ast.unparse(node.value)}); annotate it or use a conventional name")
    return found
