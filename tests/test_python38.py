"""The device side installs and runs on Python 3.8 (JetPack 5), checked without a 3.8 interpreter.

The device modules are every edgekit module that ``edgekit --help`` and the commands that are not
workstation commands (doctor, build, bench, run, service, inspect) can import: the static import closure,
imports inside functions included, of ``edgekit.cli`` and those commands' modules. In them:

- vermin (the ``dev`` extra) finds nothing newer than 3.8;
- no call to a 3.9+ method that vermin cannot attribute on an untyped receiver (``Path.is_relative_to``,
  ``str.removeprefix`` ...) and no runtime ``X | Y`` of types;
- every module has ``from __future__ import annotations`` (so ``list[int]`` annotations are never evaluated).

And pip resolves the core requirements (with jsonschema, which becomes one) and pycuda's dependencies for
CPython 3.8 on manylinux aarch64 with glibc 2.31 (JetPack 5's Ubuntu 20.04) from wheels only; pycuda,
an sdist built on the device, admits 3.8. Those need the package index; they skip when it is unreachable.
"""

from __future__ import annotations

import ast
import configparser
import email
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import edgekit.cli

REPO = Path(__file__).resolve().parents[1]
# 3.9+ methods found by name: vermin reports them only when it knows the receiver's type.
NEWER_METHODS = {"is_relative_to": "3.9", "with_stem": "3.9", "readlink": "3.9", "removeprefix": "3.9",
                 "removesuffix": "3.9", "hardlink_to": "3.10", "bit_count": "3.10"}
