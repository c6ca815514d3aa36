"""Result Datasets: units in attributes, provenance, atomic NetCDF files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

from .errors import OutputError
from .filemodes import publish_file

NATS = "nats"
RATE = "nats per unit time"


def clean_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Make attributes storable in NetCDF: dicts and lists become JSON, None and bools text."""
    cleaned: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            cleaned[key] = "none"
        elif isinstance(value, bool):
            cleaned[key] = "true" if value else "false"
        elif isinstance(value, (dict, list, tuple)):
            cleaned[key] = json.dumps(value, default=_json_value)
        elif isinstance(value, (np.floating, np.integer)):
            cleaned[key] = value.item()
        elif isinstance(value, (Path, str)):
            # str() also turns str subclasses such as torch.__version__ into plain text,
            # which h5py cannot store otherwise.
            cleaned[key] = str(value)
        else:
            cleaned[key] = value
    return cleaned


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def check_output_path(path: str | Path, overwrite: bool, suffix: str | None = None) -> Path:
    """Reject an existing output unless `overwrite`, a missing folder, and a name without `suffix` if given."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output {str(path)!r} is a directory; give a file name such as result.nc")
    if suffix is not None and path.suffix.lower() != suffix:
        written = {".nc": "a NetCDF file", ".npz": "a NumPy .npz archive"}.get(suffix, f"a {suffix} file")
        raise OutputError(
            f"output {str(path)!r} does not end in {suffix}, but the command writes {written}; "
            f"name it {str(path.with_suffix(suffix))!r}"
        )
    if path.exists() and not overwrite:
        raise OutputError(f"output {str(path)!r} exists already; choose another path or pass --overwrite")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: {str(parent)!r} is a file, not a folder; choose a path in an existing folder")
    if not parent.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {str(path)!r}: folder {str(parent)!r} is not writable; choose another folder")
    # Permissions do not tell everything (read-only file systems, root): try to create a file.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {error.strerror} in folder {str(parent)!r}; choose another folder") from None
    os.close(fd)
    os.unlink(probe)
    return path


def figure_formats() -> list[str]:
    """Return the file extensions (without the dot) that matplotlib can save a figure as here.

    The pgf format needs a LaTeX program (rcParams['pgf.texsystem']), so it counts only when
    that program is on PATH.
    """
    import shutil

    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    formats = list(FigureCanvasBase.get_supported_filetypes())
    if "pgf" in formats and shutil.which(matplotlib.rcParams["pgf.texsystem"]) is None:
        formats.remove("pgf")
    return formats


def check_figure_path(path: str | Path, overwrite: bool, option: str, data_output: str | Path | None = None) -> Path:
    """Check a figure path before any computation: an extension matplotlib can write, not the
    data output `data_output`, and the checks of `check_output_path`."""
    path = Path(path)
    formats = figure_formats()
    if path.suffix.lower().lstrip(".") not in formats:
        problem = f"{path.suffix!r} is not a figure format" if path.suffix else "the name has no extension to choose the figure format"
        raise OutputError(
            f"invalid {option} {str(path)!r}: {problem}; name it {str(path.with_suffix('.png'))!r} "
            f"(matplotlib writes {', '.join('.' + name for name in formats)})"
        )
    if data_output is not None and os.path.abspath(path) == os.path.abspath(data_output):
        raise OutputError(f"invalid {option} {str(path)!r}: it is also the --out file; give the figure its own name")
    return check_output_path(path, overwrite)


def write_dataset(dataset: xr.Dataset, path: str | Path, overwrite: bool = False) -> Path:
    """Write a Dataset as NetCDF (h5netcdf engine) through a temporary file and a rename."""
    path = check_output_path(path, overwrite)
    clean = dataset.copy()
    clean.attrs = clean_attrs(dataset.attrs)
    for name in list(clean.variables):
        clean[name].attrs = clean_attrs(dataset[name].attrs)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {error.strerror}; choose another folder") from None
    os.close(fd)
    try:
        clean.to_netcdf(tmp, engine="h5netcdf")
        publish_file(tmp)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {str(path)!r}: {error.strerror or error}; free space or choose another folder") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_dataset(path: str | Path) -> xr.Dataset:
    """Load a result file fully into memory (the file is closed on return)."""
    path = Path(path)
    if not path.is_file():
        raise OutputError(f"result file {str(path)!r} not found")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as dataset:
            return dataset.load()
    except (OSError, ValueError) as error:
        raise OutputError(f"cannot read result file {str(path)!r}: {error}") from None


def json_attr(dataset: xr.Dataset, key: str) -> Any:
    """Decode an attribute stored as JSON text."""
    return json.loads(dataset.attrs[key])
