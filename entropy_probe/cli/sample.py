"""`entropy-probe sample`: draw samples from a checkpoint under any process."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from . import cli
from .common import check_device, check_options_path, positive_int, progress_enabled, save_options, seed_option, tqdm_factory


def parse_labels(text: str | None) -> list[int] | None:
    """`3` or `0,1,2` to a list of class labels."""
    from ..errors import SpecError

    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SpecError(f"invalid --labels {text!r}; give class numbers separated by commas, for example 0,1,2") from None


def second_moment_if_needed(model, process, t_max, data_spec):
    """E|x_0|² for a moment-matched prior, from --data, the oracle or the checkpoint's data."""
    from ..api import resolve_data

    if float(process.f(t_max)) < 0:
        return None
    return resolve_data(model, data_spec).second_moment()


@cli.command("sample")
@click.argument("checkpoint")
@click.option("-n", "--num-samples", "n", type=int, default=64, callback=positive_int("-n"), help="Number of samples.")
@click.option("--out", required=True, metavar="SAMPLES.npz", help="NumPy .npz file to write: arrays x (N, ...), evaluations, labels (class-conditional models only) and JSON metadata.")
@click.option("--grid", "grid_path", metavar="SAMPLES.png", help="Also draw the samples (an image grid, or a scatter of the first two coordinates).")
@click.option("--process", "process_spec", metavar="SPEC", help="Forward process, e.g. vp:beta_min=0.1,beta_max=16 (default: the checkpoint's own).")
@click.option("--sampler", type=click.Choice(["sde", "ode", "ode-adaptive"]), default="sde", help="Reverse SDE (Euler–Maruyama), probability-flow ODE (Heun) or adaptive ODE (Dormand–Prince).")
@click.option("--steps", type=int, default=256, callback=positive_int("--steps"), help="Steps of sde and ode, uniform in log(σ/α); ignored by ode-adaptive.")
@click.option("--seed", type=int, default=0, callback=seed_option, help="Seed; sample i depends only on the seed and i, not on the batch size.")
@click.option("--labels", "labels_text", metavar="C[,C...]", help="Classes of a class-conditional model, repeated in turn (default: 0, 1, 2, … cyclically).")
@click.option("--t-min", type=float, help="Time where sampling ends (default: the process's t_min).")
@click.option("--t-max", type=float, help="Time T where sampling starts from the prior (default: the process's end).")
@click.option("--denoise/--no-denoise", default=True, help="Finish with the denoiser's estimate of x_0 at t_min.")
@click.option("--rtol", type=float, default=1e-5, help="Relative tolerance of ode-adaptive.")
@click.option("--atol", type=float, default=1e-5, help="Absolute tolerance of ode-adaptive, in data units.")
@click.option("--data", "data_spec", metavar="SPEC", help="Data whose second moment sets the prior when the process has no equilibrium law at T (ve).")
@click.option("--batch-size", type=int, default=256, callback=positive_int("--batch-size"), help="Samples integrated at once (does not change the samples).")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N or auto.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and exit.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.pass_context
def sample_command(ctx, checkpoint, n, out, grid_path, process_spec, sampler, steps, seed, labels_text, t_min, t_max, denoise, rtol, atol, data_spec, batch_size, device, overwrite, dry_run, progress):
    """Draw N samples from CHECKPOINT through the entropy-matching drift.

    The reverse SDE dx = [f x + g² e_θ] dτ + g dB̄ or the probability-flow ODE
    dx/dτ = (g²/2) e_θ runs from the prior at T down to t_min (τ = T − t).

    \b
    Examples:
      entropy-probe sample gmm3 -n 1000 --out gmm3_samples.npz --grid gmm3.png
      entropy-probe sample mnist-unet-vp -n 64 --sampler ode --steps 64 --out digits.npz --grid digits.png
    """
    from ..api import load_model, resolve_process
    from ..results import check_figure_path, check_output_path
    from ..sampling import SamplerSettings, sample, save_samples

    settings = SamplerSettings(
        sampler=sampler, steps=steps, seed=seed, t_min=t_min, t_max=t_max, denoise=denoise, batch_size=batch_size,
        rtol=rtol, atol=atol, device=check_device(device), progress=progress_enabled(ctx, progress),
    )
    settings.validate()
    labels = parse_labels(labels_text)
    check_output_path(out, overwrite, suffix=".npz")
    check_options_path(out, overwrite)
    if grid_path:
        check_figure_path(grid_path, overwrite, "--grid", out)

    model = load_model(checkpoint)
    process = resolve_process(model, process_spec)
    resolved_t_max = process.default_t_max if t_max is None else t_max
    resolved_t_min = process.default_t_min if t_min is None else t_min
    process.check_time_range(resolved_t_min, resolved_t_max)
    second_moment = second_moment_if_needed(model, process, resolved_t_max, data_spec)
    options = {
        "checkpoint": checkpoint, "n": n, "process": process.spec, "labels": labels, "data": data_spec,
        **asdict(settings), "t_min": resolved_t_min, "t_max": resolved_t_max, "out": out, "grid": grid_path,
    }
    if dry_run:
        click.echo(json.dumps(options, indent=2))
        return

    result = sample(model, process, n, settings, labels=labels, second_moment=second_moment, progress_factory=tqdm_factory)
    save_samples(result, out, overwrite=overwrite, extra={"checkpoint": checkpoint, "checkpoint_sha256": model.fingerprint})
    save_options(out, "sample", options)
    if grid_path:
        from ..galleries import plot_sample_grid

        plot_sample_grid(result.x.numpy(), grid_path, model.pixel_range, None if result.labels is None else result.labels.numpy())
    flat = result.x.reshape(n, -1)
    click.echo(
        f"{n} samples of shape {tuple(model.data_shape)} from {checkpoint} under {process.spec}, "
        f"{settings.sampler} sampler, t from {result.t_max:g} to {result.t_min:g}, prior: {result.prior.kind}"
    )
    click.echo(
        f"denoiser evaluations: {int(result.evaluations.sum())} ({result.evaluations.mean():.1f} per sample); "
        f"sample mean over all coordinates {float(flat.mean()):.4g}, std {float(flat.std()):.4g}"
    )
    click.echo(f"wrote {out}" + (f" and {grid_path}" if grid_path else ""))
