"""`edgekit service install|uninstall|rollback|status` under --root, with stand-in tools, and the README walk."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from edgekit.errors import EdgekitError
from edgekit.service import install as inst
from edgekit.service.unit import ServiceOptions, render_unit
from edgekit.tiny import write_tiny_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two different tiny bundles (the size changes the model, hence its sha256)."""
    base = tmp_path_factory.mktemp("svc")
    return write_tiny_bundle(base / "bundle").path, write_tiny_bundle(base / "bundle-v2", size=48).path


def linked(root: Path, name: str) -> str | None:
    link = root / "var/lib/edgekit" / name
    return os.readlink(link) if link.is_symlink() else None


def test_install_status_uninstall_round_trip(cli, bundles, tmp_path):
    root = tmp_path / "root"
    r = cli("service", "install", bundles[0], "--root", root, "--camera", "0", "--serve", "0.0.0.0:8080")
    assert r.code == 0, r
    unit = root / "etc/systemd/system/edgekit.service"
    assert unit.read_text() == render_unit(ServiceOptions(
        run_args=("--camera", "0", "--serve", "0.0.0.0:8080"), command=(sys.executable, "-m", "edgekit")))
    assert "EDGEKIT_RUN_ARGS=--camera 0 --serve 0.0.0.0:8080" in (root / "etc/edgekit/edgekit.env").read_text()
    installed = root / "var/lib/edgekit" / linked(root, "bundle")
    assert (installed / "edgekit.json").read_bytes() == (bundles[0] / "edgekit.json").read_bytes()
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/edgekit.service") == \
        "/etc/systemd/system/edgekit.service"
    assert "not run (--root): systemctl restart edgekit.service" in r.out

    status = cli("service", "status", "--root", root)
    assert status.code == 0 and "UnitFileState: enabled" in status.out and "run_args: --camera 0" in status.out

    r = cli("service", "uninstall", "--root", root)
    assert r.code == 0, r
    for gone in ("etc/systemd/system/edgekit.service", "etc/edgekit", "etc/sysusers.d/edgekit.conf",
                 "etc/systemd/system/multi-user.target.wants/edgekit.service"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    assert installed.is_dir()  # bundles are kept without --purge
    assert_one_line_error(cli("service", "uninstall", "--root", root), "not installed")
    assert_one_line_error(cli("service", "status", "--root", root), "not installed")

    assert cli("service", "install", bundles[0], "--root", root, "--camera", "0").code == 0
    assert cli("service", "uninstall", "--root", root, "--purge").code == 0
    assert not (root / "var/lib/edgekit").exists()


@pytest.mark.skipif(shutil.which("systemctl") is None or shutil.which("systemd-sysusers") is None,
                    reason="systemctl/systemd-sysusers absent: apt-get install -y systemd")
def test_systemd_tools_agree_with_the_root_install(cli, bundles, tmp_path):
    """systemd's own offline tools read what --root wrote: the unit is enabled and the user is created."""
    root = tmp_path / "root"
    assert cli("service", "install", bundles[0], "--root", root, "--camera", "0").code == 0
    enabled = subprocess.run(["systemctl", f"--root={root}", "is-enabled", "edgekit.service"],
                             capture_output=True, text=True)
    assert enabled.stdout.strip() == "enabled", enabled
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
    assert re.search(r"^edgekit:x:\d+:\d+:.*:/var/lib/edgekit:/usr/sbin/nologin$",
                     (root / "etc/passwd").read_text(), re.M)
    assert re.search(r"^video:x:\d+:edgekit$", (root / "etc/group").read_text(), re.M)


def test_update_keeps_the_previous_bundle_and_rollback_swaps(cli, bundles, tmp_path):
    root = tmp_path / "root"
    assert cli("service", "install", bundles[0], "--root", root, "--camera", "0").code == 0
    first = linked(root, "bundle")
    assert_one_line_error(cli("service", "install", bundles[1], "--root", root, "--camera", "0"), "already installed", "--force")
    assert linked(root, "bundle") == first
    assert cli("service", "install", bundles[1], "--root", root, "--camera", "0", "--force").code == 0
    second = linked(root, "bundle")
    assert second != first and linked(root, "bundle.previous") == first
    assert cli("service", "rollback", "--root", root).code == 0
    assert (linked(root, "bundle"), linked(root, "bundle.previous")) == (first, second)
    third = write_tiny_bundle(tmp_path / "bundle-v3", size=40).path
    assert cli("service", "install", third, "--root", root, "--camera", "0", "--force").code == 0
    kept = sorted(p.name for p in (root / "var/lib/edgekit/bundles").iterdir())
    assert len(kept) == 2 and f"bundles/{kept[0]}" in (linked(root, "bundle"), linked(root, "bundle.previous"))


def test_dry_run_prints_everything_and_writes_nothing(cli, bundles, tmp_path):
    root = tmp_path / "root"
    r = cli("service", "install", bundles[0], "--root", root, "--dry-run", "--source", "csi://0")
    assert r.code == 0, r
    assert not root.exists()
    assert "would write" in r.out and "Type=notify" in r.out and "EDGEKIT_RUN_ARGS=--source csi://0" in r.out
    assert "would run: systemctl daemon-reload" in r.out and "would copy" in r.out


def test_bad_input_is_one_line(cli, bundles, tmp_path, monkeypatch):
    root = tmp_path / "root"
    assert_one_line_error(cli("service", "install", tmp_path / "nope", "--root", root, "--camera", "0"), "does not exist")
    assert_one_line_error(cli("service", "install", bundles[0], "--root", root, "--source", "a b"), "space")
    assert_one_line_error(cli("service", "uninstall", "--root", root), "not installed")
    assert_one_line_error(cli("service", "rollback", "--root", root), "not installed")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # as a non-root user
    assert_one_line_error(cli("service", "install", bundles[0], "--camera", "0"), "needs root", "sudo", "--root")
    assert_one_line_error(cli("service", "uninstall"), "needs root", "sudo")
    assert not root.exists()


def test_real_install_without_running_systemd_touches_nothing(cli, bundles, tmp_path, monkeypatch):
    """As root in a container (no systemd as init): refused before any file is written or user made."""
    from edgekit.service import install as inst

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(inst, "SYSTEMD_RUNTIME", tmp_path / "no-systemd")
    written = []
    monkeypatch.setattr(inst._Actions, "write", lambda self, *a, **k: written.append(a))
    monkeypatch.setattr(inst._Actions, "run", lambda self, *a, **k: written.append(a))
    assert_one_line_error(cli("service", "install", bundles[0], "--camera", "0"), "needs a running systemd", "--root")
    assert_one_line_error(cli("service", "uninstall"), "needs a running systemd")
    assert written == []


# ---- the real-system path, with stand-in (FAKE) systemctl/useradd/groupadd/usermod on PATH ---------

FAKE_TOOL = """#!/bin/sh
# FAKE {name} for control-flow tests: records its arguments; fails as the test asks.
echo "{name} $*" >> "$FAKE_LOG"
if [ "{name}" = useradd ] && [ -n "$FAKE_USERADD_FAILS" ]; then
    echo "useradd: cannot lock /etc/passwd; try again later." >&2; exit 1
fi
if [ "{name}" = systemctl ] && [ "$1" = restart ] && [ -e "$FAKE_ROOT/var/lib/edgekit/bundle/FAIL_START" ]; then
    echo "Job for edgekit.service failed because the control process exited with error code." >&2; exit 1
fi
exit 0
"""


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name in ("systemctl", "useradd", "groupadd", "usermod"):
        (bin_dir / name).write_text(FAKE_TOOL.format(name=name))
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path / "root"))
    return lambda: log.read_text().splitlines() if log.exists() else []


