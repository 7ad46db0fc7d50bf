"""Install, update, remove and inspect the systemd service.

Layout on the device (``name`` = ``edgekit``)::

    /etc/systemd/system/edgekit.service   the unit (render_unit)
    /etc/edgekit/edgekit.env              the `edgekit run` options (render_env)
    /etc/sysusers.d/edgekit.conf          the user, for systemd-sysusers (image builds)
    /var/lib/edgekit/bundles/<name>-<sha> installed bundles (at most two kept)
    /var/lib/edgekit/bundle               symlink to the running bundle, switched atomically
    /var/lib/edgekit/bundle.previous      symlink to the one before: the roll-back target
    /var/cache/edgekit                    engines (created by systemd: CacheDirectory=)

``install`` on a system that already has the service is an update (with ``force``): the new bundle
is copied and checked, the link switched, the service restarted (which rebuilds the engine: its
cache key holds the ONNX sha256), and if it does not come up, the link goes back to the previous
bundle (and ``bundle.previous`` to the one before it, never to the bundle that failed) and the
service is restarted on it. An installed bundle's id is its folder name and a hash of all its
files, so any change (labels, a new INT8 model) is installed as a new bundle.

With ``root`` (``--root DIR``) files are written under DIR and no command touches this system:
``useradd`` and ``systemctl`` are printed, not run; the user comes from the sysusers.d entry at the
image's first boot, and the unit is enabled the way ``systemctl --root=DIR enable`` does it, by the
``multi-user.target.wants`` symlink. With ``dry_run`` nothing is written or run; every file and
command is printed.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from edgekit.atomic import atomic_dir, sha256_file, write_text
from edgekit.bundle import MANIFEST, Bundle
from edgekit.errors import EdgekitError, InputError, UsageError
from edgekit.service.unit import SECRET_HELP, ServiceOptions, render_env, render_sysusers, render_unit, split_secrets

log = logging.getLogger("edgekit.service")


def default_command() -> tuple[str, ...]:
    """This interpreter running this edgekit: right for a venv or a system install, whatever PATH says."""
    return (sys.executable, "-m", "edgekit")


class Layout:
    """The service's paths under ``root`` ("/" for the real system)."""

    def __init__(self, options: ServiceOptions, root: str | os.PathLike | None = None):
        self.options = options
        self.root = Path(root or "/")
        o = options
        self.unit = self.at(o.unit_path)
        self.env = self.at(o.env_path)
        self.sysusers = self.at(o.sysusers_path)
        self.wants = self.at(f"/etc/systemd/system/multi-user.target.wants/{o.unit_name}")
        self.state = self.at(o.state_dir)
        self.cache = self.at(o.cache_dir)
        self.bundles = self.state / "bundles"
        self.current = self.at(o.bundle_path)
        self.previous = self.current.with_name("bundle.previous")

    def at(self, target_path: str) -> Path:
        return self.root / target_path.lstrip("/")

    def linked(self, link: Path) -> str | None:
        """The bundle id a link points at, or None."""
        return Path(os.readlink(link)).name if link.is_symlink() else None


