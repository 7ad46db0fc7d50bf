from __future__ import annotations

import click

from edgekit.cli.options import TARGET_HELP


@click.command("inspect")
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--target", default=None, help="Also check the fp32 graph against this version. " + TARGET_HELP)
@click.option("--nodes", is_flag=True, help="List the fp32 graph's nodes (name and op): the names --keep-float takes.")
def command(bundle, as_json, target, nodes):
    """Summarise BUNDLE: inputs/outputs, op histogram, target verdict, sizes and hashes of every model."""
    import json

    from edgekit.inspect import format_summary, inspect_bundle

    summary = inspect_bundle(bundle, target=target, nodes=nodes)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