def _no_edgekit_user():
    try:
        pwd.getpwnam("edgekit")
        return False
    except KeyError:
        return True


@pytest.mark.skipif(not _no_edgekit_user(), reason="this machine already has an 'edgekit' user")
def test_real_path_creates_the_user_and_starts_the_service(fake_tools, bundles, tmp_path):
    root = tmp_path / "root"
    inst.install(bundles[0], ["--camera", "0"], root=root, run_commands=True, out=lambda m: None)
    calls = fake_tools()
    useradd = next(c for c in calls if c.startswith("useradd"))
    assert "--system" in useradd and "--groups video" in useradd and useradd.endswith(" edgekit")
    assert calls[-3:] == ["systemctl daemon-reload", "systemctl enable edgekit.service",
                          "systemctl restart edgekit.service"]


@pytest.mark.skipif(not _no_edgekit_user(), reason="this machine already has an 'edgekit' user")
def test_user_that_cannot_be_created(fake_tools, bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_USERADD_FAILS", "1")
    with pytest.raises(EdgekitError, match="cannot create the service user 'edgekit'.*cannot lock /etc/passwd"):
        inst.install(bundles[0], root=tmp_path / "root", run_commands=True, out=lambda m: None)
    assert not any(c.startswith("systemctl") for c in fake_tools())


def test_failed_update_rolls_back_to_the_previous_bundle(fake_tools, bundles, tmp_path):
    root = tmp_path / "root"
    inst.install(bundles[0], root=root, run_commands=True, out=lambda m: None)
    good = linked(root, "bundle")
    broken = tmp_path / "broken"
    shutil.copytree(bundles[1], broken)
    (broken / "FAIL_START").write_text("the fake systemctl fails to start this bundle\n")
    with pytest.raises(EdgekitError, match="did not start with bundle broken-.*rolled back to"):
        inst.install(broken, root=root, force=True, run_commands=True, out=lambda m: None)
    # issue 12 item 6: the bundle that failed to start is no roll-back target
    assert linked(root, "bundle") == good and linked(root, "bundle.previous") is None
    assert fake_tools()[-2:] == ["systemctl restart edgekit.service", "systemctl restart edgekit.service"]
    with pytest.raises(EdgekitError, match="no previous bundle to roll back to"):
        inst.rollback(root=root, run_commands=True, out=lambda m: None)
    assert linked(root, "bundle") == good


def test_failed_update_restores_the_previous_link_it_found(fake_tools, bundles, tmp_path):
    root = tmp_path / "root"
    inst.install(bundles[0], root=root, run_commands=True, out=lambda m: None)
    inst.install(bundles[1], root=root, force=True, run_commands=True, out=lambda m: None)
    good, before = linked(root, "bundle"), linked(root, "bundle.previous")
    broken = tmp_path / "broken"
    shutil.copytree(bundles[0], broken)
    (broken / "FAIL_START").write_text("the fake systemctl fails to start this bundle\n")
    with pytest.raises(EdgekitError, match="rolled back to"):
        inst.install(broken, root=root, force=True, run_commands=True, out=lambda m: None)
    assert (linked(root, "bundle"), linked(root, "bundle.previous")) == (good, before)
    assert inst.rollback(root=root, run_commands=True, out=lambda m: None) == Path(before).name


def test_relabelled_bundle_of_the_same_folder_is_installed(cli, bundles, tmp_path):
    """Issue 12 item 5: the install id hashes the whole bundle, not only the fp32 model."""
    import json

    root = tmp_path / "root"
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles[0], bundle)
    assert cli("service", "install", bundle, "--camera", "0", "--root", root).code == 0
    first = linked(root, "bundle")
    manifest = json.loads((bundle / "edgekit.json").read_text())
    manifest["labels"] = ["rouge", "vert", "bleu"]
    (bundle / "edgekit.json").write_text(json.dumps(manifest))
    result = cli("service", "install", bundle, "--camera", "0", "--root", root, "--force")
    assert result.code == 0 and "already holds" not in result.out, result
    second = linked(root, "bundle")
    assert second != first and linked(root, "bundle.previous") == first
    installed = json.loads((root / "var/lib/edgekit" / second / "edgekit.json").read_text())
    assert installed["labels"] == ["rouge", "vert", "bleu"]