class _Actions:
    """Writes, links and runs, or prints them: dry run (nothing done) or commands not run (--root)."""

    def __init__(self, dry_run: bool, run_commands: bool, out):
        self.dry_run, self.run_commands, self.out = dry_run, run_commands, out

    def write(self, path: Path, text: str, mode: int = 0o644, secret: bool = False) -> None:
        if self.dry_run:
            shown = "".join(f"    {line}\n" for line in text.splitlines()
                            if not (secret and line.split("=", 1)[0] in SECRET_HELP))
            self.out(f"would write {path} (mode {mode:o}){' (credentials not shown)' if secret else ''}:\n{shown}")
            return
        write_text(path, text, mode=mode)
        self.out(f"wrote {path}")

    def link(self, link: Path, target: str) -> None:
        """Point ``link`` at ``target`` in one rename (readers see the old or the new link)."""
        if self.dry_run:
            self.out(f"would link {link} -> {target}")
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)

    def remove(self, path: Path) -> None:
        if not (path.exists() or path.is_symlink()):
            return
        if self.dry_run:
            self.out(f"would remove {path}")
            return
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        self.out(f"removed {path}")

    def run(self, *argv: str, check: bool = True) -> bool:
        """Run a command; True when it succeeded (or was only printed)."""
        line = shlex.join(argv)
        if self.dry_run or not self.run_commands:
            self.out(f"{'would run' if self.dry_run else 'not run (--root)'}: {line}")
            return True
        self.out(f"run: {line}")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise EdgekitError(f"cannot run {argv[0]}: not found (is this a systemd system?)") from exc
        if proc.returncode and check:
            detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise EdgekitError(f"`{line}` failed (exit {proc.returncode}): {detail[-1] if detail else 'no message'}")
        return proc.returncode == 0


SYSTEMD_RUNTIME = Path("/run/systemd/system")  # exists only while systemd runs as init (sd_booted)


def _check_root(root, dry_run: bool, what: str) -> None:
    """On the real system: refuse without root, and before touching anything when systemd is not running."""
    if root is not None or dry_run:
        return
    if os.geteuid() != 0:
        raise UsageError(f"{what} the service needs root: run it with sudo, or pass --root DIR to write under another root")
    if not SYSTEMD_RUNTIME.is_dir():
        raise EdgekitError(f"{what} the service needs a running systemd, and this machine (a container?) has none: "
                           "pass --root DIR to write it into an image instead")


def _bundle_id(bundle: Bundle) -> str:
    """Folder name + a hash of the whole bundle: a re-labelled or re-quantized bundle is a new install."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", bundle.path.resolve().name).strip("-.") or "bundle"
    return f"{stem}-{sha256_file(bundle.path)[:12]}"


def ensure_user(options: ServiceOptions, act: _Actions) -> None:
    """Create the service's system user in its groups, or add an existing one to missing groups."""
    user, groups = options.user, list(options.groups)
    try:
        have = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
        pwd.getpwnam(user)
    except KeyError:
        have = None
    try:
        for group in groups:
            try:
                grp.getgrnam(group)
            except KeyError:
                act.run("groupadd", "--system", group)
        if have is None:
            act.run("useradd", "--system", "--user-group", "--home-dir", options.state_dir, "--no-create-home",
                    "--shell", "/usr/sbin/nologin", "--groups", ",".join(groups), user)
        elif missing := [g for g in groups if g not in have]:
            act.run("usermod", "--append", "--groups", ",".join(missing), user)
    except EdgekitError as exc:
        raise EdgekitError(f"cannot create the service user {user!r}: {exc}") from exc


def _copy_bundle(bundle: Bundle, layout: Layout, act: _Actions) -> str:
    """Copy ``bundle`` into the state dir (atomically, checked); return its id."""
    bid = _bundle_id(bundle)
    dst = layout.bundles / bid
    if act.dry_run:
        act.out(f"would copy {bundle.path} -> {dst}")
        return bid
    if dst.is_dir():
        try:
            Bundle.load(dst)
            act.out(f"{dst} already holds this bundle")
            return bid
        except EdgekitError:
            pass
    with atomic_dir(dst, force=True) as tmp:
        shutil.copytree(bundle.path, tmp, dirs_exist_ok=True, symlinks=False)
        Bundle.load(tmp)
    act.out(f"copied {bundle.path} -> {dst}")
    return bid


def _prune(layout: Layout, act: _Actions) -> None:
    keep = {layout.linked(layout.current), layout.linked(layout.previous)}
    if act.dry_run or not layout.bundles.is_dir():
        return
    for old in layout.bundles.iterdir():
        if old.name not in keep and (old / MANIFEST).exists():
            act.remove(old)


