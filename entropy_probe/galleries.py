"""Figures of samples and of memorisation audits (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import xarray as xr

from .data import DataSource
from .plots import save_figure


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """Return whether items of this shape draw as images: (H, W), or (C, H, W) with C = 1 or 3."""
    return (len(shape) == 2 and min(shape) > 1) or (len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) > 1)


def _as_image(item: np.ndarray, shape: tuple[int, ...], pixel_range: Optional[tuple[float, float]]) -> np.ndarray:
    """Convert an item to an (H, W) or (H, W, 3) array in [0, 1] for imshow."""
    image = np.asarray(item, dtype=np.float64).reshape(shape)
    if len(shape) == 3:
        image = image[0] if shape[0] == 1 else np.moveaxis(image, 0, -1)
    low, high = pixel_range if pixel_range else (float(image.min()), float(image.max()))
    if high <= low:
        high = low + 1.0
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def _show(ax, item, shape, pixel_range, title: str = "") -> None:
    image = _as_image(item, shape, pixel_range)
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def plot_sample_grid(
    x: np.ndarray,
    path: str | Path,
    pixel_range: Optional[tuple[float, float]] = None,
    labels: Optional[np.ndarray] = None,
    max_items: int = 64,
) -> Path:
    """Images in a square grid, or a scatter of the first two coordinates of vector samples."""
    from matplotlib.figure import Figure

    x = np.asarray(x)
    shape = tuple(x.shape[1:])
    if is_image_shape(shape):
        count = min(max_items, x.shape[0])
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        figure = Figure(figsize=(1.1 * columns, 1.1 * rows + 0.3), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False)
        for i, ax in enumerate(axes.ravel()):
            if i < count:
                _show(ax, x[i], shape, pixel_range, f"class {int(labels[i])}" if labels is not None else "")
            else:
                ax.axis("off")
        figure.suptitle(f"{count} of {x.shape[0]} samples", fontsize=9)
        return save_figure(figure, path)

    flat = x.reshape(x.shape[0], -1)
    figure = Figure(figsize=(5.0, 4.5), layout="constrained")
    ax = figure.subplots()
    if flat.shape[1] == 1:
        ax.hist(flat[:, 0], bins=50, density=True)
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    else:
        ax.scatter(flat[:, 0], flat[:, 1], s=4, alpha=0.5, c=labels if labels is not None else None)
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"{x.shape[0]} samples (d = {flat.shape[1]}; first two coordinates)" if flat.shape[1] > 1 else f"{x.shape[0]} samples")
    return save_figure(figure, path)


def plot_audit_report(dataset: xr.Dataset, train: DataSource, path: str | Path, data_shape: tuple[int, ...], pixel_range=None) -> Path:
    """Entropy against the ceiling, per-item bounds, the ratio histogram and suspicious pairs."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15.0, 8.0), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[1.0, 1.0])
    entropy_ax, bound_ax, ratio_ax = top.subplots(1, 3)
    _entropy_panel(entropy_ax, dataset)
    _bound_panel(bound_ax, dataset)
    _ratio_panel(ratio_ax, dataset)
    _pairs_panel(bottom, dataset, train, data_shape, pixel_range)
    figure.suptitle(f"memorisation audit: {dataset.attrs.get('verdict', '')}", fontsize=11)
    return save_figure(figure, path)


def _entropy_panel(ax, dataset: xr.Dataset) -> None:
    names = ["S_NN\ntraining", "S_NN\nheld-out", "ceiling\n(memoriser)"]
    keys = ["s_nn_train", "s_nn_heldout", "memorisation_ceiling"]
    values = [float(dataset[k]) for k in keys]
    errors = [2 * float(dataset[k + "_stderr"]) for k in keys]
    ax.bar(names, values, yerr=errors, color=["C0", "C1", "C3"], capsize=4)
    if min(values) > 0 and max(values) > 30 * min(values):
        ax.set_yscale("log")
    ax.set_ylabel("nats")
    ax.set_title(f"neural entropy; S_NN / ceiling = {float(dataset['ceiling_fraction']):.3g}", fontsize=9)


