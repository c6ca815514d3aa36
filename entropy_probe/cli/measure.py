"""`entropy-probe measure`: the main job."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import click

from .. import distributed
from . import cli
from .common import check_device, progress_enabled, save_options, tqdm_factory
from .estimation import BatchSize, estimation_options, settings_fields

logger = logging.getLogger("entropy_probe")

DEFAULT_CHECKPOINT = "mnist-unet-vp"


@cli.command("measure")
@click.argument("checkpoint", required=False)
@click.option("--process", "process_spec", metavar="SPEC", help="Forward process, e.g. vp:beta_min=0.1,beta_max=16 (default: the checkpoint's own).")
@click.option("--t-min", type=float, help="Start of the measured time range (> 0; default: the process's, usually 1e-3).")
@click.option("--t-max", type=float, help="End T of the measured time range (default: the process's end).")
@click.option("--data", "data_spec", metavar="SPEC", help="Data to measure on, e.g. mnist:split=heldout (default: the checkpoint's held-out data or the oracle's law).")
@click.option("--samples", type=int, help="Monte Carlo samples per stratum (per node with --estimator grid); with --target-stderr, those of the pilot round that plans the sampling. Default 256, or 8 with --target-stderr.")
@click.option("--nodes", type=int, default=65, help="Time nodes of --estimator grid (odd for the simpson rule); giving it selects the grid.")
@click.option("--rule", type=click.Choice(["simpson", "trapezoid", "gauss", "trapezoid-t"]), default="simpson", help="Quadrature rule of --estimator grid (giving it selects the grid); all but trapezoid-t place nodes uniformly in log(σ/α).")
@click.option("--seed", type=int, default=0, help="Seed of the draws; equal seeds give common random numbers across models and processes.")
@click.option("--batch-size", type=BatchSize(), default="256", help="Network evaluations per batch, or auto to fill the memory budget (does not change the numbers).")
@click.option("--reference", "reference_dir", metavar="DIR", help="Oracle checkpoint with the exact data law; adds s_tot, score_error and kl_bound.")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N or auto.")
@click.option("--scheduler-config", "scheduler_config", metavar="FILE", help="scheduler_config.json the model was trained with (diffusers folders without their own scheduler).")
@click.option("--revision", metavar="REV", help="Branch, tag or commit of a hub id, read from the local cache.")
@click.option("--adapter", "adapter", metavar="MODULE:FUNCTION", help="Load CHECKPOINT with FUNCTION(source, **options) from an importable module.")
@click.option("--out", "out", required=True, metavar="RESULT.nc", help="NetCDF file to write.")
@click.option("--plot", "plot_path", metavar="RESULT.png", help="Also draw the rate curves and cumulative entropy to this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and exit.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@estimation_options
@click.pass_context
def measure_command(ctx, checkpoint, process_spec, t_min, t_max, data_spec, samples, nodes, rule, seed, batch_size, reference_dir, device, scheduler_config, revision, adapter, out, plot_path, overwrite, dry_run, progress, **estimation):
    """Measure neural entropy S_NN and the cross-entropy bound of CHECKPOINT.

    CHECKPOINT is a checkpoint directory, a catalog name or a cached hub id; without it, the
    shipped default MNIST model is measured on the bundled held-out digits.

    \b
    Examples:
      entropy-probe measure --out result.nc --plot result.png
      entropy-probe measure gmm3 --process sl:sigma0=0.1 --samples 1024 --out gmm3.nc
      entropy-probe measure --target-stderr 0.002 --batch-size auto --out result.nc
      torchrun --nproc-per-node 4 -m entropy_probe measure --device cuda --out result.nc

    Under torchrun every process evaluates its share of the draws and rank 0 alone
    prints and writes; the result equals that of one process.
    """
    from ..api import load_model, resolve_data, resolve_process, resolve_reference
    from ..probe import MeasureSettings, measure, resolve_time_range, summarize
    from ..results import check_output_path, write_dataset

    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    run = distributed.init_from_environment(check_device(device))
    ctx.call_on_close(distributed.shutdown)
    distributed.silence_unless_main(run, keep_stderr=bool(ctx.obj and ctx.obj.get("debug")))
    settings = MeasureSettings(
        t_min=t_min, t_max=t_max, nodes=nodes, seed=seed, rule=rule, batch_size=batch_size,
        device=run.device, progress=progress_enabled(ctx, progress), **settings_fields(samples, estimation, ctx),
    )
    settings.validate()
    check_output_path(out, overwrite)
    if plot_path:
        check_output_path(plot_path, overwrite)

    load_options = {key: value for key, value in (("scheduler_config", scheduler_config), ("revision", revision)) if value}
    model = load_model(checkpoint, adapter=adapter, **load_options)
    process = resolve_process(model, process_spec)
    data = resolve_data(model, data_spec)
    reference = resolve_reference(model, data, reference_dir)
    resolved_t_min, resolved_t_max = resolve_time_range(process, settings)
    options = {
        "checkpoint": checkpoint,
        "adapter": adapter,
        **load_options,
        "process": process.spec,
        "data": data.spec,
        "reference": reference_dir or ("data law" if reference is not None else None),
        **asdict(settings),
        "t_min": resolved_t_min,
        "t_max": resolved_t_max,
        "out": out,
        "plot": plot_path,
    }
    if dry_run:
        click.echo(json.dumps(options, indent=2))
        return

    provenance = {"checkpoint": checkpoint, "checkpoint_sha256": model.fingerprint}
    dataset = measure(model, process, data, settings, reference=reference, provenance=provenance, progress_factory=tqdm_factory, context=run)
    if not run.is_main:
        return
    write_dataset(dataset, out, overwrite=overwrite)
    save_options(out, "measure", options)
    if plot_path:
        from ..plots import plot_measurement

        plot_measurement(dataset, plot_path)
    click.echo(summarize(dataset))
    click.echo(f"\nwrote {out}" + (f" and {plot_path}" if plot_path else ""))