def check_run_model(bundle: Bundle, run_args) -> None:
    """Refuse, before installing anything, a bundle whose model for ``run_args`` failed its accuracy gate
    (the choice `edgekit run` would make here, ``--precision auto`` by default; ``--allow-failed-gate`` overrides)."""
    from edgekit.backends.select import choose_here, log_choice

    args, given = list(run_args), {}
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in ("--backend", "--precision"):
            given[name] = value if eq else (args[i + 1] if i + 1 < len(args) else "")
    log_choice(choose_here(bundle, given.get("--backend", "auto"), given.get("--precision", "auto"),
                           "--allow-failed-gate" in args))


def install(bundle, run_args=(), *, root=None, dry_run: bool = False, force: bool = False,
            command: tuple[str, ...] | None = None, run_commands: bool | None = None, out=print) -> ServiceOptions:
    """Install (or, with ``force`` over an installed one, update) the service for ``bundle``.

    ``run_commands`` defaults to ``root is None``; tests pass True with stand-in tools on PATH.
    """
    _check_root(root, dry_run, "installing")
    args, secrets = split_secrets(run_args)
    options = ServiceOptions(run_args=args, command=tuple(command or default_command()), secrets=secrets)
    layout = Layout(options, root)
    bundle = Bundle.load(bundle)
    check_run_model(bundle, options.run_args)
    if layout.unit.exists() and not force:
        raise InputError(f"{options.unit_name} is already installed ({layout.unit}); "
                         "pass --force to replace it (its bundle is kept as the previous one)")
    if any(Path(h) in Path(p).resolve().parents for p in (options.command[0], __file__) for h in ("/home", "/root")):
        log.warning("edgekit or its Python is under /home or /root, which the unit's ProtectHome=yes hides: "
                    "install it system-wide or in a venv under /opt")
    act = _Actions(dry_run, root is None if run_commands is None else run_commands, out)
    systemctl = lambda *a, check=True: act.run("systemctl", *a, options.unit_name, check=check)  # noqa: E731

    if act.run_commands:
        ensure_user(options, act)
    else:
        out(f"user {options.user}: created at first boot by systemd-sysusers from {options.sysusers_path}")
    new = _copy_bundle(bundle, layout, act)
    old, before = layout.linked(layout.current), layout.linked(layout.previous)
    act.link(layout.current, f"bundles/{new}")
    if old and old != new:
        act.link(layout.previous, f"bundles/{old}")
    act.write(layout.unit, render_unit(options))
    act.write(layout.env, render_env(options), mode=0o600, secret=bool(secrets))  # root reads it for systemd
    act.write(layout.sysusers, render_sysusers(options))
    if root is not None:
        act.link(layout.wants, options.unit_path)
    act.run("systemctl", "daemon-reload")
    systemctl("enable")
    if not systemctl("restart", check=False):
        if old and old != new:  # back to how it was: the bundle that failed is no roll-back target
            act.link(layout.current, f"bundles/{old}")
            if before and before != new:
                act.link(layout.previous, f"bundles/{before}")
            else:
                act.remove(layout.previous)
            back = systemctl("restart", check=False)
            raise EdgekitError(f"{options.unit_name} did not start with bundle {new}; rolled back to {old}"
                               f"{'' if back else ' (which did not start either)'}: see journalctl -u {options.name}")
        raise EdgekitError(f"{options.unit_name} did not start: see journalctl -u {options.name}")
    _prune(layout, act)
    if not dry_run:
        state = "running bundle" if act.run_commands else "for bundle"
        out(f"installed {options.unit_name} {state} {new}" + (f" (previous: {old})" if old and old != new else "")
            + ("" if act.run_commands else f"; not started ({'under --root' if root is not None else 'no systemctl'})"))
    return options