def _bound_panel(ax, dataset: xr.Dataset) -> None:
    labels, means, errors = [], [], []
    for prefix, what in (("ce_bound", "bound"), ("nll", "ODE NLL")):
        if f"{prefix}_bpd_train" not in dataset:
            continue
        for split in ("train", "heldout"):
            labels.append(f"{what}\n{'training' if split == 'train' else 'held-out'}")
            means.append(float(dataset[f"{prefix}_bpd_{split}"]))
            errors.append(2 * float(dataset[f"{prefix}_bpd_{split}_stderr"]))
    colours = ["C0", "C1"] * (len(labels) // 2)
    ax.bar(labels, means, yerr=errors, color=colours, capsize=4)
    ax.set_ylabel("bits/dim")
    ax.set_title(f"codelength of items (± 2 s.e.); gap {float(dataset['ce_gap_bpd']):.3g} bits/dim", fontsize=9)


def _ratio_panel(ax, dataset: xr.Dataset) -> None:
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(dataset["nn_ratio"].values, bins=bins, alpha=0.6, label="generated samples", density=True)
    ax.hist(dataset["heldout_nn_ratio"].values, bins=bins, alpha=0.6, label="held-out items", density=True)
    limit = float(dataset["copy_fraction"].attrs["copy_ratio"])
    ax.axvline(limit, color="k", linestyle="--", label=f"near-copy below {limit:.3g}")
    ax.set_xlabel("nearest / second-nearest training distance")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(
        f"near-copies: {float(dataset['copy_fraction']):.3f} of samples, {float(dataset['heldout_copy_fraction']):.3f} of held-out",
        fontsize=9,
    )


def _pairs_panel(subfigure, dataset: xr.Dataset, train: DataSource, data_shape, pixel_range) -> None:
    order = dataset["suspicious_sample"].values.astype(int)
    if order.size == 0:
        return
    samples = dataset["samples"].values
    nearest_index = dataset["nn_index"].values.astype(int)
    ratios = dataset["nn_ratio"].values
    neighbours, _ = train.get(nearest_index[order])
    neighbours = neighbours.reshape(order.size, -1).numpy()

    if is_image_shape(tuple(data_shape)):
        axes = subfigure.subplots(2, order.size, squeeze=False)
        for j, i in enumerate(order):
            _show(axes[0, j], samples[i], data_shape, pixel_range, f"sample {i}\nratio {ratios[i]:.3f}")
            _show(axes[1, j], neighbours[j], data_shape, pixel_range, f"training item {nearest_index[i]}")
        subfigure.suptitle("most suspicious samples (top) and their nearest training items (bottom)", fontsize=9)
        return

    ax = subfigure.subplots(1, 1)
    train_x, _ = train.get(np.arange(min(len(train), 5000)))
    train_flat = train_x.reshape(train_x.shape[0], -1).numpy()
    if train_flat.shape[1] == 1:
        train_flat = np.hstack([train_flat, np.zeros_like(train_flat)])
        samples = np.hstack([samples, np.zeros_like(samples)])
        neighbours = np.hstack([neighbours, np.zeros_like(neighbours)])

    ax.scatter(train_flat[:, 0], train_flat[:, 1], s=30, marker="x", color="C3", label="training items")
    ax.scatter(samples[:, 0], samples[:, 1], s=6, alpha=0.4, color="C0", label="generated samples")
    for j, i in enumerate(order):
        ax.plot([samples[i, 0], neighbours[j, 0]], [samples[i, 1], neighbours[j, 1]], color="k", linewidth=1)
        ax.annotate(f"{ratios[i]:.2f}", (samples[i, 0], samples[i, 1]), fontsize=7)
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")
    ax.legend(fontsize=8, loc="best")
    ax.set_title(
        "most suspicious samples joined to their nearest training items (labels: distance ratio; first two coordinates)",
        fontsize=9,
    )
