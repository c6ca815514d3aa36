"""Figures of a combined reproduce Dataset (matplotlib Figure objects, Agg, atomic PNG writes).

Epochs studies (the mixtures): S_NN against epoch with the exact S_tot dashed, S_NN / S_tot,
rate curves at several epochs against the exact rate, generated samples per checkpoint.
Training-size studies (images): S_NN against N with the fitted log and power laws, rate curves
per N, S_NN, the cross-entropy bound and the training loss against epoch, generated images.
Where several seeds exist, lines show the mean over seeds and bars its standard error.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import xarray as xr

from .analysis import compare_growth_laws, growth_points, last_epoch, seed_mean
from .errors import OutputError
from .galleries import is_image_shape
from .plots import save_figure

logger = logging.getLogger(__name__)

TIME_LABEL = "diffusion time t (0 = data)"
RATE_LABEL = "entropy rate [nats per unit time]"


def plot_study(dataset: xr.Dataset, directory: str | Path) -> list[Path]:
    """Draw every figure of the study into `directory`; return the files written."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create figure directory {str(directory)!r}: {error.strerror}") from None
    if dataset.attrs.get("analysis") == "epochs":
        paths = [
            plot_s_nn_against_epoch(dataset, directory / "s_nn_vs_epoch.png"),
            plot_rates_by_epoch(dataset, directory / "rates.png"),
        ]
        if "s_tot" in dataset:
            paths.append(plot_fraction_against_epoch(dataset, directory / "s_nn_fraction.png"))
    else:
        paths = [
            plot_s_nn_against_size(dataset, directory / "s_nn_vs_n.png"),
            plot_rates_by_size(dataset, directory / "rates.png"),
            plot_training(dataset, directory / "training.png"),
        ]
    if "generated" in dataset:
        for process in _labels(dataset, "process"):
            if np.all(np.isnan(_select(dataset["generated"], process=process).values)):
                logger.info("no generated samples under process %s yet; no sample figure for it", process)
                continue
            paths.append(plot_generated(dataset, process, directory / f"samples_{process or 'all'}.png"))
    logger.info("wrote %d figures to %s", len(paths), directory)
    return paths


# --- helpers ----------------------------------------------------------------------------------

def _figure(rows: int, columns: int, width: float = 4.2, height: float = 3.3):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def _labels(dataset: xr.Dataset, dim: str) -> list[Any]:
    return list(dataset[dim].values) if dim in dataset.dims else [None]


def _select(array: xr.DataArray, **where: Any) -> xr.DataArray:
    return array.sel({k: v for k, v in where.items() if v is not None and k in array.dims})


def _reported(dataset: xr.Dataset) -> dict[str, Any]:
    try:
        return json.loads(dataset.attrs.get("reported", "{}"))
    except ValueError:
        return {}


def _title_suffix(dataset: xr.Dataset) -> str:
    return f"{dataset.attrs.get('recipe', '')}, scale {dataset.attrs.get('scale', '')}"


def _first(array: xr.DataArray, dims: tuple[str, ...]) -> xr.DataArray:
    """Take index 0 along the given dims when present (the first seed of a rate curve, ...)."""
    return array.isel({d: 0 for d in dims if d in array.dims})


def _time_axis(ax, ylabel: str = RATE_LABEL, log_y: bool = True) -> None:
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def _empty_panel(ax, title: str) -> None:
    """Mark a panel whose item has no finished measurement (a sweep still running or failed)."""
    ax.text(0.5, 0.5, "not measured yet", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def _colors(count: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.9, max(count, 1))]


# --- epochs studies ---------------------------------------------------------------------------