def rollback(*, root=None, dry_run: bool = False, run_commands: bool | None = None, out=print) -> str:
    """Switch the service back to the previous bundle and restart it; return that bundle's id."""
    _check_root(root, dry_run, "rolling back")
    layout = Layout(ServiceOptions(), root)
    _require_installed(layout)
    current, previous = layout.linked(layout.current), layout.linked(layout.previous)
    if previous is None or not (layout.bundles / previous).is_dir():
        raise InputError(f"no previous bundle to roll back to ({layout.previous})")
    act = _Actions(dry_run, root is None if run_commands is None else run_commands, out)
    act.link(layout.current, f"bundles/{previous}")
    act.link(layout.previous, f"bundles/{current}")
    act.run("systemctl", "restart", layout.options.unit_name)
    out(f"{layout.options.unit_name} now runs bundle {previous} (previous: {current})")
    return previous


def _require_installed(layout: Layout) -> None:
    if not layout.unit.exists():
        raise InputError(f"{layout.options.unit_name} is not installed (no {layout.unit})")


def uninstall(*, root=None, dry_run: bool = False, purge: bool = False, run_commands: bool | None = None,
              out=print) -> None:
    """Stop, disable and remove the service. Bundles, engines and the user stay unless ``purge``."""
    _check_root(root, dry_run, "removing")
    options = ServiceOptions()
    layout = Layout(options, root)
    _require_installed(layout)
    act = _Actions(dry_run, root is None if run_commands is None else run_commands, out)
    act.run("systemctl", "disable", "--now", options.unit_name)
    for path in (layout.wants, layout.unit, layout.env, layout.sysusers):
        act.remove(path)
    if not dry_run and layout.env.parent.is_dir() and not any(layout.env.parent.iterdir()):
        layout.env.parent.rmdir()
    act.run("systemctl", "daemon-reload")
    if purge:
        act.remove(layout.state)
        act.remove(layout.cache)
        act.run("userdel", options.user, check=False)
    else:
        out(f"kept {layout.state} (bundles), {layout.cache} (engines) and user {options.user}: --purge removes them")


def read_run_args(env_file: Path) -> list[str]:
    """The EDGEKIT_RUN_ARGS of an environment file written by render_env."""
    for line in env_file.read_text("utf-8").splitlines():
        if line.startswith("EDGEKIT_RUN_ARGS="):
            return line.split("=", 1)[1].split()
    return []


def _event_urls(env_file: Path) -> list[str]:
    """The --mqtt/--webhook URLs of an environment file, without credentials."""
    from edgekit.events.delivery import redact

    try:
        lines = env_file.read_text("utf-8").splitlines()
    except OSError:  # mode 0600: only root reads it
        return []
    return [redact(url) for line in lines if line.split("=", 1)[0] in SECRET_HELP for url in line.split("=", 1)[1].split()]


def status(*, root=None, run_commands: bool | None = None) -> dict:
    """What is installed and, on the real system, what systemd says of it."""
    layout = Layout(ServiceOptions(), root)
    _require_installed(layout)
    info = {
        "unit": str(layout.unit),
        "env": str(layout.env),
        "run_args": read_run_args(layout.env) if layout.env.exists() else None,
        "events": _event_urls(layout.env) if layout.env.exists() else None,
        "bundle": layout.linked(layout.current),
        "previous": layout.linked(layout.previous),
    }
    if info["bundle"] and (layout.bundles / info["bundle"]).is_dir():
        manifest = Bundle.load(layout.bundles / info["bundle"], verify=False).manifest
        info["task"], info["labels"] = manifest["task"], len(manifest["labels"])
    if root is None if run_commands is None else run_commands:
        props = "ActiveState,SubState,UnitFileState,StatusText,NRestarts,MainPID"
        try:
            proc = subprocess.run(["systemctl", "show", "-p", props, layout.options.unit_name],
                                  capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise EdgekitError("cannot run systemctl: not found (is this a systemd system?)") from exc
        for line in proc.stdout.splitlines():
            key, _, value = line.partition("=")
            info[key] = value
    else:
        info["UnitFileState"] = "enabled" if layout.wants.is_symlink() else "disabled"
    return info

