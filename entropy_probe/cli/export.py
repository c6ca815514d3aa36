"""`entropy-probe export`: write a trained checkpoint in another tool's format."""

from __future__ import annotations

import click

from . import cli
from .common import save_options


@cli.command("export")
@click.argument("checkpoint")
@click.option("--format", "format_name", type=click.Choice(["diffusers"]), default="diffusers", help="Output format.")
@click.option("--out", required=True, metavar="DIR", help="Folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing folder.")
def export_command(checkpoint, format_name, out, overwrite):
    """Export a U-Net trained by 'entropy-probe train' as a diffusers folder.

    The folder contains unet/ (UNet2DModel config and safetensors weights), model_index.json and
    entropy_probe.json, which records the process and the preconditioning that no diffusers
    scheduler can express. 'entropy-probe measure DIR' reads it back and gives the same numbers
    as the original checkpoint.

    \b
    Examples:
      entropy-probe export runs/mnist10 --format diffusers --out mnist10-diffusers
      entropy-probe measure mnist10-diffusers --out mnist10.nc
    """
    from ..export import export_checkpoint

    folder = export_checkpoint(checkpoint, out, format=format_name, overwrite=overwrite)
    save_options(folder, "export", {"checkpoint": checkpoint, "format": format_name, "out": out, "overwrite": overwrite})
    click.echo(f"wrote {format_name} folder {folder}")
