"""`entropy-probe oracle`: write exact reference models as checkpoints."""

from __future__ import annotations

import click
import numpy as np

from . import cli
from .common import save_options, seed_option


@cli.group("oracle")
def oracle_group():
    """Write an exact oracle (Gaussian, Gaussian mixture or empirical law) as a checkpoint.

    The checkpoint directory (config.json + model.safetensors) is accepted by every command
    like a trained model; its exact score makes S_NN equal S_tot.
    """


def _write(oracle, out, overwrite, extra=None):
    from ..checkpoint import save_oracle

    save_oracle(oracle, out, overwrite=overwrite, extra=extra)
    context = click.get_current_context()
    save_options(out, context.command_path.split(" ", 1)[1], context.params)
    click.echo(f"wrote {oracle.kind} oracle (d = {oracle.dim}) to {out}")


@oracle_group.command("gaussian")
@click.option("--dim", type=int, default=2, help="Dimension d.")
@click.option("--mean", type=float, default=0.0, help="Mean of every coordinate.")
@click.option("--std", type=float, default=1.0, help="Standard deviation of every coordinate.")
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False), help=".npz with arrays mean and std (overrides --dim/--mean/--std).")
@click.option("--out", required=True, help="Checkpoint directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing directory.")
def gaussian_command(dim, mean, std, from_file, out, overwrite):
    """Gaussian data N(mean, diag(std²))."""
    from ..errors import DataError, SpecError, describe_npz_error
    from ..oracles import GaussianOracle

    if from_file:
        try:
            with np.load(from_file, allow_pickle=False) as arrays:
                mean_array, std_array = arrays["mean"], arrays["std"]
        except (OSError, KeyError, ValueError) as error:
            raise DataError(
                f"cannot read mean and std from {from_file!r}: {describe_npz_error(from_file, error)}; give an .npz of "
                f"numeric arrays mean and std"
            ) from None
    else:
        if dim < 1:
            raise SpecError(f"invalid --dim {dim}; it must be >= 1")
        mean_array, std_array = np.full(dim, mean), np.full(dim, std)
    _write(GaussianOracle(mean_array, std_array), out, overwrite)


@oracle_group.command("gmm")
@click.option("--dim", type=int, default=3, help="Dimension d.")
@click.option("--components", type=int, default=5, help="Number of components.")
@click.option("--side", type=float, default=4.0, help="Side of the centred cube the means are drawn in.")
@click.option("--std-min", type=float, default=0.5, help="Smallest isotropic component std.")
@click.option("--std-max", type=float, default=1.0, help="Largest isotropic component std.")
@click.option("--seed", type=int, default=0, callback=seed_option, help="Seed of the random mixture.")
@click.option("--from-file", "from_file", type=click.Path(dir_okay=False), help=".npz with arrays weights (K), means (K, d), stds (K, d) instead of the recipe.")
@click.option("--out", required=True, help="Checkpoint directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing directory.")
def gmm_command(dim, components, side, std_min, std_max, seed, from_file, out, overwrite):
    """Gaussian mixture with diagonal components, by default the Neural Entropy paper's recipe.

    The recipe draws means uniformly in a centred cube of side --side, isotropic stds uniformly
    in [--std-min, --std-max], and weights uniformly in [0, 1], normalised.
    """
    from ..errors import DataError, describe_npz_error
    from ..oracles import GaussianMixtureOracle, paper_mixture

    if from_file:
        try:
            with np.load(from_file, allow_pickle=False) as arrays:
                oracle = GaussianMixtureOracle(arrays["weights"], arrays["means"], arrays["stds"])
        except (OSError, KeyError, ValueError) as error:
            raise DataError(
                f"cannot read weights, means and stds from {from_file!r}: {describe_npz_error(from_file, error)}; give an .npz of numeric "
                f"arrays weights (K), means (K, d) and stds (K, d)"
            ) from None
    else:
        oracle = paper_mixture(dim, components, side, std_min, std_max, seed)
    _write(oracle, out, overwrite)


@oracle_group.command("empirical")
@click.option("--data", "data_spec", required=True, help="Data whose items become the points, e.g. mnist:n_c=10 or gmm:dim=2,n=100.")
@click.option("--out", required=True, help="Checkpoint directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing directory.")
def empirical_command(data_spec, out, overwrite):
    """Write the empirical law of a finite data set, the perfect memoriser of that set."""
    from ..data import from_spec
    from ..errors import DataError
    from ..oracles import EmpiricalOracle

    source = from_spec(data_spec)
    if not source.finite:
        raise DataError(f"data {data_spec!r} is a distribution without a fixed set of points; give a finite set (for gmm add n=N)")
    points, _ = source.get(np.arange(len(source)))
    oracle = EmpiricalOracle(points, tuple(source.shape))
    oracle.pixel_range = source.pixel_range
    oracle.quantization_step = source.quantization_step
    _write(oracle, out, overwrite, extra={"training_data": data_spec})
