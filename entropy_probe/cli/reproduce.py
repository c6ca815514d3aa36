"""`entropy-probe reproduce`: run a recipe of the catalog and gather its results."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from .. import interrupts
from . import cli
from .common import check_device, positive_int

logger = logging.getLogger("entropy_probe")


@cli.command("reproduce")
@click.argument("recipe")
@click.option("--scale", default="cpu", metavar="NAME", help="Named scale of the recipe: tiny (seconds, for tests), cpu (about an hour with --jobs 2 on 2 CPU cores) or paper (the paper's settings, for a GPU).")
@click.option("--out", "out", required=True, metavar="DIR", help="Output directory; a second run with the same DIR skips what is finished.")
@click.option("--jobs", type=int, default=1, callback=positive_int("--jobs"), help="Items run at once, each in its own process with one torch thread.")
@click.option("--data-dir", "data_dir", metavar="DIR", help="Data directory for recipes that need one (CIFAR-10 batches; MNIST IDX files at the paper scale).")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N or auto.")
@click.option("--figures/--no-figures", default=True, help="Draw the figures and write summary.txt after the runs.")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan (every item's settings) and exit.")
def reproduce_command(recipe, scale, out, jobs, data_dir, device, figures, dry_run):
    """Train and measure every item of a RECIPE, then combine the results and draw the figures.

    RECIPE is a catalog recipe with a reproduce section (see 'entropy-probe catalog list').
    DIR receives one training run and one result file per checkpoint under DIR/items, the
    combined Dataset DIR/combined.nc, figures under DIR/figures and DIR/summary.txt. A sweep
    stopped by Ctrl-C or SIGTERM keeps its finished items and epochs and continues where it
    stopped when run again with the same DIR.

    \b
    Examples:
      entropy-probe reproduce paper-gmm --scale cpu --out runs/gmm --jobs 2
      entropy-probe reproduce paper-mnist-unet --scale cpu --out runs/mnist --jobs 2
      entropy-probe reproduce paper-cifar10-unet-vp --scale paper --data-dir cifar-10-batches-py --out runs/cifar
      entropy-probe plot runs/gmm/combined.nc --out gmm-figures
    """
    from ..recipes import load_plan
    from ..reproduce import reproduce

    from ..errors import DataError

    if data_dir is not None and not Path(data_dir).is_dir():
        problem = "is a file, not a directory" if Path(data_dir).exists() else "not found"
        raise DataError(f"--data-dir {data_dir!r} {problem}; give an existing data directory, or leave --data-dir out")
    variables = {"data_dir": data_dir} if data_dir else {}
    resolved_device = check_device(device)
    plan = load_plan(recipe, scale, variables, device=resolved_device)
    if dry_run:
        click.echo(json.dumps(plan.describe(), indent=2, default=str))
        return
    if jobs > 1 and resolved_device.startswith("cuda"):
        logger.warning("--jobs %d on %s: every worker process uses the same GPU", jobs, resolved_device)
    with interrupts.catch_signals():
        try:
            dataset, events = reproduce(plan, out, jobs=jobs, figures=figures)
        except KeyboardInterrupt:
            raise interrupts.interrupted(
                f"reproduce was interrupted; finished items and epochs are kept in {str(out)!r}; "
                f"run the same command again to continue"
            ) from None
    ran = sum(1 for event in events if event.get("action") == "finished")
    skipped = sum(1 for event in events if event.get("action") == "skipped")
    click.echo(f"{ran} item(s) run, {skipped} skipped (finished earlier)")
    if figures:
        click.echo((Path(out) / "summary.txt").read_text().rstrip())
    click.echo(f"\nwrote {Path(out) / 'combined.nc'}" + (f" and the figures in {Path(out) / 'figures'}" if figures else ""))
