"""`entropy-probe train`: train an entropy-matching network (mixture MLP or U-Net)."""

from __future__ import annotations

import json
import logging

import click

from .. import distributed, interrupts
from . import cli
from .common import check_device, progress_enabled, save_options, seed_option

logger = logging.getLogger("entropy_probe")


def _int_list(ctx, param, value):
    """Parse '5,10,20' into [5, 10, 20]; None stays None."""
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return []
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 32,64,64") from None


#: Options that belong to the network and go into TrainSettings.network.
NETWORK_OPTIONS = (
    "widths", "fourier_features", "fourier_scale", "time_fourier_scale", "preset", "channels", "layers_per_block",
    "attention", "mid_attention", "dropout", "norm_groups", "class_conditional", "input_scaling", "output_scaling",
)
#: CLI parameter names that map to TrainSettings fields of another name.
SETTINGS_FIELDS = {"model": "architecture", "data_spec": "data", "process_spec": "process"}


@cli.command("train")
@click.option("--model", type=click.Choice(["auto", "mlp", "unet"]), default="auto", help="Network: the mixture MLP, a U-Net (diffusers UNet2DModel), or auto: unet for images, mlp otherwise.")
@click.option("--data", "data_spec", metavar="SPEC", help="Training data, e.g. mnist:n_c=10, digits:n_c=10, gmm:dim=3,n=8192, mnist-idx:dir=DIR, cifar10:dir=DIR.")
@click.option("--process", "process_spec", default="vp", metavar="SPEC", help="Forward process, e.g. vp, sl:sigma0=0.1, vpx:kappa=0.1.")
@click.option("--out", "out", required=True, metavar="DIR", help="Run directory: checkpoints, resume state and loss log.")
@click.option("--epochs", type=int, default=100, help="Number of passes over the training data.")
@click.option("--batch-size", type=int, default=32, help="Training items per step (before the noise draws).")
@click.option("--lr", type=float, default=1e-4, help="Adam learning rate.")
@click.option("--save-epochs", callback=_int_list, metavar="E1,E2,...", help="Epochs after which a checkpoint DIR/epoch-NNNN is kept (default 5, 10, 20, 50, 100, ...; the last epoch always).")
@click.option("--noise-draws", type=int, help="Noise draws (t, ε) per item and step [default: 10 for mlp, 1 for unet].")
@click.option("--weighting", type=click.Choice(["sigma2", "likelihood"]), default="sigma2", help="Loss weighting over t: E|σe+σkx+ε|² (the paper's) or (g²/2)|e−s_c|².")
@click.option("--ema", type=float, default=0.0, help="Decay of the exponential moving average of the weights saved in checkpoints (0 = none).")
@click.option("--seed", type=int, default=0, callback=seed_option, help="Seed of the initial weights, data order, times and noise.")
@click.option("--t-min", type=float, help="Smallest training time [default: 1e-5]; the model is valid from here on.")
@click.option("--t-max", type=float, help="Largest training time [default: the process's T].")
@click.option("--epoch-size", type=int, default=8192, help="Items per epoch for data without a fixed size (fresh draws of a law).")
@click.option("--widths", callback=_int_list, metavar="W1,W2,...", help="MLP hidden widths [default: 512,256].")
@click.option("--fourier-features", type=int, help="MLP random Fourier frequencies for x and for t [default: 256].")
@click.option("--fourier-scale", type=float, help="Standard deviation of the MLP's x frequencies [default: 0.1].")
@click.option("--time-fourier-scale", type=float, help="Standard deviation of the MLP's t frequencies [default: 0.1].")
@click.option("--preset", type=click.Choice(["mnist", "cifar"]), help="U-Net size: mnist (32,64,64 channels, ~1 M parameters) or cifar (the paper's CIFAR-10 net) [default: mnist].")
@click.option("--channels", callback=_int_list, metavar="C1,C2,...", help="U-Net channels per resolution level, e.g. 32,64,64.")
@click.option("--layers-per-block", type=int, help="U-Net residual blocks per level.")
@click.option("--attention", callback=_int_list, metavar="R1,R2,...", help="Resolutions (pixels) of U-Net levels with self-attention, e.g. 16,8; 'none' is an empty list.")
@click.option("--mid-attention/--no-mid-attention", default=None, help="Self-attention in the U-Net's middle block.")
@click.option("--dropout", type=float, help="U-Net dropout probability.")
@click.option("--norm-groups", type=int, help="U-Net GroupNorm groups [default: the largest of 32, 16, ... leaving 4 channels per group].")
@click.option("--class-conditional", is_flag=True, default=None, help="Condition the U-Net on the data's class labels.")
@click.option("--input-scaling", type=click.Choice(["none", "rms"]), help="Divide x_t by its RMS sqrt(α²m+σ²) before the network [default: none for mlp, rms for unet].")
@click.option("--output-scaling", type=click.Choice(["none", "inverse_sigma"]), help="e_θ = output (none) or output/σ (inverse_sigma) [default: none for mlp, inverse_sigma for unet].")
@click.option("--device", default="auto", help="cpu, cuda, cuda:N or auto.")
@click.option("--resume", is_flag=True, help="Continue the run saved in DIR (its settings win; --epochs may grow).")
@click.option("--overwrite", is_flag=True, help="Delete an existing run in DIR and start again.")
@click.option("--dry-run", is_flag=True, help="Print the resolved settings and the network size, then exit.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.pass_context
def train_command(ctx, **options):
    """Train an entropy-matching diffusion model: the network outputs the excess score e_θ.

    The run directory DIR is itself a checkpoint of the last saved epoch, so
    'entropy-probe measure DIR' measures it. DIR/epoch-NNNN contains earlier epochs,
    DIR/loss.jsonl the loss of every epoch and DIR/train-state what --resume needs. The state is
    saved after every epoch. A run continued with --resume repeats its unfinished epoch and ends
    with the same weights as an uninterrupted run (on the CPU).

    \b
    Examples:
      entropy-probe train --model unet --data digits:n_c=10 --epochs 50 --out runs/digits10
      entropy-probe measure runs/digits10 --out digits10.nc --plot digits10.png
      entropy-probe train --model mlp --data gmm:dim=3,n=8192 --process vp --epochs 20 --out runs/gmm3
      entropy-probe train --model unet --preset cifar --class-conditional --data cifar10:dir=cifar-10-batches-py,n_c=100 --lr 2e-4 --out runs/cifar100
      torchrun --nproc-per-node 4 -m entropy_probe train --model unet --data mnist --device cuda --out runs/mnist

    Under torchrun the ranks split every batch (DistributedDataParallel) and rank 0 alone
    prints and writes.
    """
    from pathlib import Path

    from ..errors import OutputError
    from ..train import TrainSettings, io, train
    from ..train.loop import Trainer

    out = options["out"]
    run = distributed.init_from_environment(check_device(options["device"]))
    ctx.call_on_close(distributed.shutdown)
    distributed.silence_unless_main(run, keep_stderr=bool(ctx.obj and ctx.obj.get("debug")))
    explicit = {
        SETTINGS_FIELDS.get(name, name)
        for name in options
        if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
    }
    network = {name: options[name] for name in NETWORK_OPTIONS if options[name] is not None}
    if not network.get("class_conditional"):
        network.pop("class_conditional", None)
    if network:
        explicit.add("network")
    settings = TrainSettings(
        architecture=options["model"],
        data=options["data_spec"] or "",
        process=options["process_spec"],
        epochs=options["epochs"],
        batch_size=options["batch_size"],
        lr=options["lr"],
        save_epochs=options["save_epochs"] or [],
        noise_draws=options["noise_draws"],
        weighting=options["weighting"],
        ema=options["ema"],
        seed=options["seed"],
        t_min=options["t_min"],
        t_max=options["t_max"],
        epoch_size=options["epoch_size"],
        network=network,
        device=run.device,
        progress=progress_enabled(ctx, options["progress"]),
    )
    # Device and progress describe this machine, not the run, so they always apply.
    explicit |= {"device", "progress"}

    if options["dry_run"]:
        from ..train.networks import count_parameters

        trainer = Trainer(settings, out)
        record = {
            "settings": trainer.settings.record(),
            "checkpoint_epochs": sorted(trainer.settings.checkpoint_epochs()),
            "items_per_epoch": trainer.items_per_epoch,
            "steps_per_epoch": trainer.steps_per_epoch,
            "parameters": count_parameters(trainer.network.core),
            "network": trainer.checkpoint_config()["network"],
            "preconditioning": trainer.preconditioning.describe(),
        }
        click.echo(json.dumps(record, indent=2, default=str))
        return

    if not options["resume"] and not settings.data:
        raise click.UsageError("missing --data SPEC (for example --data digits:n_c=10)")
    if options["resume"] and io.find_state(Path(out)) is None and not _has_files(Path(out)):
        raise OutputError(f"--resume was given, but {out!r} contains no training run to continue; run without --resume to start a new one")
    def record_options(trainer) -> None:
        # Written before the first step, so an interrupted run folder records how it was started.
        save_options(out, "train", {**options, "resolved": trainer.settings.record()})

    with interrupts.catch_signals():
        try:
            trainer = train(
                settings, out, resume=options["resume"], overwrite=options["overwrite"], explicit=explicit, on_start=record_options,
            )
        except KeyboardInterrupt:
            raise _interrupted(out) from None
    if not run.is_main:
        return
    last = trainer.history[-1] if trainer.history else None
    if last is not None:
        click.echo(f"epoch {last['epoch']}: loss {last['loss']:.6g} ({trainer.settings.weighting} weighting)")
    click.echo(f"wrote {out} (checkpoint of epoch {trainer.epoch}); measure it with: entropy-probe measure {out} --out RESULT.nc")


def _has_files(folder) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _interrupted(out: str) -> Exception:
    """Build the error of an interrupted training run: what was saved and how to continue."""
    from pathlib import Path

    from ..train import io

    state = io.find_state(Path(out))
    if state is None:
        return interrupts.interrupted("train was interrupted before its first epoch ended; nothing was saved; run the same command with --overwrite to start again")
    epoch = io.read_config(state).get("epoch", "?")
    return interrupts.interrupted(
        f"train was interrupted; the state after epoch {epoch} is saved in {str(state)!r}; run the same command "
        f"with --resume to continue (the unfinished epoch is repeated)"
    )
