"""Dockerfile.jetson and deploy/k3s checked as far as this machine can (no Docker engine, no cluster)."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# nvcr.io/nvidia/l4t-jetpack tags (NGC): JetPack and its Python (5.x: 3.8, the device side only).
L4T_JETPACK_TAGS = {"r35.3.1": ("5.1.1", "3.8"), "r35.4.1": ("5.1.2", "3.8"),
                    "r36.2.0": ("6.0 DP", "3.10"), "r36.3.0": ("6.0", "3.10"), "r36.4.0": ("6.1/6.2", "3.10")}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile.jetson").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            assert word.isupper(), f"not an instruction: {line!r}"
            out.append((word, rest.strip()))
    return out


def _expand(text: str, args: dict) -> str:
    """Dockerfile ``${VAR}`` / ``${VAR:-default}`` / ``$VAR`` substitution."""
    def one(m):
        name, default = m.group(1) or m.group(3), m.group(2)
        return args.get(name) or (default or "")
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", one, text)


def resolve_build(build_args: dict) -> tuple[str, dict]:
    """(base image, ENV of the final stage) that ``docker build --build-arg ...`` gives, per Docker's ARG/FROM rules."""
    ins = dockerfile()
    first_from = next(i for i, (w, _) in enumerate(ins) if w == "FROM")
    globals_ = {}
    for word, args in ins[:first_from]:
        assert word == "ARG"
        name, _, default = args.partition("=")
        globals_[name] = build_args.get(name, default)
    stages, current = {}, None
    for word, args in ins[first_from:]:
        if word == "FROM":
            image, _, alias = _expand(args, globals_).partition(" AS ")
            current = {"image": image.strip(), "args": {}, "env": {}}
            stages[alias.strip() or f"#{len(stages)}"] = current
        elif word == "ARG":
            name = args.partition("=")[0]
            current["args"][name] = build_args.get(name, globals_.get(name, args.partition("=")[2]))
        elif word == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", args):
                current["env"][name] = _expand(value, {**current["args"], **current["env"]})
    final = current
    env = dict(final["env"])
    while final["image"] in stages:  # FROM another stage: its image and ENV carry over
        final = stages[final["image"]]
        env = {**final["env"], **env}
    return final["image"], env


@pytest.mark.parametrize("build_args, tag, jetpack", [
    ({}, "r36.4.0", "6"),
    ({"L4T_RELEASE": "r36.3.0"}, "r36.3.0", "6"),
    ({"JETPACK": "5"}, "r35.4.1", "5"),
    ({"JETPACK": "5", "L4T_RELEASE": "r35.3.1"}, "r35.3.1", "5"),
])
def test_jetpack_and_l4t_release_args_choose_a_real_base(build_args, tag, jetpack):
    image, env = resolve_build(build_args)
    assert image == f"nvcr.io/nvidia/l4t-jetpack:{tag}"
    assert env["EDGEKIT_L4T_RELEASE"] == tag and env["EDGEKIT_JETPACK"] == jetpack
    assert L4T_JETPACK_TAGS[tag][0].startswith(jetpack)
    listed = re.findall(r"^#\s+(r3\d\.\d\.\d)\s+JetPack", (REPO / "Dockerfile.jetson").read_text(), re.M)
    assert listed and set(listed) == set(L4T_JETPACK_TAGS)


@pytest.mark.parametrize("jetpack, l4t, ok", [("5", "r35.4.1", True), ("6", "r36.4.0", True),
                                              ("5", "r36.4.0", False), ("6", "r35.4.1", False)])
