"""The rendered systemd unit: valid for systemd-analyze, equal to deploy/, and saying what it must."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.errors import UsageError
from edgekit.service.unit import ServiceOptions, check_run_args, render_env, render_sysusers, render_unit

REPO = Path(__file__).resolve().parents[1]
ANALYZE = shutil.which("systemd-analyze")


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_reference_files_equal_what_unit_py_renders():
    assert (REPO / "deploy" / "edgekit.service").read_text() == render_unit(ServiceOptions())
    assert (REPO / "deploy" / "edgekit.env").read_text() == render_env(ServiceOptions())


def test_unit_says_what_the_service_needs():
    d = directives(render_unit(ServiceOptions()))
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["30s"] and d["Restart"] == ["on-failure"] and d["RestartSec"] == ["10s"]
    assert d["StartLimitBurst"] == ["5"] and d["StartLimitIntervalSec"] == ["15min"]
    assert d["User"] == ["edgekit"] and d["SupplementaryGroups"] == ["video"] and "DynamicUser" not in d
    assert d["StateDirectory"] == ["edgekit"] and d["CacheDirectory"] == ["edgekit"]
    assert d["PrivateDevices"] == ["no"] and d["DevicePolicy"] == ["closed"]
    assert set(d["DeviceAllow"]) == {"char-video4linux rw", "char-nvhost-* rw", "char-nvgpu* rw", "/dev/nvmap rw"}
    assert d["EnvironmentFile"] == ["/etc/edgekit/edgekit.env"]
    assert d["ExecStart"] == ["/usr/bin/python3 -m edgekit run /var/lib/edgekit/bundle "
                              "--cache-dir /var/cache/edgekit $EDGEKIT_RUN_ARGS"]
    assert d["StandardOutput"] == ["journal"] and d["WantedBy"] == ["multi-user.target"]


def test_env_and_sysusers_carry_the_options():
    o = ServiceOptions(run_args=("--source", "csi://0", "--serve", "0.0.0.0:8080"), groups=("video", "render"))
    assert "\nEDGEKIT_RUN_ARGS=--source csi://0 --serve 0.0.0.0:8080\n" in render_env(o)
    assert render_sysusers(o).splitlines()[1:] == [
        'u edgekit - "edgekit camera service" /var/lib/edgekit /usr/sbin/nologin', "m edgekit video", "m edgekit render"]


@pytest.mark.parametrize("arg", ["gst:v4l2src ! appsink", 'a"b', "$HOME", "a\\b", "x'y", ""])
def test_run_args_systemd_cannot_carry_are_refused(arg):
    with pytest.raises(UsageError, match="environment file"):
        check_run_args(["--source", arg])


@pytest.mark.parametrize("bad", [dict(user="Bad User"), dict(command=("edgekit",)), dict(watchdog_sec=0)])
def test_bad_options_are_refused(bad):
    with pytest.raises(UsageError):
        ServiceOptions(**bad)


def _verify(tmp_path, options) -> subprocess.CompletedProcess:
    unit = tmp_path / options.unit_name
    unit.write_text(render_unit(options))
    return subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze absent: apt-get install -y systemd")
def test_systemd_analyze_verify_passes(tmp_path):
    """The unit as install writes it here (this Python -m edgekit): no error and no warning."""
    proc = _verify(tmp_path, ServiceOptions(command=(sys.executable, "-m", "edgekit")))
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", proc


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze absent: apt-get install -y systemd")
def test_systemd_analyze_catches_a_broken_unit(tmp_path):
    """The check above is not vacuous: a misspelt directive and a missing program are reported."""
    unit = tmp_path / "edgekit.service"
    unit.write_text(render_unit(ServiceOptions()).replace("WatchdogSec=", "WatchdogSecs="))
    proc = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert "WatchdogSecs" in proc.stderr
