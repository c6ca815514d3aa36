"""Figures of measurements (matplotlib, Agg backend, no global style changes)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import xarray as xr

from .filemodes import publish_file


def _figure(ncols: int, width: float = 5.2, height: float = 4.0):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = figure.subplots(1, ncols, squeeze=False)[0]
    return figure, axes


def save_figure(figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a figure through a temporary file and a rename."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".png", dir=directory)
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=dpi)
        publish_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _band(ax, t, mean, stderr, label, **style):
    line = ax.plot(t, mean, label=label, **style)[0]
    ax.fill_between(t, mean - 2 * stderr, mean + 2 * stderr, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def plot_measurement(dataset: xr.Dataset, path: str | Path) -> Path:
    """Rate curves Ṡ(t) on log axes (left) and the cumulative entropy (right)."""
    figure, (rates, cumulative) = _figure(2)
    t = dataset["t"].values
    _band(rates, t, dataset["s_nn_rate"].values, dataset["s_nn_rate_stderr"].values, "Ṡ_NN (network)")
    cumulative.plot(t, dataset["s_nn_cumulative"].values, label="S_NN from t_min to t")
    if "s_tot_rate" in dataset:
        _band(rates, t, dataset["s_tot_rate"].values, dataset["s_tot_rate_stderr"].values, "Ṡ_tot (exact)", linestyle="--")
        cumulative.plot(t, dataset["s_tot_cumulative"].values, linestyle="--", label="S_tot from t_min to t")
    rates.set_xscale("log")
    positive = dataset["s_nn_rate"].values > 0
    if positive.all():
        rates.set_yscale("log")
    rates.set_xlabel("diffusion time t (0 = data)")
    rates.set_ylabel("entropy rate [nats per unit time]")
    rates.legend(loc="best")
    rates.grid(True, which="both", alpha=0.3)
    cumulative.set_xscale("log")
    cumulative.set_xlabel("diffusion time t (0 = data)")
    cumulative.set_ylabel("cumulative entropy [nats]")
    cumulative.legend(loc="best")
    cumulative.grid(True, which="both", alpha=0.3)
    attrs = dataset.attrs
    s_nn = float(dataset["s_nn"])
    s_nn_se = float(dataset["s_nn_stderr"])
    title = f"{attrs.get('checkpoint', '')}  under {attrs.get('process', '')}\nS_NN = {s_nn:.4g} ± {s_nn_se:.2g} nats"
    if "s_tot" in dataset:
        title += f",  S_tot = {float(dataset['s_tot']):.4g} nats"
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)



def plot_comparison(dataset: xr.Dataset, path: str | Path) -> Path:
    """Rate curves of several processes overlaid on a log time axis, and their cumulative entropy.

    `dataset` is a result of `compare`: dimensions (process, node) with t(process, node).
    """
    figure, (rates, cumulative) = _figure(2)
    all_positive = True
    for index, spec in enumerate(dataset["process"].values):
        row = dataset.isel(process=index)
        t = row["t"].values
        rate = row["s_nn_rate"].values
        all_positive &= bool((rate > 0).all())
        line = _band(rates, t, rate, row["s_nn_rate_stderr"].values, f"Ṡ_NN  {spec}")
        cumulative.plot(t, row["s_nn_cumulative"].values, color=line.get_color(), label=f"S_NN  {spec}")
        if "s_tot_rate" in row:
            rates.plot(t, row["s_tot_rate"].values, color=line.get_color(), linestyle="--", linewidth=1, label=f"Ṡ_tot  {spec}")
            cumulative.plot(t, row["s_tot_cumulative"].values, color=line.get_color(), linestyle="--", linewidth=1)
    rates.set_xscale("log")
    if all_positive:
        rates.set_yscale("log")
    rates.set_xlabel("diffusion time t (0 = data)")
    rates.set_ylabel("entropy rate [nats per unit time]")
    rates.legend(loc="best", fontsize=7)
    rates.grid(True, which="both", alpha=0.3)
    cumulative.set_xscale("log")
    cumulative.set_xlabel("diffusion time t (0 = data)")
    cumulative.set_ylabel("cumulative entropy [nats]")
    cumulative.legend(loc="best", fontsize=7)
    cumulative.grid(True, which="both", alpha=0.3)
    figure.suptitle(f"{dataset.attrs.get('checkpoint', '')}: one model under {dataset.sizes['process']} processes (dashed: exact S_tot)", fontsize=10)
    return save_figure(figure, path)


def plot_result(result: str | Path, out: str | Path | None = None, overwrite: bool = False) -> list[Path]:
    """Redraw the figures of a result file of measure, compare or reproduce; return their paths.

    Without `out`, a single figure goes to RESULT.png and the figures of a reproduce result to
    the folder RESULT_figures. Existing files are kept unless `overwrite`.
    """
    from .errors import OutputError
    from .results import check_figure_path, read_dataset

    result = Path(result)
    if result.is_dir():
        raise OutputError(
            f"{str(result)!r} is a folder, not a result file; give a .nc file written by measure, compare or "
            f"reproduce (a reproduce run keeps it as combined.nc in its folder)"
        )
    if not result.is_file():
        raise OutputError(f"result file {str(result)!r} not found; give a .nc file written by measure, compare or reproduce")
    dataset = read_dataset(result)
    title = str(dataset.attrs.get("title", ""))
    if title == "entropy-probe reproduction":
        from .study_figures import plot_study

        directory = Path(out) if out else result.with_name(result.stem + "_figures")
        if directory.is_file():
            raise OutputError(f"output {str(directory)!r} is a file; a reproduce result needs a folder for its figures")
        existing = sorted(directory.glob("*.png")) if directory.is_dir() else []
        if existing and not overwrite:
            raise OutputError(f"folder {str(directory)!r} has figures already ({existing[0].name}, ...); pass --overwrite or choose another --out")
        return plot_study(dataset, directory)
    path = check_figure_path(out or result.with_suffix(".png"), overwrite, "--out")
    if title == "entropy-probe measurement":
        return [plot_measurement(dataset, path)]
    if title == "entropy-probe comparison of forward processes":
        return [plot_comparison(dataset, path)]
    raise OutputError(
        f"{str(result)!r} is not a result of measure, compare or reproduce (its title attribute is {title!r}); "
        f"give a file written by one of them"
    )
