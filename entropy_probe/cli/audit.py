"""`entropy-probe audit`: does a checkpoint compress its training set or memorise it?"""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from . import cli
from .common import check_device, check_options_path, positive_int, progress_enabled, save_options, seed_option, tqdm_factory


@cli.command("audit")
@click.argument("checkpoint")
@click.option("--train", "train_spec", required=True, metavar="SPEC", help="The finite training set, e.g. mnist:n_c=10 or gmm:dim=5,n=50.")
@click.option("--heldout", "heldout_spec", required=True, metavar="SPEC", help="Held-out data of the same law, e.g. mnist:split=heldout.")
@click.option("--out", required=True, metavar="AUDIT.nc", help="NetCDF file to write.")
@click.option("--report", "report_path", metavar="AUDIT.png", help="Also draw the report figure to this PNG.")
@click.option("--process", "process_spec", metavar="SPEC", help="Forward process (default: the checkpoint's own).")
@click.option("--t-min", type=float, help="Start of the time range (default: the process's t_min).")
@click.option("--t-max", type=float, help="End T of the time range (default: the process's end).")
@click.option("--samples", type=int, default=256, callback=positive_int("--samples"), help="Monte Carlo samples per time node for S_NN and the ceiling.")
@click.option("--nodes", type=int, default=33, callback=positive_int("--nodes"), help="Time nodes, uniform in log(σ/α) (odd).")
@click.option("--items", type=int, default=256, callback=positive_int("--items"), help="Items per split for the per-item cross-entropy bounds.")
@click.option("--likelihood-items", type=click.IntRange(min=0), default=32, help="Items per split for the exact ODE likelihood (0 skips it; slow for memorisers).")
@click.option("--probes", type=int, default=1, callback=positive_int("--probes"), help="Hutchinson probe vectors per item.")
@click.option("--probe", type=click.Choice(["rademacher", "gaussian", "exact"]), default="rademacher", help="Probe distribution of the divergence estimate, or the exact trace.")
@click.option("--generate", type=int, default=256, callback=positive_int("--generate"), help="Samples generated for the near-copy search.")
@click.option("--sampler", type=click.Choice(["sde", "ode", "ode-adaptive"]), default="sde", help="Sampler of the generated samples.")
@click.option("--steps", type=int, default=256, callback=positive_int("--steps"), help="Sampler steps.")
@click.option("--copy-ratio", type=float, default=1.0 / 3.0, show_default=False, help="A sample is a near-copy when nearest/second-nearest training distance is below this [default: 1/3].")
@click.option("--seed", type=int, default=0, callback=seed_option, help="Seed of every random draw of the audit.")
@click.option("--batch-size", type=int, default=256, callback=positive_int("--batch-size"), help="Items per network evaluation batch.")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N or auto.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and exit.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.pass_context
def audit_command(ctx, checkpoint, train_spec, heldout_spec, out, report_path, process_spec, t_min, t_max, samples, nodes, items, likelihood_items, probes, probe, generate, sampler, steps, copy_ratio, seed, batch_size, device, overwrite, dry_run, progress):
    """Audit CHECKPOINT for memorisation of its training set.

    Compares S_NN with the memorisation ceiling (S_tot of the training set's empirical law).
    Compares the cross-entropy bound and the ODE likelihood of training items with those of
    held-out items. Finds the nearest training items of generated samples. Prints a verdict
    table with the threshold of every signal.

    \b
    Examples:
      entropy-probe audit mnist-unet-vp --train mnist:n_c=10 --heldout mnist:split=heldout --out audit.nc --report audit.png
      entropy-probe oracle empirical --data gmm:dim=5,n=50 --out memoriser
      entropy-probe audit memoriser --train gmm:dim=5,n=50 --heldout gmm:dim=5,n=500,sample_seed=9 --out audit.nc

    The checkpoint 'memoriser' is the exact denoiser of the empirical law of its 50 points,
    a perfect memoriser, so the second audit shows the verdict for memorisation.
    """
    from ..api import load_model, resolve_process
    from ..audit import AuditSettings, AuditThresholds, format_verdict, run_audit
    from ..data import from_spec
    from ..probe import resolve_time_range
    from ..results import check_figure_path, check_output_path, write_dataset

    settings = AuditSettings(
        t_min=t_min, t_max=t_max, samples=samples, nodes=nodes, items=items, likelihood_items=likelihood_items,
        probes=probes, probe=probe, generate=generate, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
        device=check_device(device), progress=progress_enabled(ctx, progress), thresholds=AuditThresholds(copy_ratio=copy_ratio),
    )
    settings.validate()
    check_output_path(out, overwrite, suffix=".nc")
    check_options_path(out, overwrite)
    if report_path:
        check_figure_path(report_path, overwrite, "--report", out)

    model = load_model(checkpoint)
    process = resolve_process(model, process_spec)
    train = from_spec(train_spec)
    heldout = from_spec(heldout_spec)
    resolved_t_min, resolved_t_max = resolve_time_range(process, settings.measure_settings())
    options = {
        "checkpoint": checkpoint, "train": train_spec, "heldout": heldout_spec, "process": process.spec,
        **asdict(settings), "t_min": resolved_t_min, "t_max": resolved_t_max, "out": out, "report": report_path,
    }
    if dry_run:
        click.echo(json.dumps(options, indent=2))
        return

    provenance = {"checkpoint": checkpoint, "checkpoint_sha256": model.fingerprint}
    dataset = run_audit(model, process, train, heldout, settings, provenance=provenance, progress_factory=tqdm_factory)
    write_dataset(dataset, out, overwrite=overwrite)
    save_options(out, "audit", options)
    if report_path:
        from ..galleries import plot_audit_report

        plot_audit_report(dataset, train, report_path, tuple(model.data_shape), model.pixel_range or train.pixel_range)
    click.echo(format_verdict(dataset))
    click.echo(f"\nwrote {out}" + (f" and {report_path}" if report_path else ""))
