"""Dockerfile.jetson and deploy/k3s checked as far as this machine can (no Docker engine, no cluster)."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# nvcr.io/nvidia/l4t-jetpack tags (NGC) and the JetPack they are, with Python >= 3.10 (edgekit's floor).
L4T_JETPACK_TAGS = {"r36.2.0": "6.0 DP", "r36.3.0": "6.0", "r36.4.0": "6.1/6.2"}


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


def test_base_image_is_a_real_l4t_jetpack_tag_chosen_by_arg():
    ins = dockerfile()
    assert ins[0][0] == "ARG" and ins[1][0] == "FROM"
    name, _, default = ins[0][1].partition("=")
    assert ins[1][1] == f"nvcr.io/nvidia/l4t-jetpack:${{{name}}}"
    assert default in L4T_JETPACK_TAGS
    listed = re.findall(r"^#\s+(r3\d\.\d\.\d)\s+JetPack", (REPO / "Dockerfile.jetson").read_text(), re.M)
    assert listed and set(listed) <= set(L4T_JETPACK_TAGS)
    assert ("ARG", name) in ins  # redeclared after FROM so later instructions can use it


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