def test_a_base_of_the_other_family_stops_the_build(jetpack, l4t, ok):
    runs = [args for word, args in dockerfile() if word == "RUN"]
    guard = re.search(r"case .*? esac", runs[0]).group(0)  # the first step, run here as the image's shell would
    done = subprocess.run(["sh", "-c", guard], env={"EDGEKIT_JETPACK": jetpack, "EDGEKIT_L4T_RELEASE": l4t, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert (done.returncode == 0) == ok, done.stderr
    assert ok or f"L4T_RELEASE={l4t} is not a JetPack {jetpack} release" in done.stderr


def test_jetpack5_install_steps_work_on_python_38():
    """Ubuntu 20.04's pip 20.0 cannot install manylinux_2_28 wheels (onnxruntime aarch64): pip is upgraded first,
    and edgekit's own checks run on the image's Python after the install."""
    runs = " && ".join(args for word, args in dockerfile() if word == "RUN")
    assert runs.index('pip install --upgrade "pip>=23"') < runs.index("pip install --no-deps /src")
    assert runs.index("python3 -m edgekit doctor") > runs.index('"pycuda>=')


def _setup_requirements() -> dict[str, Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["device"].split("\n")
    reqs = [Requirement(line) for line in lines if line.strip() and not line.strip().startswith("#")]
    return {r.name: r for r in reqs}


def test_pip_lines_match_setup_cfg_without_pip_opencv():
    runs = " && ".join(args for word, args in dockerfile() if word == "RUN")
    pip_installs = re.findall(r"python3 -m pip install ([^&]+)", runs)
    assert any(p.split()[:2] == ["--no-deps", "/src"] for p in pip_installs), pip_installs
    named = {}
    for p in pip_installs:
        if p.startswith("--upgrade"):  # pip itself
            continue
        for token in re.findall(r'"([^"]+)"', p):
            req = Requirement(token)
            named[req.name] = req
    wanted = _setup_requirements()
    assert "opencv-python" in wanted and "pycuda" in wanted
    assert set(named) == set(wanted) - {"opencv-python"}
    for name, req in named.items():  # as strict as setup.cfg, or stricter
        assert {str(s) for s in wanted[name].specifier} <= {str(s) for s in req.specifier}, name
    uninstall = re.search(r"pip uninstall -y ([^&]+)", runs)
    assert uninstall and "opencv-python" in uninstall.group(1).split()
    assert "getBuildInformation()" in runs and "GStreamer" in runs
    assert runs.index("pip uninstall") < runs.index("getBuildInformation")
    assert "python3-libnvinfer" in runs


def test_runs_as_non_root_with_engine_volume_and_edgekit_run_entrypoint():
    ins = dockerfile()
    words = [w for w, _ in ins]
    user = [a for w, a in ins if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    assert re.search(rf"useradd .*--uid 10001 .*--groups video .*{user[-1]}$",
                     next(a for w, a in ins if w == "RUN" and "useradd" in a).split(" && ")[0].strip())
    volumes = json.loads(next(a for w, a in ins if w == "VOLUME"))
    entry = json.loads(next(a for w, a in ins if w == "ENTRYPOINT"))
    assert entry[:2] == ["edgekit", "run"]
    assert entry[entry.index("--cache-dir") + 1] in volumes
    json.loads(next(a for w, a in ins if w == "CMD"))


def manifests() -> list[dict]:
    docs = [d for p in sorted((REPO / "deploy" / "k3s").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]
    assert docs
    return docs


def test_manifests_pass_the_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (pip install kubernetes-validate)")
    for doc in manifests():
        kv.validate(doc, "1.30.0", strict=True)


def test_manifest_schema_check_is_not_vacuous():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    ds = next(d for d in manifests() if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = ds["spec"]["template"]["spec"]["containers"][0].pop("livenessProbe")
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, "1.30.0", strict=True)


def test_daemonset_says_what_a_jetson_node_needs():
    docs = manifests()
    assert {d["kind"] for d in docs} == {"RuntimeClass", "DaemonSet"}
    runtime = next(d for d in docs if d["kind"] == "RuntimeClass")
    spec = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    assert spec["runtimeClassName"] == runtime["metadata"]["name"] == "nvidia" and runtime["handler"] == "nvidia"
    assert spec["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    l4t = spec["nodeSelector"]["edgekit.io/l4t"]
    (c,) = spec["containers"]
    assert l4t in L4T_JETPACK_TAGS and c["image"].endswith(f":{l4t}")
    assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["runAsUser"] == 10001
    assert c["resources"]["limits"]["squat.ai/video"] == 1 and {"cpu", "memory"} <= set(c["resources"]["limits"])
    serve = c["args"][c["args"].index("--serve") + 1]
    port = int(serve.rsplit(":", 1)[1])
    assert serve.startswith("0.0.0.0:") and c["ports"][0]["containerPort"] == port
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/metrics" and c[probe]["httpGet"]["port"] == c["ports"][0]["name"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    engines = volumes[mounts["/var/cache/edgekit"]]["hostPath"]["path"]
    assert engines == "/var/cache/edgekit" and set(mounts.values()) <= set(volumes)
    init = spec["initContainers"][0]
    assert init["command"][-1] == "/var/cache/edgekit" and "10001:10001" in init["command"]
