"""`entropy-probe catalog`: known public checkpoints, shipped models and paper recipes."""

from __future__ import annotations

import json

import click

from . import cli


@cli.group("catalog")
def catalog_group():
    """List and show catalog entries.

    \b
    Kinds of entries:
      hub      public weights on the Hugging Face hub, used from the local cache only
      shipped  checkpoints that come with entropy-probe
      recipe   experiments of the Neural Entropy paper, with settings but no weights

    \b
    Examples:
      entropy-probe catalog list
      entropy-probe catalog show ddpm-cifar10-32
      entropy-probe measure ddpm-cifar10-32 --data npz:path=cifar_test.npz --out cifar.nc
    """


@catalog_group.command("list")
@click.option("--kind", type=click.Choice(["hub", "shipped", "recipe"]), help="Show only entries of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def list_command(kind, as_json):
    """List the entries: kind, local status, size, process, recorded S_NN (shipped models) and title."""
    from ..catalog import entry_bytes, entry_status, format_listing, load_catalog

    entries = {name: entry for name, entry in load_catalog().items() if kind is None or entry.kind == kind}
    if as_json:
        records = [
            {
                "name": e.name,
                "kind": e.kind,
                "status": entry_status(e),
                "title": e.title,
                "process": e.fields.get("process"),
                "bytes": entry_bytes(e),
                "s_nn": e.fields.get("recorded", {}).get("s_nn"),
                "s_nn_stderr": e.fields.get("recorded", {}).get("s_nn_stderr"),
            }
            for e in entries.values()
        ]
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
        return
    click.echo(format_listing(entries))


@catalog_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print only the entry's JSON.")
def show_command(name, as_json):
    """Show one entry: where its weights are and all its fields."""
    from ..catalog import format_entry, get_entry

    entry = get_entry(name)
    if as_json:
        click.echo(json.dumps(entry.fields, indent=2, ensure_ascii=False))
        return
    click.echo(format_entry(entry))
