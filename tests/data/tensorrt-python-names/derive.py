"""Derive per-class TensorRT Python API names from NVIDIA/TensorRT's pybind11 binding sources.

Not run by CI: its output, ``classes-<release>.json`` beside this file, is committed. Rerun it when a
TensorRT release is added::

    python tests/data/tensorrt-python-names/derive.py /path/to/TensorRT.git v10.3.0=10.3.0 ...

``/path/to/TensorRT.git`` is a clone (bare is fine) of github.com/NVIDIA/TensorRT; each ``REF=RELEASE``
reads ``python/src/**/*.cpp`` and the Python-level ``tensorrt/__init__.py`` at git ref REF with
``git show`` and writes ``classes-RELEASE.json``::

    {"release": "10.3.0", "ref": "v10.3.0",
     "module": [names of ``tensorrt.X`` in the compiled module: classes, enums, functions],
     "python": [names ``tensorrt/__init__.py`` defines in Python: __version__, volume, nptype ...],
     "classes": {"IBuilderConfig": {"bases": [...], "names": [...]},
                 "DataType": {"bases": [], "names": [members], "enum": true},
                 "ILogger.Severity": {...}, ...}}

What it reads (pybind11 idioms of those files): ``py::class_<T, Base..., Trampoline>(scope, "Name", ...)``
or ``py::class_<...> var{scope, "Name", ...}``, then ``.def/.def_property*/.def_readwrite/.def_readonly/
.def_static("name", ...)`` chained on it or on ``var``; ``py::init`` gives ``__init__``;
``py::enum_<T>(scope, "Name", ...)`` with ``.value("MEMBER", ...)``, and ``.export_values()`` which also
puts the members on the enclosing class; ``m.def("function", ...)``. A base is a later template
argument that is itself a bound C++ type (trampolines and holders are not). Preprocessor branches are all
read (a name behind ``#if`` counts as present). Only names are kept: none of NVIDIA's code is copied.

Beside each ``classes-RELEASE.json`` it writes ``signatures-RELEASE.json``: per class, what each name is,
``"property"`` (``def_property*``/``def_readwrite``/``def_readonly``, enum members) or
``[min, max]`` positional-or-keyword arguments of a method (``.def``), counted from its ``"name"_a`` /
``py::arg("name")`` annotations (those with ``= default`` are optional; pybind11 requires one per
parameter when any is given); ``null`` for a method bound without annotations (arity unknown).
Overloads merge to the widest range, and to ``null`` when any is unknown.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEF_METHODS = {"def", "def_property", "def_property_readonly", "def_readwrite", "def_readonly", "def_static",
               "def_property_static", "def_property_readonly_static", "def_readonly_static"}
INIT_FILES = ("python/packaging/bindings_wheel/tensorrt/__init__.py", "python/packaging/tensorrt/__init__.py")


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True, text=True).stdout


def strip_comments(text: str) -> str:
    """C++ comments removed, string literals kept."""
    return re.sub(r'//[^\n]*|/\*.*?\*/|("(?:\\.|[^"\\])*")', lambda m: m.group(1) or "", text, flags=re.S)


def group_end(text: str, start: int) -> int:
    """Index after the bracket group opening at ``text[start]``: ``<...>`` counts angle brackets only,
    the others count ``({[`` (string and char literals skipped)."""
    opening, closing = ("<", ">") if text[start] == "<" else ("({[", ")}]")
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == '"':
            i = group_string_end(text, i)
            continue
        if c == "'" and opening != "<":
            i = text.index("'", i + 3 if text[i + 1] == "\\" else i + 2) + 1
            continue
        if c in opening:
            depth += 1
        elif c in closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced group at {start}")


def split_args(inner: str) -> list[str]:
    """Top-level comma-separated arguments of ``inner`` (the text between brackets)."""
    args, depth, cur, i = [], 0, [], 0
    while i < len(inner):
        c = inner[i]
        if c == '"':
            j = group_string_end(inner, i)
            cur.append(inner[i:j])
            i = j
            continue
        if c in "(<{[":
            depth += 1
        elif c in ")>}]":
            depth -= 1
        if c == "," and depth == 0:
            args.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if "".join(cur).strip():
        args.append("".join(cur).strip())
    return args


def group_string_end(text: str, i: int) -> int:
    j = i + 1
    while text[j] != '"':
        j += 2 if text[j] == "\\" else 1
    return j + 1


def literal(arg: str) -> str | None:
    m = re.fullmatch(r'"([^"\\]*)"(?:_a)?', arg.strip())
    return m.group(1) if m else None


class Bindings:
    def __init__(self):
        self.classes: dict[str, dict] = {}  # python qualified name -> {"bases", "names", "enum"}
        self.cpp: dict[str, str] = {}  # C++ type -> python qualified name
        self.pending_bases: dict[str, list[str]] = {}
        self.module: set[str] = set()
        self.python: set[str] = set()
        self.kinds: dict[str, dict] = {}  # python qualified class -> name -> "property" | [min, max] | None

    def read(self, text: str) -> None:
        text = strip_comments(text)
        variables: dict[str, str] = {"m": ""}  # binding variable -> python qualified name ("" = module)
        for m in re.finditer(r"py::(class_|enum_)\s*<", text):
            kind = m.group(1)
            targs_end = group_end(text, m.end() - 1)
            targs = split_args(text[m.end(): targs_end - 1])
            rest = re.match(r"\s*(\w+)?\s*([({])", text[targs_end:])
            if not rest:
                continue
            open_at = targs_end + rest.start(2)
            close_at = group_end(text, open_at)
            args = split_args(text[open_at + 1: close_at - 1])
            if len(args) < 2 or literal(args[1]) is None:
                continue
            scope = variables.get(args[0], "")
            name = literal(args[1])
            qualified = f"{scope}.{name}" if scope else name
            entry = self.classes.setdefault(qualified, {"bases": [], "names": set(), "enum": kind == "enum_"})
            (self.classes[scope]["names"] if scope and scope in self.classes else self.module).add(name)
            self.cpp[targs[0].strip()] = qualified
            self.pending_bases.setdefault(qualified, []).extend(a.strip() for a in targs[1:])
            if rest.group(1):
                variables[rest.group(1)] = qualified
            self._chain(text, close_at, qualified, scope)
        for var, qualified in variables.items():
            for use in re.finditer(rf"(?<![\w.]){re.escape(var)}\s*\.\s*(?=\w+\s*\()", text):
                self._chain(text, use.end() - 1, qualified, None)

    def _chain(self, text: str, at: int, qualified: str, scope: str | None) -> None:
        """Read ``.method(args)`` calls chained from ``text[at:]`` onto class ``qualified``."""
        names = self.classes[qualified]["names"] if qualified else self.module
        members = []
        while True:
            m = re.match(r"\s*\.\s*(\w+)\s*(?:<[^()]*>)?\s*\(", text[at:])
            if not m:
                return
            method = m.group(1)
            open_at = at + m.end() - 1
            close_at = group_end(text, open_at)
            args = split_args(text[open_at + 1: close_at - 1])
            first = literal(args[0]) if args else None
            if method in DEF_METHODS and first:
                names.add(first)
                if qualified:
                    kind = arity(args[1:]) if method in ("def", "def_static") else "property"
                    self._kind(qualified, first, kind)
            elif method == "def" and args and args[0].startswith("py::init"):
                names.add("__init__")
            elif method == "value" and first:
                names.add(first)
                members.append(first)
                self._kind(qualified, first, "property")
            elif method == "export_values" and scope is not None:
                target = self.classes[scope]["names"] if scope else self.module
                target.update(members)
                for member in members if scope else ():
                    self._kind(scope, member, "property")
            at = close_at

    def _kind(self, qualified: str, name: str, kind) -> None:
        kinds = self.kinds.setdefault(qualified, {})
        if name not in kinds:
            kinds[name] = kind
        elif kinds[name] != kind:  # an overload (or a name bound twice): the widest range, or unknown
            old = kinds[name]
            lists = isinstance(old, list) and isinstance(kind, list)
            kinds[name] = [min(old[0], kind[0]), max(old[1], kind[1])] if lists else None

    def read_python_init(self, text: str) -> None:
        for m in re.finditer(r"^(?:def|class)\s+(\w+)|^(\w+)\s*=", text, re.M):
            self.python.add(m.group(1) or m.group(2))

    def result(self) -> tuple[list[str], list[str], dict]:
        classes = {}
        for qualified, entry in sorted(self.classes.items()):
            bases = [self.cpp[b] for b in self.pending_bases.get(qualified, []) if b in self.cpp]
            out = {"bases": bases, "names": sorted(entry["names"])}
            if entry["enum"]:
                out["enum"] = True
            classes[qualified] = out
        return sorted(self.module), sorted(self.python), classes


def arity(args: list[str]) -> list[int] | None:
    """[min, max] arguments of a ``.def("name", function, extras...)`` from its argument annotations."""
    annotated = [a for a in args[1:] if re.match(r'"\w+"_a\b|py::arg\s*\(', a.strip())]
    if not annotated:
        return None
    optional = sum("=" in a for a in annotated)
    return [len(annotated) - optional, len(annotated)]


def derive(repo: str, ref: str) -> dict:
    b = Bindings()
    files = [f for f in git(repo, "ls-tree", "-r", "--name-only", ref, "python/src").split() if f.endswith(".cpp")]
    for path in files:
        b.read(git(repo, "show", f"{ref}:{path}"))
    for path in INIT_FILES:
        try:
            b.read_python_init(git(repo, "show", f"{ref}:{path}"))
            break
        except subprocess.CalledProcessError:
            continue
    module, python, classes = b.result()
    kinds = {c: dict(sorted(k.items())) for c, k in sorted(b.kinds.items())}
    return {"ref": ref, "module": module, "python": python, "classes": classes, "signatures": kinds}


def compact_json(data: dict) -> str:
    """JSON with one line per class (reviewable diffs between releases)."""
    head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in data.items() if k != "classes")
    rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in data["classes"].items())
    return f'{{{head}, "classes": {{\n{rows}\n}}}}\n'


def main(argv: list[str]) -> None:
    repo, pairs = argv[0], argv[1:]
    for pair in pairs:
        ref, _, release = pair.partition("=")
        data = {"release": release, **derive(repo, ref)}
        signatures = {"release": release, "ref": ref, "classes": data.pop("signatures")}
        out = HERE / f"classes-{release}.json"
        out.write_text(compact_json(data))
        (HERE / f"signatures-{release}.json").write_text(compact_json(signatures))
        print(f"{out.name}: {len(data['classes'])} classes/enums, {len(data['module'])} module names")


if __name__ == "__main__":
    main(sys.argv[1:])
