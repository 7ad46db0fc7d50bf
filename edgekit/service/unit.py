"""Render the systemd unit, its environment file and its sysusers.d entry from a few options.

The unit runs ``edgekit run`` on the installed bundle (``/var/lib/<name>/bundle``, a symlink that
``edgekit service install`` switches atomically) with the engine cache in ``/var/cache/<name>`` and
the run options from ``/etc/<name>/<name>.env``. It targets systemd >= 245 (JetPack 5's Ubuntu
20.04; JetPack 6 has 249), so it uses no newer directive (no RestartSteps=).

Why a static system user and not ``DynamicUser=``: the service must be in the ``video`` group that
owns ``/dev/video*``, ``/dev/nvhost-*`` and ``/dev/nvmap`` on Jetson, its bundles and engines must
keep one owner across reboots, and an operator must be able to pre-build engines as that same user
(``sudo -u edgekit edgekit build ...``). A dynamic UID lives under ``/var/lib/private`` and may change
from boot to boot; a fixed ``edgekit`` user in ``video`` does all of that plainly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.errors import UsageError

# Characters that survive systemd's EnvironmentFile= parsing and the whitespace split of an unbraced
# $EDGEKIT_RUN_ARGS in ExecStart= unchanged: no quoting, escaping or expansion can alter them.
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_@%+=:,./~^\-\[\]{}]+$")  # {}: run --record out/{source}.mkv
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")


def check_run_args(args) -> tuple[str, ...]:
    """Return ``args`` as a tuple if systemd can pass each one to ``edgekit run`` intact."""
    args = tuple(str(a) for a in args)
    for arg in args:
        if not _SAFE_ARG.match(arg):
            raise UsageError(
                f"run option {arg!r} has a space, quote, '$', '\\' or other character that the service's "
                "environment file cannot carry intact; use a source without them (csi://0, /dev/video0, rtsp://...)"
            )
    return args


@dataclass(frozen=True)
class ServiceOptions:
    """What the rendered files depend on. Paths are those of the target system (no ``--root``)."""

    run_args: tuple[str, ...] = ("--camera", "0", "--serve", "127.0.0.1:8080")
    command: tuple[str, ...] = ("/usr/bin/python3", "-m", "edgekit")
    name: str = "edgekit"
    user: str = "edgekit"
    groups: tuple[str, ...] = ("video",)
    watchdog_sec: int = 30
    start_timeout: str = "20min"
    restart_sec: int = 10
    start_limit_interval: str = "15min"
    start_limit_burst: int = 5
    secrets: tuple = ()  # (NAME, value) environment variables read by `edgekit run` (--mqtt, --webhook URLs)

    def __post_init__(self):
        for what, value in (("service name", self.name), ("user", self.user), *(("group", g) for g in self.groups)):
            if not _NAME.match(value):
                raise UsageError(f"bad {what} {value!r}: use lower-case letters, digits, '_' and '-'")
        if not self.command or not self.command[0].startswith("/") or any(not _SAFE_ARG.match(w) for w in self.command):
            raise UsageError(f"the service command must be an absolute path without spaces, not {' '.join(self.command)!r}")
        if self.watchdog_sec < 1 or self.restart_sec < 0 or self.start_limit_burst < 1:
            raise UsageError("watchdog and restart settings must be positive")
        object.__setattr__(self, "run_args", check_run_args(self.run_args))
        check_run_args(value for _, value in self.secrets)
        object.__setattr__(self, "groups", tuple(self.groups))

    # ---- paths on the target system ---------------------------------------------------------
    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"

    @property
    def unit_path(self) -> str:
        return f"/etc/systemd/system/{self.unit_name}"

    @property
    def env_path(self) -> str:
        return f"/etc/{self.name}/{self.name}.env"

    @property
    def sysusers_path(self) -> str:
        return f"/etc/sysusers.d/{self.name}.conf"

    @property
    def state_dir(self) -> str:
        return f"/var/lib/{self.name}"

    @property
    def cache_dir(self) -> str:
        return f"/var/cache/{self.name}"

    @property
    def bundle_path(self) -> str:
        return f"{self.state_dir}/bundle"


def render_unit(o: ServiceOptions = ServiceOptions()) -> str:
    """The unit file text."""
    command = " ".join(o.command)
    groups = " ".join(o.groups)
    return f"""\
# {o.unit_path} -- written by `edgekit service install`; edit the run options in
# {o.env_path}, or override settings with `systemctl edit {o.name}`.
[Unit]
Description=edgekit camera inference ({o.bundle_path})
Wants=network-online.target
After=network-online.target nvargus-daemon.service
# Back-off: RestartSec= between tries, and at most {o.start_limit_burst} starts per {o.start_limit_interval};
# past that the unit stays failed (a broken bundle does not loop forever) until
# `systemctl reset-failed {o.name}` or the next boot.
StartLimitIntervalSec={o.start_limit_interval}
StartLimitBurst={o.start_limit_burst}

