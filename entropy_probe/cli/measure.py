"""`entropy-probe measure`: the main job."""

from __future__ import annotations

import json
import logging

import click

from .. import distributed, interrupts, measure_state
from . import cli
from .common import check_device, check_options_path, progress_enabled, save_options, seed_option, tqdm_factory
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
@click.option("--seed", type=int, default=0, callback=seed_option, help="Seed of the draws; equal seeds give common random numbers across models and processes.")
@click.option("--batch-size", type=BatchSize(), default="256", help="Network evaluations per batch, or auto to fill the memory budget (does not change the numbers).")
@click.option("--reference", "reference_dir", metavar="DIR", help="Oracle checkpoint with the exact data law; adds s_tot, score_error and kl_bound.")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N or auto.")
@click.option("--scheduler-config", "scheduler_config", metavar="FILE", help="scheduler_config.json the model was trained with (diffusers folders without their own scheduler).")
@click.option("--revision", metavar="REV", help="Branch, tag or commit of a hub id, read from the local cache.")
@click.option("--adapter", "adapter", metavar="MODULE:FUNCTION", help="Load CHECKPOINT with FUNCTION(source, **options) from an importable module.")
@click.option("--out", "out", required=True, metavar="RESULT.nc", help="NetCDF file to write.")
@click.option("--plot", "plot_path", metavar="RESULT.png", help="Also draw the rate curves and cumulative entropy to this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files (and the saved state of an interrupted run).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run whose state RESULT.nc.partial.npz was saved beside --out; the same options give the same numbers as an uninterrupted run.")
@click.option("--save-every", type=click.FloatRange(min=0), default=60.0, metavar="SECONDS", help="Save the resumable state at most this often (0: after every batch); Ctrl-C and SIGTERM save it too.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and exit.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@estimation_options
@click.pass_context
def measure_command(ctx, checkpoint, process_spec, t_min, t_max, data_spec, samples, nodes, rule, seed, batch_size, reference_dir, device, scheduler_config, revision, adapter, out, plot_path, overwrite, resume, save_every, dry_run, progress, **estimation):
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

    Ctrl-C or SIGTERM saves the sums so far to RESULT.nc.partial.npz (also saved every
    --save-every seconds); the same command with --resume continues from there. Runs with
    --target-stderr and runs under torchrun cannot be resumed.
    """
    from ..errors import OutputError, SpecError
    from ..probe import MeasureSettings
    from ..results import check_figure_path, check_output_path

    if checkpoint is not None and not checkpoint.strip():
        raise SpecError(
            f"invalid CHECKPOINT {checkpoint!r}: the name is empty; give a checkpoint directory, a catalog name or a "
            f"hub id, or leave it out to measure the default model {DEFAULT_CHECKPOINT}"
        )
    checkpoint = checkpoint or DEFAULT_CHECKPOINT
    run = distributed.init_from_environment(check_device(device))
    ctx.call_on_close(distributed.shutdown)
    distributed.silence_unless_main(run, keep_stderr=bool(ctx.obj and ctx.obj.get("debug")))
    settings = MeasureSettings(
        t_min=t_min, t_max=t_max, nodes=nodes, seed=seed, rule=rule, batch_size=batch_size,
        device=run.device, progress=progress_enabled(ctx, progress), **settings_fields(samples, estimation, ctx),
    )
    settings.validate()
    check_output_path(out, overwrite, suffix=".nc")
    check_options_path(out, overwrite)
    if plot_path:
        check_figure_path(plot_path, overwrite, "--plot", out)
    state = measure_state.state_path(out)
    resumable = settings.target_stderr is None and not run.distributed
    if resume and not resumable:
        raise SpecError("--resume works for a fixed number of samples in a single process; leave out --target-stderr and torchrun, or --resume")
    if state.exists() and not (resume or overwrite):
        raise OutputError(
            f"an interrupted run of this measurement saved its state in {str(state)!r}; pass --resume to "
            f"continue it, or --overwrite to start again"
        )
    with interrupts.catch_signals():
        try:
            _measure(
                ctx, checkpoint, process_spec, data_spec, reference_dir, scheduler_config, revision, adapter,
                out, plot_path, overwrite, resume, save_every, dry_run, settings, run, resumable,
            )
        except KeyboardInterrupt:
            again = "the same command with --resume" if resume else "it again"
            raise interrupts.interrupted(f"measure was interrupted before its first batch ended; no new state was saved; run {again}") from None


def _measure(
    ctx, checkpoint, process_spec, data_spec, reference_dir, scheduler_config, revision, adapter,
    out, plot_path, overwrite, resume, save_every, dry_run, settings, run, resumable,
):
    """Load the model, measure it (resuming or saving a state when `resumable`) and write the result."""
    from ..api import load_model, resolve_data, resolve_process, resolve_reference
    from ..probe import measure, resolve_time_range, summarize
    from ..results import write_dataset

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
        **settings.record(),
        "t_min": resolved_t_min,
        "t_max": resolved_t_max,
        "out": out,
        "plot": plot_path,
    }
    if dry_run:
        click.echo(json.dumps(options, indent=2))
        return

    provenance = {"checkpoint": checkpoint, "checkpoint_sha256": model.fingerprint}
    saver = None
    resumed = {}
    if resumable and run.is_main:
        deciding = {
            **options,
            "model_fingerprint": model.fingerprint,
            "reference_fingerprint": reference.fingerprint if reference is not None else None,
        }
        cells = settings.nodes if settings.estimator == "grid" else settings.strata
        state = measure_state.state_path(out)
        if resume:
            sums, done = measure_state.load(state, deciding)
            resumed = {"sums": sums, "first_item": done}
            logger.info("resuming %s after %d of %d samples", out, done, cells * settings.samples)
        saver = measure_state.StateSaver(state, deciding, cells * settings.samples, save_every, resumed.get("first_item", 0))
    try:
        dataset = measure(
            model, process, data, settings, reference=reference, provenance=provenance, progress_factory=tqdm_factory,
            context=run, on_batch=saver, **resumed,
        )
    except KeyboardInterrupt:
        if saver is None:
            raise interrupts.interrupted("measure was interrupted; runs with --target-stderr or torchrun cannot be resumed, so nothing was saved") from None
        try:
            saver.flush()
        except KeyboardInterrupt:
            pass  # a second signal arrived during the save, which completed
        if saver.saved == 0:
            raise interrupts.interrupted("measure was interrupted before the first batch ended; nothing was saved; run it again") from None
        raise interrupts.interrupted(
            f"measure was interrupted after {saver.saved} of {saver.samples} samples; the state is saved in "
            f"{str(saver.path)!r}; run the same command with --resume to continue"
        ) from None
    if not run.is_main:
        return
    with interrupts.deferred():
        write_dataset(dataset, out, overwrite=overwrite)
        save_options(out, "measure", options)
        if plot_path:
            from ..plots import plot_measurement

            plot_measurement(dataset, plot_path)
        if saver is not None:
            saver.remove()
    click.echo(summarize(dataset))
    click.echo(f"\nwrote {out}" + (f" and {plot_path}" if plot_path else ""))
