"""`entropy-probe compare`: one checkpoint under several forward processes."""

from __future__ import annotations

import json
import logging
import click

from . import cli
from .common import check_device, check_options_path, progress_enabled, save_options, seed_option, tqdm_factory
from .estimation import BatchSize, estimation_options, settings_fields

logger = logging.getLogger("entropy_probe")


@cli.command("compare")
@click.argument("checkpoint")
@click.option("--process", "process_specs", metavar="SPEC", multiple=True, required=True, help="Forward process; repeat for each process to compare, e.g. --process vp --process sl:sigma0=0.1.")
@click.option("--t-min", type=float, help="Start of the measured time range for every process (> 0; default: each process's own, usually 1e-3).")
@click.option("--t-max", type=float, help="End T of the measured time range for every process (default: each process's end).")
@click.option("--data", "data_spec", metavar="SPEC", help="Data to measure on (default: the checkpoint's held-out data or the oracle's law).")
@click.option("--samples", type=int, help="Monte Carlo samples per stratum (per node with --estimator grid) and process; with --target-stderr, those of the pilot round. Default 256, or 8 with --target-stderr.")
@click.option("--nodes", type=int, default=65, help="Time nodes of --estimator grid per process (odd for the simpson rule); giving it selects the grid.")
@click.option("--rule", type=click.Choice(["simpson", "trapezoid", "gauss", "trapezoid-t"]), default="simpson", help="Quadrature rule of --estimator grid (giving it selects the grid); all but trapezoid-t place nodes uniformly in log(σ/α).")
@click.option("--seed", type=int, default=0, callback=seed_option, help="Seed of the draws, shared by all processes (common random numbers).")
@click.option("--batch-size", type=BatchSize(), default="256", help="Network evaluations per batch, or auto to fill the memory budget (does not change the numbers).")
@click.option("--reference", "reference_dir", metavar="DIR", help="Oracle checkpoint with the exact data law; adds s_tot, score_error and kl_bound.")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N or auto.")
@click.option("--scheduler-config", "scheduler_config", metavar="FILE", help="scheduler_config.json the model was trained with (diffusers folders without their own scheduler).")
@click.option("--revision", metavar="REV", help="Branch, tag or commit of a hub id, read from the local cache.")
@click.option("--adapter", "adapter", metavar="MODULE:FUNCTION", help="Load CHECKPOINT with FUNCTION(source, **options) from an importable module.")
@click.option("--out", "out", required=True, metavar="RESULT.nc", help="NetCDF file to write (dimensions process and node).")
@click.option("--plot", "plot_path", metavar="RESULT.png", help="Also draw the rate curves of all processes, overlaid, to this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and exit.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@estimation_options
@click.pass_context
def compare_command(ctx, checkpoint, process_specs, t_min, t_max, data_spec, samples, nodes, rule, seed, batch_size, reference_dir, device, scheduler_config, revision, adapter, out, plot_path, overwrite, dry_run, progress, **estimation):
    """Measure CHECKPOINT under several forward processes on the same draws.

    One trained denoiser defines the network's excess score under every process whose noise
    range it covers. Each process is measured with the same seed, estimator and samples, and
    the results go to one NetCDF file with a process dimension. The estimator and its default
    are those of 'measure': importance sampling, or the grid when --nodes or --rule is given.

    Common random numbers: sample i of stratum (or node) k uses the same data item x_0, noise ε
    and, for importance sampling, the same uniform number under every process. The time it
    maps to differs, because each process has its own time range and its own proposal, built
    from that process's rate. With --target-stderr the sample counts of later rounds are
    chosen per process, so only the samples that both processes draw are shared.

    \b
    Examples:
      entropy-probe compare gmm3 --process vp --process vpx:kappa=0.1 --process sl:sigma0=0.1 --out gmm3.nc --plot gmm3.png
      entropy-probe compare google/ddpm-cifar10-32 --process ddpm --process vp --t-min 1e-2 --data npz:path=cifar.npz --out cifar.nc
    """
    from ..api import load_model, resolve_data, resolve_reference
    from ..compare import check_ranges, compare_processes, resolve_processes, summarize_comparison
    from ..probe import MeasureSettings, resolve_time_range
    from ..results import check_figure_path, check_output_path, write_dataset

    settings = MeasureSettings(
        t_min=t_min, t_max=t_max, nodes=nodes, seed=seed, rule=rule, batch_size=batch_size,
        device=check_device(device), progress=progress_enabled(ctx, progress), **settings_fields(samples, estimation, ctx),
    )
    settings.validate()
    check_output_path(out, overwrite, suffix=".nc")
    check_options_path(out, overwrite)
    if plot_path:
        check_figure_path(plot_path, overwrite, "--plot", out)

    processes = resolve_processes(list(process_specs))
    load_options = {key: value for key, value in (("scheduler_config", scheduler_config), ("revision", revision)) if value}
    model = load_model(checkpoint, adapter=adapter, **load_options)
    data = resolve_data(model, data_spec)
    reference = resolve_reference(model, data, reference_dir)
    check_ranges(model, processes, settings)
    options = {
        "checkpoint": checkpoint,
        "adapter": adapter,
        **load_options,
        "processes": [process.spec for process in processes],
        "time_ranges": {process.spec: list(resolve_time_range(process, settings)) for process in processes},
        "data": data.spec,
        "reference": reference_dir or ("data law" if reference is not None else None),
        **settings.record(),
        "out": out,
        "plot": plot_path,
    }
    if dry_run:
        click.echo(json.dumps(options, indent=2))
        return

    provenance = {"checkpoint": checkpoint, "checkpoint_sha256": model.fingerprint}
    dataset = compare_processes(model, processes, data, settings, reference=reference, provenance=provenance, progress_factory=tqdm_factory)
    write_dataset(dataset, out, overwrite=overwrite)
    save_options(out, "compare", options)
    if plot_path:
        from ..plots import plot_comparison

        plot_comparison(dataset, plot_path)
    click.echo(summarize_comparison(dataset))
    click.echo(f"\nwrote {out}" + (f" and {plot_path}" if plot_path else ""))