# ---- deploy/README.md, walked in order as a new user would, under --root ---------------------------

def readme_service_commands() -> list[list[str]]:
    text = (REPO / "deploy" / "README.md").read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]
    commands = [shlex.split(line.removeprefix("sudo ")) for line in lines
                if line.removeprefix("sudo ").startswith("edgekit service ")]
    assert len(commands) >= 5
    return commands


def test_readme_walk_under_root(cli, bundles, tmp_path, monkeypatch):
    for b in bundles:
        shutil.copytree(b, tmp_path / b.name)
    monkeypatch.chdir(tmp_path)
    done = []
    for argv in readme_service_commands():
        if "--root" not in argv:
            argv = [*argv, "--root", "system"]  # the stand-in for the Jetson's /
        r = cli(*argv[1:])
        assert r.code == 0, (argv, r)
        done.append(argv[2])
    assert done[:5] == ["install", "status", "install", "rollback", "install"]
    system = tmp_path / "system"
    assert linked(system, "bundle").startswith("bundles/bundle-") and "v2" not in linked(system, "bundle")
    assert linked(system, "bundle.previous").startswith("bundles/bundle-v2-")
    assert "ExecStart=/usr/bin/python3 -m edgekit run" in (tmp_path / "rootfs/etc/systemd/system/edgekit.service").read_text()


def test_event_urls_go_to_the_0600_environment_file_not_the_command_line(tmp_path):
    from edgekit.service.install import install, status
    from edgekit.tiny import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "b")
    root = tmp_path / "root"
    url = "mqtt://cam:s3cret@broker.lan/site1"
    options = install(bundle.path, ["--camera", "0", "--mqtt", url, "--webhook=https://h.lan/x"], root=root,
                      run_commands=False, out=lambda *a: None)
    env = root / "etc/edgekit/edgekit.env"
    text = env.read_text()
    assert f"EDGEKIT_MQTT={url}\n" in text and "EDGEKIT_WEBHOOK=https://h.lan/x\n" in text
    assert "s3cret" not in [line for line in text.splitlines() if line.startswith("EDGEKIT_RUN_ARGS")][0]
    assert (env.stat().st_mode & 0o777) == 0o600
    assert "s3cret" not in (root / "etc/systemd/system/edgekit.service").read_text()
    assert options.run_args == ("--camera", "0")
    info = status(root=root, run_commands=False)
    assert info["events"] == ["mqtt://broker.lan/site1", "https://h.lan/x"] and "s3cret" not in str(info)
