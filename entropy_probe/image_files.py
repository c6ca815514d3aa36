"""Image sets read from their standard distribution files: MNIST IDX files and CIFAR-10 batches.

Both sources take the options of the bundled MNIST digits: `n_c` (the first images of every
class, in file order), `split` and `range`. The range is [0, 1] with pixels k/255 (as in the
Neural Entropy paper) or [−1, 1] with pixels 2k/255 − 1, so the quantisation step Δ is 1/255 or
2/255. Nothing is downloaded: the files must already be on disk, and a missing or malformed
file is a DataError that names it.
"""

from __future__ import annotations

import functools
import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .data import ArraySource, DataSource, _pixel_range, check_n_c, derived_spec, first_per_class, register_source, scale_pixels
from .errors import DataError, SpecError
from .specs import Param

# --- MNIST IDX files -------------------------------------------------------------------------

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: IDX type codes (third byte of the magic number) and their big-endian NumPy types.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _find_file(directory: Path, name: str, spec: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"data directory {str(directory)!r} of {spec!r} has no {name} (or {name}.gz); "
        f"give the directory that holds the standard files"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array of its stored type and shape."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read IDX file {str(path)!r}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{str(path)!r} is not an IDX file (its first bytes are not an IDX magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {str(path)!r} is truncated inside its header")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file {str(path)!r} should hold {expected} bytes of data for shape {shape}, "
            f"but holds {len(raw) - header}; the file is truncated or corrupted"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


@functools.lru_cache(maxsize=2)
def _mnist_idx(directory: str, split: str, spec: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(directory)
    image_name, label_name = MNIST_FILES[split]
    images = read_idx(_find_file(root, image_name, spec))
    labels = read_idx(_find_file(root, label_name, spec))
    if images.ndim != 3 or images.dtype != np.dtype(">u1"):
        raise DataError(f"{image_name} in {directory!r} must hold 8-bit images of shape (N, H, W), not {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{label_name} in {directory!r} has {labels.shape} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{label_name} in {directory!r} has labels outside 0..9")
    return images[:, None].astype(np.uint8), labels.astype(np.int64)


def _check_directory(directory: str, spec: str, example: str) -> Path:
    if not directory:
        raise SpecError(f"data specification {spec!r} needs a directory: {example}")
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{str(path)!r} in {spec!r} is a file, but a data directory is expected; give the directory that contains the files ({example})")
    if not path.is_dir():
        raise DataError(f"data directory {str(path)!r} of {spec!r} not found; give an existing directory ({example})")
    return path


def _subset_source(images: np.ndarray, labels: np.ndarray, spec: str, values: dict[str, Any], heldout: str) -> DataSource:
    """Build a source of the first n_c images of every class (all when n_c is left out), scaled to the range."""
    check_n_c(spec, values["n_c"])
    indices = first_per_class(labels, values["n_c"], spec) if values["n_c"] else np.arange(labels.size)
    pixel_range, step = _pixel_range(spec, values["range"])
    source = ArraySource(
        scale_pixels(images[indices], pixel_range),
        labels[indices],
        spec=spec,
        pixel_range=pixel_range,
        quantization_step=step,
        num_classes=10,
    )
    source.heldout_spec = derived_spec(spec, split=heldout, n_c=None)
    return source


def _split_param(spec: str, split: str) -> str:
    if split not in ("train", "test"):
        raise SpecError(f"invalid split={split!r} in {spec!r}; use split=train or split=test")
    return split


_FILE_PARAMS = {
    "dir": Param("dir", str, "", "directory with the standard files"),
    "split": Param("split", str, "train", "train or test"),
    "n_c": Param("n_c", int, None, "first n_c images of every class, in file order (default: all)"),
    "range": Param("range", str, "01", "pixel range: 01 for [0, 1] (the paper) or pm1 for [−1, 1]"),
}


@register_source("mnist-idx", _FILE_PARAMS, "MNIST from the IDX files train-/t10k-images-idx3-ubyte and labels (optionally .gz)")
def _mnist_idx_source(spec: str, values: dict[str, Any]) -> DataSource:
    directory = _check_directory(values["dir"], spec, "'mnist-idx:dir=DIR'")
    split = _split_param(spec, values["split"])
    images, labels = _mnist_idx(str(directory), split, spec)
    return _subset_source(images, labels, spec, values, heldout="test")


# --- CIFAR-10 python batches -----------------------------------------------------------------

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCHES = ("test_batch",)

#: The only globals a CIFAR-10 batch may reference. The batches are pickled dicts of strings,
#: lists of ints and one uint8 NumPy array. An array pickles as a call of NumPy's array
#: reconstructor (`_reconstruct` for protocols 2 to 4, `_frombuffer` for protocol 5) with the
#: classes `ndarray` and `dtype`. NumPy 2 moved `numpy.core` to `numpy._core`, so both module
#: names appear. Python 3 writes `bytes` in protocol 2 through `_codecs.encode`. None of these
#: can run code or touch files. Every other global is rejected, which makes a hostile pickle
#: fail before it can run anything.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        with open(path, "rb") as handle:
            # latin1 turns the byte strings of batches written by Python 2 into the str that
            # NumPy expects for array data.
            batch = _RestrictedUnpickler(handle, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataError(f"cannot read CIFAR-10 batch {str(path)!r}: {error}") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 batch {str(path)!r} contains a {type(batch).__name__}, not a dict")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data = batch.get("data")
    labels = batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        description = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR-10 batch {str(path)!r}: 'data' must be a uint8 array of shape (N, 3072), not {description}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != data.shape[0]:
        raise DataError(f"CIFAR-10 batch {str(path)!r}: 'labels' must list one label for each of the {data.shape[0]} images")
    labels = np.asarray(labels)
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 batch {str(path)!r}: labels must be integers 0..9")
    # Each row has the 1024 red, then green, then blue values of a 32 × 32 image, row-major.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _cifar10(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(directory)
    names = CIFAR_TRAIN_BATCHES if split == "train" else CIFAR_TEST_BATCHES
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 directory {directory!r} lacks {', '.join(missing)}; give the "
            f"cifar-10-batches-py directory with data_batch_1..5 and test_batch"
        )
    parts = [read_cifar_batch(root / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@register_source("cifar10", _FILE_PARAMS, "CIFAR-10 from the python batches of cifar-10-batches-py")
def _cifar10_source(spec: str, values: dict[str, Any]) -> DataSource:
    directory = _check_directory(values["dir"], spec, "'cifar10:dir=DIR'")
    split = _split_param(spec, values["split"])
    images, labels = _cifar10(str(directory), split)
    return _subset_source(images, labels, spec, values, heldout="test")