[Service]
# `edgekit run` sends READY=1 once the engine is loaded and the first frame is processed,
# WATCHDOG=1 from the frame loop and STATUS= with the FPS. It is the main process (no shell), so
# only it may notify. The first start builds the TensorRT engine (minutes on an Orin Nano): hence
# the long start timeout; later starts load the cached engine in seconds.
Type=notify
NotifyAccess=main
EnvironmentFile={o.env_path}
Environment=PYTHONUNBUFFERED=1
ExecStart={command} run {o.bundle_path} --cache-dir {o.cache_dir} $EDGEKIT_RUN_ARGS
TimeoutStartSec={o.start_timeout}
# A loop that stops sending WATCHDOG=1 (hung camera, hung GPU) is killed and restarted.
WatchdogSec={o.watchdog_sec}s
# SIGTERM makes the loop finish its frame, flush its sinks and exit within 2 s.
TimeoutStopSec=15s
Restart=on-failure
RestartSec={o.restart_sec}s

# A fixed unprivileged user in {groups} (see edgekit/service/unit.py for why not DynamicUser=).
User={o.user}
Group={o.user}
SupplementaryGroups={groups}
# /var/lib/{o.name}: installed bundles; /var/cache/{o.name}: TensorRT engines and timing caches.
# systemd creates both, owned by {o.user}, and keeps them writable under ProtectSystem=strict.
StateDirectory={o.name}
CacheDirectory={o.name}
UMask=0027
StandardOutput=journal
StandardError=journal
SyslogIdentifier={o.name}

# Devices. PrivateDevices=yes would hide every node below; instead /dev stays the host's and the
# device cgroup allows only the null/zero/random/tty basics (DevicePolicy=closed) plus:
PrivateDevices=no
DevicePolicy=closed
# /dev/video* (V4L2 cameras: USB, and CSI through v4l2src), major group "video4linux".
DeviceAllow=char-video4linux rw
# /dev/nvhost-* (Jetson GPU channels, host1x, VIC, NVDEC/NVENC, ISP/VI for CSI), one group each.
DeviceAllow=char-nvhost-* rw
# /dev/nvgpu/igpu0/* (the GPU on JetPack 6's out-of-tree nvgpu driver).
DeviceAllow=char-nvgpu* rw
# /dev/nvmap (Jetson's GPU memory allocator, a misc device: allowed by path).
DeviceAllow=/dev/nvmap rw
# CSI cameras through nvarguscamerasrc talk to nvargus-daemon over /tmp/argus_socket.
PrivateTmp=yes
BindPaths=-/tmp/argus_socket

# Hardening that costs the camera loop nothing.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
# Not set: MemoryDenyWriteExecute=yes, which breaks CUDA's and ONNX Runtime's JIT code.

[Install]
WantedBy=multi-user.target
"""


def render_env(o: ServiceOptions = ServiceOptions()) -> str:
    """The environment file text: the options given to ``edgekit run`` after the bundle."""
    return f"""\
# {o.env_path} -- settings of {o.unit_name}, written by `edgekit service install`.
# After a change: sudo systemctl restart {o.name}
#
# Options for `edgekit run` (see `edgekit run --help`), after the installed bundle
# ({o.bundle_path}) and --cache-dir {o.cache_dir}. They are split at spaces, so no
# option may contain a space or a quote: name a camera as --camera N, --source /dev/videoN,
# --source csi://N or --source rtsp://HOST/PATH. --serve HOST:PORT gives the MJPEG stream and
# /metrics (127.0.0.1: this machine only; 0.0.0.0: the network).
EDGEKIT_RUN_ARGS={" ".join(o.run_args)}
""" + "".join(f"# {SECRET_HELP[name]}\n{name}={value}\n" for name, value in o.secrets)


# run options whose values may hold credentials: kept out of EDGEKIT_RUN_ARGS (and so out of the
# process's command line), in variables `edgekit run` reads; the file is mode 0600.
SECRET_OPTIONS = {"--mqtt": "EDGEKIT_MQTT", "--webhook": "EDGEKIT_WEBHOOK"}
SECRET_HELP = {"EDGEKIT_MQTT": "run --mqtt: the broker URL (may hold user:password; this file is mode 0600)",
               "EDGEKIT_WEBHOOK": "run --webhook: the URL(s), space-separated (this file is mode 0600)"}


def split_secrets(args) -> tuple[tuple[str, ...], tuple]:
    """(run args without --mqtt/--webhook and their values, ((variable, value), ...))."""
    args, rest, found = list(args), [], {}
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag in SECRET_OPTIONS:
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            found.setdefault(SECRET_OPTIONS[flag], []).append(value)
        else:
            rest.append(args[i])
        i += 1
    return tuple(rest), tuple((name, " ".join(values)) for name, values in found.items())


def render_sysusers(o: ServiceOptions = ServiceOptions()) -> str:
    """A sysusers.d entry: the user, and its membership of the device groups (for image builds)."""
    lines = [f"# {o.sysusers_path} -- the user of {o.unit_name} (systemd-sysusers creates it at boot).",
             f'u {o.user} - "edgekit camera service" {o.state_dir} /usr/sbin/nologin']
    lines += [f"m {o.user} {group}" for group in o.groups]
    return "\n".join(lines) + "\n"