# What pip on a JetPack 5 device (aarch64, glibc 2.31) accepts.
JETPACK5_PLATFORMS = [f"manylinux_2_{m}_aarch64" for m in range(31, 16, -1)] + ["manylinux2014_aarch64", "linux_aarch64"]
PIP_TARGET = ["--python-version", "3.8", "--implementation", "cp", "--abi", "cp38"] + [
    arg for p in JETPACK5_PLATFORMS for arg in ("--platform", p)
]
OFFLINE = ("Failed to establish a new connection", "Temporary failure in name resolution", "Network is unreachable",
           "Max retries exceeded", "Could not fetch URL", "ProxyError", "timed out")


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, path: Path) -> set[str]:
    """The edgekit modules ``path`` imports anywhere in it (and their parent packages)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}"))
    out = set()
    for module in found:
        parts = module.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if parts[0] == "edgekit")
    return out


def device_modules() -> dict[str, Path]:
    """Module name -> file for everything the device commands can import."""
    device_commands = [m for c, (m, _) in edgekit.cli.COMMANDS.items() if c not in edgekit.cli.HOST_COMMANDS]
    todo, seen = ["edgekit.cli", "edgekit.__main__", *device_commands], {}
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo.extend(_imports(name, path))
    return seen


def test_device_modules_are_the_device_path_and_never_the_host():
    modules = device_modules()
    for name in ("edgekit.cli.doctor", "edgekit.cli.build", "edgekit.cli.bench", "edgekit.cli.run", "edgekit.cli.service",
                 "edgekit.backends.tensorrt.cuda", "edgekit.backends.tensorrt.runner", "edgekit.stream.pipeline",
                 "edgekit.service.install", "edgekit.bundle", "edgekit.doctor"):
        assert name in modules, name
    assert not [m for m in modules if m.startswith("edgekit.host") or m in ("edgekit.cli.train", "edgekit.cli.export")]


def test_vermin_finds_nothing_newer_than_python_38():
    pytest.importorskip("vermin", reason="vermin is not installed (pip install -e '.[dev]')")
    files = sorted(str(p) for p in device_modules().values())
    run_vermin = "import sys, vermin; sys.exit(vermin.main())"  # its console script, which may not be on PATH
    done = subprocess.run([sys.executable, "-c", run_vermin, "-t=3.8-", "--no-tips", "--violations", "--no-parse-comments", *files],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _runtime_union(node) -> bool:
    """``int | None``-like: a ``|`` of names of types, outside annotations."""
    def typeish(n):
        return (isinstance(n, ast.Constant) and n.value is None) or (isinstance(n, ast.Name) and (n.id[:1].isupper() or n.id in (
            "int", "float", "str", "bytes", "bool", "list", "dict", "tuple", "set"))) or (isinstance(n, ast.BinOp) and _runtime_union(n))
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and typeish(node.left) and typeish(node.right)


def newer_than_38(source: str) -> list[str]:
    """What vermin cannot see: 3.9+ methods on any receiver, ``X | Y`` of types evaluated at run time."""
    tree = ast.parse(source)
    annotations = set()
    for node in ast.walk(tree):
        for ann in [getattr(node, "annotation", None), getattr(node, "returns", None)]:
            if ann is not None:
                annotations.update(id(n) for n in ast.walk(ann))
    found = []
    for node in ast.walk(tree):
        on_os = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"  # os.readlink: 3.8
        if isinstance(node, ast.Attribute) and node.attr in NEWER_METHODS and not on_os and id(node) not in annotations:
            found.append(f"line {node.lineno}: .{node.attr} needs Python {NEWER_METHODS[node.attr]}")
        elif _runtime_union(node) and id(node) not in annotations:
            found.append(f"line {node.lineno}: X | Y of types at run time needs Python 3.10")
    return found


def test_no_newer_methods_or_runtime_unions_vermin_cannot_see():
    problems = {name: newer_than_38(path.read_text()) for name, path in device_modules().items()}
    assert {k: v for k, v in problems.items() if v} == {}
    # the check itself
    assert newer_than_38("def f(p, s):\n    return p.is_relative_to('/home'), s.removeprefix('x')\n") == [
        "line 2: .is_relative_to needs Python 3.9", "line 2: .removeprefix needs Python 3.9"]
    assert newer_than_38("x = isinstance(1, int | None)\ndef f(a: int | None) -> str | None:\n    b: list[int] | None = None\n") == [
        "line 1: X | Y of types at run time needs Python 3.10"]
    assert newer_than_38("flags = a | b\n") == []


def test_every_device_module_postpones_annotations():
    missing = [name for name, path in device_modules().items()
               if not any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
                          for n in ast.parse(path.read_text()).body)]
    assert missing == []


# ---- packaging -------------------------------------------------------------------------------
def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _requirements(text: str) -> list[Requirement]:
    return [Requirement(line) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_setup_cfg_allows_38_and_keeps_the_host_extra_on_310():
    cfg = _setup_cfg()
    assert SpecifierSet(cfg["options"]["python_requires"]).contains("3.8")
    for req in _requirements(cfg["options.extras_require"]["host"]):
        assert req.marker is not None, req
        assert not req.marker.evaluate({"python_version": "3.8"}) and req.marker.evaluate({"python_version": "3.10"}), req
    device = {r.name: r for r in _requirements(cfg["options.extras_require"]["device"])}
    assert str(device["pycuda"].specifier) == ">=2025.1.2"  # CUDA 13 support
    analytics = {r.name for r in _requirements(cfg["options.extras_require"]["analytics"])}
    assert {"supervision", "paho-mqtt"} <= analytics


def test_host_commands_say_they_need_python_310(monkeypatch, cli):
    from conftest import assert_one_line_error

    monkeypatch.setattr(edgekit.cli, "HOST_PYTHON", (99, 0))
    assert_one_line_error(cli("train", "--help"), "`edgekit train` is a workstation command", "Python >= 99.0")
    assert cli("doctor", "--help").code == 0


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """pip with this machine's pip configuration ignored (--isolated): the public index only."""
    done = subprocess.run([sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)
    if done.returncode != 0 and any(marker in done.stdout + done.stderr for marker in OFFLINE):
        pytest.skip("the package index is unreachable: " + (done.stderr.strip().splitlines() or ["?"])[-1])
    return done


@pytest.mark.slow
def test_device_requirements_resolve_for_python_38_aarch64(tmp_path):
    cfg = _setup_cfg()
    core = _requirements(cfg["options"]["install_requires"])
    if not any(r.name == "jsonschema" for r in core):  # becoming a core dependency (manifest schema)
        core.append(Requirement("jsonschema>=4.0"))
    (pycuda,) = [r for r in _requirements(cfg["options.extras_require"]["device"]) if r.name == "pycuda"]
    core += _requirements(cfg["options.extras_require"]["analytics"])  # tracker and MQTT: device side too

    # pycuda is an sdist, built on the device: the newest release it would get must admit 3.8.
    got = _pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", *PIP_TARGET, "-d", "sdist",
               str(pycuda), cwd=tmp_path)
    assert got.returncode == 0, got.stdout + got.stderr
    (sdist,) = (tmp_path / "sdist").glob("pycuda-*.tar.gz")
    with tarfile.open(sdist) as tar:
        info = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
        meta = email.message_from_bytes(tar.extractfile(info).read())
    assert SpecifierSet(meta["Requires-Python"]).contains("3.8"), meta["Requires-Python"]
    pycuda_deps = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]

    # Everything else from wheels for CPython 3.8 on JetPack 5, in one resolution.
    wanted = [str(r) for r in core + pycuda_deps]
    done = _pip("install", "--dry-run", "--ignore-installed", "--target", "t", "--only-binary", ":all:", *PIP_TARGET,
                "--report", "report.json", "--quiet", *wanted, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    resolved = {item["metadata"]["name"].lower(): item["metadata"] for item in report["install"]}
    for req in core + pycuda_deps:
        assert req.name.lower() in resolved, req
    for name, meta in resolved.items():
        assert SpecifierSet(meta.get("requires_python") or "").contains("3.8"), (name, meta.get("requires_python"))