def plot_s_nn_against_epoch(dataset: xr.Dataset, path: Path) -> Path:
    """S_NN against epoch, one panel per (process, dim), with the exact S_tot dashed."""
    processes, dims = _labels(dataset, "process"), _labels(dataset, "dim")
    figure, axes = _figure(len(processes), len(dims))
    epochs = dataset["epoch"].values
    for row, process in enumerate(processes):
        for column, dim in enumerate(dims):
            ax = axes[row, column]
            s_nn = _select(dataset["s_nn"], process=process, dim=dim)
            if np.all(np.isnan(s_nn.values)):
                _empty_panel(ax, f"{process}, d = {dim}")
                continue
            for seed in _labels(dataset, "seed"):
                ax.plot(epochs, _select(s_nn, seed=seed).values, marker=".", linewidth=0.8, alpha=0.5, color="tab:blue")
            mean, spread = seed_mean(s_nn)
            ax.errorbar(epochs, mean.values, yerr=spread.values, marker="o", color="tab:blue", capsize=2, label="S_NN (network)")
            if "s_tot" in dataset:
                tot = _select(dataset["s_tot"], process=process, dim=dim)
                value = float(tot.mean())
                ax.axhline(value, linestyle="--", color="black", label=f"S_tot (exact law) = {value:.4g}")
            ax.set_xscale("log")
            ax.set_xlabel("training epoch")
            ax.set_ylabel("entropy [nats]")
            ax.set_title(f"{process}, d = {dim}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"Neural entropy during training ({_title_suffix(dataset)}); thin lines: seeds", fontsize=11)
    return save_figure(figure, path)


def plot_fraction_against_epoch(dataset: xr.Dataset, path: Path) -> Path:
    """S_NN / S_tot against epoch, one panel per process, one line per dimension."""
    processes, dims = _labels(dataset, "process"), _labels(dataset, "dim")
    figure, axes = _figure(1, len(processes))
    epochs = dataset["epoch"].values
    reported = _reported(dataset).get("s_nn_fraction_after_200_epochs", {})
    colors = _colors(len(dims))
    for column, process in enumerate(processes):
        ax = axes[0, column]
        for color, dim in zip(colors, dims):
            ratio = _select(dataset["s_nn"], process=process, dim=dim) / _select(dataset["s_tot"], process=process, dim=dim)
            mean, spread = seed_mean(ratio)
            ax.errorbar(epochs, mean.values, yerr=spread.values, marker="o", capsize=2, color=color, label=f"d = {dim}")
            paper = reported.get(str(process), {}).get(str(dim))
            if paper is not None:
                ax.plot([200], [paper], marker="*", markersize=11, color=color, linestyle="none")
        ax.axhline(1.0, linestyle="--", color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("training epoch")
        ax.set_ylabel("S_NN / S_tot [1]")
        ax.set_title(f"{process}" + ("  (stars: paper, 200 epochs)" if reported.get(str(process)) else ""), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(f"Fraction of the entropy production supplied by the network ({_title_suffix(dataset)})", fontsize=11)
    return save_figure(figure, path)


def plot_rates_by_epoch(dataset: xr.Dataset, path: Path) -> Path:
    """Rate curves Ṡ_NN(t) of the first seed at every measured epoch, with the exact Ṡ_tot(t)."""
    processes, dims = _labels(dataset, "process"), _labels(dataset, "dim")
    figure, axes = _figure(len(processes), len(dims))
    epochs = dataset["epoch"].values
    colors = _colors(len(epochs))
    for row, process in enumerate(processes):
        for column, dim in enumerate(dims):
            ax = axes[row, column]
            t = _first(_select(dataset["t"], process=process, dim=dim), ("seed",))
            rates = _first(_select(dataset["s_nn_rate"], process=process, dim=dim), ("seed",))
            if np.all(np.isnan(rates.values)):
                _empty_panel(ax, f"{process}, d = {dim}")
                continue
            positive = True
            for color, epoch in zip(colors, epochs):
                values = rates.sel(epoch=epoch).values
                if np.all(np.isnan(values)):
                    continue
                t_values = t.sel(epoch=epoch).values if "epoch" in t.dims else t.values
                positive &= bool(np.all(values[np.isfinite(values)] > 0))
                ax.plot(t_values, values, color=color, linewidth=1.2, label=f"Ṡ_NN, epoch {epoch}")
            if "s_tot_rate" in dataset:
                exact = _first(_select(dataset["s_tot_rate"], process=process, dim=dim), ("seed", "epoch"))
                t_values = t.isel(epoch=-1).values if "epoch" in t.dims else t.values
                ax.plot(t_values, exact.values, linestyle="--", color="black", linewidth=1.5, label="Ṡ_tot (exact law)")
            _time_axis(ax, log_y=positive)
            ax.set_title(f"{process}, d = {dim}", fontsize=10)
            ax.legend(fontsize=6, loc="best")
    figure.suptitle(f"Entropy rates during training, first seed ({_title_suffix(dataset)})", fontsize=11)
    return save_figure(figure, path)


# --- training-size studies --------------------------------------------------------------------

def plot_s_nn_against_size(dataset: xr.Dataset, path: Path) -> Path:
    """S_NN at the last epoch against N (log axis), with the fitted a + b ln N and c N^p."""
    figure, axes = _figure(1, 1, width=6.4, height=4.6)
    ax = axes[0, 0]
    size = "n_train" if "n_train" in dataset.coords else "n_c"
    reported = _reported(dataset).get("s_nn_nats", {})
    notes = []
    for index, process in enumerate(_labels(dataset, "process")):
        color = f"C{index}"
        _draw_size_points(ax, dataset, process, size, color)
        note = _draw_growth_fits(ax, dataset, process, color)
        if note:
            notes.append(note)
        paper = reported.get(str(process))
        if paper:
            ax.plot([float(k) for k in paper], list(paper.values()), marker="s", linestyle="none", color="gray",
                    markerfacecolor="none", label=f"{process}: paper (read off its figure)")

    ax.set_xscale("log")
    ax.set_xlabel(f"training images N [{dataset[size].attrs.get('units', '')}]")
    ax.set_ylabel("S_NN at the last epoch [nats]")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    if notes:
        ax.text(0.98, 0.02, "\n".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    figure.suptitle(f"Neural entropy against training-set size ({_title_suffix(dataset)}); 95 % intervals of b", fontsize=10)
    return save_figure(figure, path)


def _draw_size_points(ax, dataset: xr.Dataset, process, size: str, color: str) -> None:
    """Seed means of S_NN with bars combining the seed spread and the Monte Carlo error."""
    mean, spread = seed_mean(_select(last_epoch(dataset, "s_nn"), process=process))
    stderr = _select(last_epoch(dataset, "s_nn_stderr"), process=process)
    stderr_mean = stderr.mean("seed") if "seed" in stderr.dims else stderr
    errors = np.sqrt(spread.values**2 + stderr_mean.values**2)
    ax.errorbar(dataset[size].values, mean.values, yerr=errors, marker="o", linestyle="none", capsize=3, color=color,
                label=f"{process}: S_NN")


def _draw_growth_fits(ax, dataset: xr.Dataset, process, color: str) -> str:
    """Draw the log-law and power-law fits; return a line comparing them ('' for < 3 sizes)."""
    n_train, points, point_se = growth_points(dataset, process)
    finite = np.isfinite(points)
    if np.unique(n_train[finite]).size < 3:
        return ""
    comparison = compare_growth_laws(n_train, points, point_se)
    grid = np.geomspace(n_train[finite].min(), n_train[finite].max(), 200)
    log, power = comparison.log, comparison.power
    low, high = log.interval("b")
    ax.plot(grid, log.predict(grid), color=color, linewidth=1.5,
            label=f"{process}: a + b ln N, b = {log.value('b'):.3g} [{low:.3g}, {high:.3g}]")
    ax.plot(grid, power.predict(grid), color=color, linewidth=1, linestyle=":", label=f"{process}: c N^p, p = {power.value('p'):.3g}")
    return (
        f"{process}: RSS log {log.rss_unweighted:.3g}, power {power.rss_unweighted:.3g} nats²; "
        f"ΔAIC(power − log) = {comparison.delta_aic:.2g}"
    )


def plot_rates_by_size(dataset: xr.Dataset, path: Path) -> Path:
    """Rate curves Ṡ_NN(t) at the last epoch of each size, one panel per process."""
    processes = _labels(dataset, "process")
    figure, axes = _figure(1, len(processes), width=5.2, height=4.0)
    size = "n_train" if "n_train" in dataset.coords else "n_c"
    rates = last_epoch(dataset, "s_nn_rate")
    t_all = last_epoch(dataset, "t") if "epoch" in dataset["t"].dims else dataset["t"]
    for column, process in enumerate(processes):
        ax = axes[0, column]
        sizes = dataset[size].values
        colors = _colors(len(sizes))
        positive = True
        for color, n_c, n in zip(colors, dataset["n_c"].values if "n_c" in dataset.dims else sizes, sizes):
            values = _first(_select(rates, process=process, n_c=n_c), ("seed",)).values
            t = _first(_select(t_all, process=process, n_c=n_c), ("seed",)).values
            if np.all(np.isnan(values)):
                continue
            positive &= bool(np.all(values[np.isfinite(values)] > 0))
            ax.plot(t, values, color=color, label=f"N = {n:g}")
        _time_axis(ax, log_y=positive)
        ax.set_title(f"{process}: Ṡ_NN at the last epoch", fontsize=10)
        ax.legend(fontsize=7)
    figure.suptitle(f"Entropy rates by training-set size, first seed ({_title_suffix(dataset)})", fontsize=11)
    return save_figure(figure, path)


def plot_training(dataset: xr.Dataset, path: Path) -> Path:
    """S_NN, the cross-entropy bound and the training loss against epoch; rows are processes."""
    processes = _labels(dataset, "process")
    figure, axes = _figure(len(processes), 3, width=4.4, height=3.4)
    size = "n_train" if "n_train" in dataset.coords else "n_c"
    sizes = dataset[size].values
    n_cs = dataset["n_c"].values if "n_c" in dataset.dims else sizes
    colors = _colors(len(sizes))
    epochs = dataset["epoch"].values
    for row, process in enumerate(processes):
        panels = axes[row]
        for color, n_c, n in zip(colors, n_cs, sizes):
            label = f"N = {n:g}"
            for ax, name in ((panels[0], "s_nn"), (panels[1], "ce_bound_bpd")):
                values = _first(_select(dataset[name], process=process, n_c=n_c), ("seed",)).values
                keep = np.isfinite(values)
                ax.plot(epochs[keep], values[keep], marker="o", color=color, label=label)
            if "train_loss" in dataset:
                loss = _first(_select(dataset["train_loss"], process=process, n_c=n_c), ("seed",))
                keep = np.isfinite(loss.values)
                panels[2].plot(dataset["train_epoch"].values[keep], loss.values[keep], color=color, linewidth=0.8, marker=".", markersize=2, label=label)
        panels[0].set_ylabel("S_NN [nats]")
        panels[1].set_ylabel("cross-entropy bound [bits/dim]")
        units = dataset["train_loss"].attrs.get("units", "1") if "train_loss" in dataset else "1"
        panels[2].set_ylabel(f"training loss per item [{units}]")
        panels[2].set_yscale("log")
        for ax, title in zip(panels, ("neural entropy", "cross-entropy bound (held-out data)", "training loss (sigma2 weighting)")):
            ax.set_xscale("log")
            ax.set_xlabel("training epoch")
            ax.set_title(f"{process}: {title}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        panels[0].legend(fontsize=7)
    figure.suptitle(f"Training progress by training-set size, first seed ({_title_suffix(dataset)})", fontsize=11)
    return save_figure(figure, path)


# --- generated samples ------------------------------------------------------------------------

def plot_generated(dataset: xr.Dataset, process: Optional[str], path: Path, per_row: int = 8) -> Path:
    """Generated samples of every sampled checkpoint (first seed): images in rows, or scatters."""
    generated = _first(_select(dataset["generated"], process=process), ("seed",))
    shape = tuple(json.loads(dataset["generated"].attrs.get("item_shape", "[]")))
    other = [d for d in generated.dims if d not in ("epoch", "sample", "component")]
    checkpoints = []
    for index in np.ndindex(*[generated.sizes[d] for d in other]):
        where = dict(zip(other, index))
        for e, epoch in enumerate(dataset["epoch"].values):
            values = generated.isel(where).isel(epoch=e).values
            if np.all(np.isnan(values)):
                continue
            title = ", ".join(_coordinate_text(dataset, d, i) for d, i in where.items() if d in generated.coords)
            checkpoints.append((f"{title}, epoch {epoch}".lstrip(", "), values))
    if not checkpoints:
        raise OutputError("the Dataset has no generated samples to draw")
    if shape and is_image_shape(shape):
        per_row = min(per_row, dataset.sizes["sample"])
        return _image_rows(checkpoints, shape, dataset["generated"].attrs.get("pixel_range"), process, path, per_row)
    return _scatter_grid(dataset, checkpoints, process, path)


def _coordinate_text(dataset: xr.Dataset, dim: str, index: int) -> str:
    """Name a position on an axis, with its derived coordinates: 'n_c = 4 (n_train = 40)'."""
    text = f"{dim} = {dataset[dim].values[index]}"
    derived = [name for name, coord in dataset.coords.items() if coord.dims == (dim,) and name != dim]
    if derived:
        text += " (" + ", ".join(f"{name} = {dataset[name].values[index]}" for name in derived) + ")"
    return text


def _image_rows(checkpoints, shape, pixel_range_text, process, path, per_row) -> Path:
    from matplotlib.figure import Figure

    from .galleries import _as_image

    pixel_range = json.loads(pixel_range_text) if pixel_range_text else None
    figure = Figure(figsize=(1.0 * per_row + 2.2, 1.05 * len(checkpoints) + 0.5), layout="constrained")
    axes = figure.subplots(len(checkpoints), per_row, squeeze=False)
    for row, (title, values) in enumerate(checkpoints):
        for column in range(per_row):
            ax = axes[row, column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column < values.shape[0] and np.all(np.isfinite(values[column])):
                image = _as_image(values[column][: math.prod(shape)], shape, tuple(pixel_range) if pixel_range else None)
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    figure.suptitle(f"Generated samples under {process}, one row per checkpoint", fontsize=10)
    return save_figure(figure, path)


def _scatter_grid(dataset: xr.Dataset, checkpoints, process, path) -> Path:
    columns = min(len(checkpoints), 6)
    rows = math.ceil(len(checkpoints) / columns)
    figure, axes = _figure(rows, columns, width=2.8, height=2.8)
    for ax in axes.ravel()[len(checkpoints):]:
        ax.axis("off")
    for ax, (title, values) in zip(axes.ravel(), checkpoints):
        finite = values[:, : 2]
        ax.scatter(finite[:, 0], finite[:, 1], s=2, alpha=0.5)
        ax.set_title(title, fontsize=7)
        ax.set_xlabel("x[0] [data units]", fontsize=7)
        ax.set_ylabel("x[1] [data units]", fontsize=7)
        ax.tick_params(labelsize=6)
    figure.suptitle(f"Generated samples under {process} (first two coordinates), first seed", fontsize=10)
    return save_figure(figure, path)
