"""``edgekit service install|uninstall|rollback|status``: the systemd service (see deploy/README.md)."""

from __future__ import annotations

import click

_ROOT = click.option("--root", type=click.Path(file_okay=False), default=None,
                     help="Write under this directory instead of / and run no systemctl/useradd (image builds, tests).")
_DRY = click.option("--dry-run", is_flag=True, help="Print every file and command; write and run nothing.")


def _out(dry_run: bool):
    """What service steps report: summary lines (silenced by -q), except a --dry-run's plan."""
    from edgekit.cli import say

    return click.echo if dry_run else say


@click.group("service")
def command():
    """Install, remove or inspect the systemd service that runs `edgekit run` on boot."""


@command.command("install", context_settings={"ignore_unknown_options": True})
@click.argument("bundle", type=click.Path())
@click.argument("run_options", nargs=-1, type=click.UNPROCESSED)
@_ROOT
@_DRY
@click.option("--force", is_flag=True, help="Replace an installed service: update its bundle (the old one is kept).")
@click.option("--exec", "exec_", default=None, metavar="PATH",
              help="edgekit command for the unit (default: this Python with -m edgekit).")
def install_cmd(bundle, run_options, root, dry_run, force, exec_):
    """Install BUNDLE as the service, with RUN_OPTIONS for `edgekit run` (e.g. --camera 0 --serve 0.0.0.0:8080).

    Copies the bundle to /var/lib/edgekit, writes /etc/systemd/system/edgekit.service and
    /etc/edgekit/edgekit.env, creates the `edgekit` user (in `video`), then enables and starts the
    service. Over an installed service (--force) this is an update: if the new bundle does not
    start, the previous one is restored and restarted. A bundle whose model for RUN_OPTIONS failed its
    accuracy gate is refused (--allow-failed-gate among RUN_OPTIONS overrides); --precision defaults to auto.
    """
    from edgekit.cli.run import check_run_options
    from edgekit.service.install import install

    params = check_run_options(run_options)  # refuse what `edgekit run` would refuse, before writing anything
    _warn_private_tmp(params)
    command = tuple(exec_.split()) if exec_ else None
    install(bundle, run_options, root=root, dry_run=dry_run, force=force, command=command, out=_out(dry_run))


@command.command("uninstall")
@_ROOT
@_DRY
@click.option("--purge", is_flag=True, help="Also delete the installed bundles, the engine cache and the user.")
def uninstall_cmd(root, dry_run, purge):
    """Stop, disable and remove the service (bundles and engines are kept unless --purge)."""
    from edgekit.service.install import uninstall

    uninstall(root=root, dry_run=dry_run, purge=purge, out=_out(dry_run))


@command.command("rollback")
@_ROOT
@_DRY
def rollback_cmd(root, dry_run):
    """Run the previously installed bundle again (swaps current and previous, restarts)."""
    from edgekit.service.install import rollback

    rollback(root=root, dry_run=dry_run, out=_out(dry_run))


@command.command("status")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Read the installation under this directory instead of / and ask no systemctl (images, tests).")
def status_cmd(root):
    """What is installed (bundle, previous bundle, run options) and what systemd says of it."""
    from edgekit.service.install import status

    for key, value in status(root=root).items():
        if value not in (None, ""):
            click.echo(f"{key}: {' '.join(value) if isinstance(value, list) else value}")


def _warn_private_tmp(params: dict) -> None:
    """Warn of a source or output under /tmp: the unit has PrivateTmp=yes, so the service sees an empty /tmp."""
    import logging
    import os

    sources = [("SOURCE", uri.split("=", 1)[-1]) for uri in (*params["source_args"], *params["source_opts"])]
    for option, value in (*sources, ("--sources-file", params["sources_file"]), ("--json", params["json_path"]),
                          ("--record", params["record"])):
        if isinstance(value, str) and os.path.abspath(value).startswith(("/tmp/", "/var/tmp/")):
            logging.getLogger("edgekit.service").warning(
                "%s %s is under /tmp, which the service does not see (its unit has PrivateTmp=yes); "
                "use a path outside /tmp", option, value)
