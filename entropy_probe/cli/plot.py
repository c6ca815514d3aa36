"""`entropy-probe plot`: redraw the figures of a saved result file."""

from __future__ import annotations

import click

from . import cli


@cli.command("plot")
@click.argument("result", metavar="RESULT.nc")
@click.option("--out", "out", metavar="PATH", help="PNG file (measure and compare results) or folder (reproduce results) [default: RESULT.png, or the folder RESULT_figures].")
@click.option("--overwrite", is_flag=True, help="Replace existing figure files.")
def plot_command(result, out, overwrite):
    """Redraw the figures of RESULT.nc, written by measure, compare or reproduce.

    A measure result gives its rate curves and cumulative entropy. A compare result gives the
    overlay of its processes. The combined Dataset of reproduce gives every figure of its study.

    \b
    Examples:
      entropy-probe plot result.nc
      entropy-probe plot runs/gmm/combined.nc --out gmm-figures
    """
    from ..plots import plot_result

    for path in plot_result(result, out, overwrite=overwrite):
        click.echo(f"wrote {path}")
