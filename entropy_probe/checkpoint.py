"""Checkpoint directories: `config.json` plus `model.safetensors`.

A checkpoint directory of this package has a config with `"format": "entropy-probe"`, a format
version and a `kind` ("oracle" or "network"). Directories are written atomically: into a
temporary sibling directory that is renamed into place, so an interrupted write leaves either
the old directory or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from .errors import CheckpointError, OutputError
from .filemodes import publish_file, publish_folder, publish_tree

FORMAT = "entropy-probe"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Names of a state dict saved by torch.save, read (with weights_only=True) when model.safetensors is missing.
PICKLED_WEIGHTS_NAMES = ("model.pt", "model.pth", "model.ckpt", "model.bin")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON through a temporary file in the same directory and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
        publish_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_checkpoint(directory: str | Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], overwrite: bool = False) -> Path:
    """Write config.json and model.safetensors into `directory` atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.is_file() and not overwrite:
        raise OutputError(f"output {str(directory)!r} is an existing file, but a checkpoint is a folder; choose another --out")
    if directory.exists() and not overwrite:
        raise OutputError(f"output directory {str(directory)!r} exists already; choose another --out or pass --overwrite")
    parent = directory.parent if str(directory.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
        publish_folder(staging)
    except OSError as error:
        raise OutputError(f"cannot write to {str(parent)!r}: {error.strerror}; choose a writable --out") from None
    try:
        full_config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(staging / WEIGHTS_NAME))
        full_config["weights_sha256"] = sha256_file(staging / WEIGHTS_NAME)
        write_json_atomic(staging / CONFIG_NAME, full_config)
        publish_tree(staging)
        if directory.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=parent))
            backup.rmdir()
            os.replace(directory, backup)
            os.replace(staging, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and check config.json of a checkpoint directory of this package."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.exists():
        raise CheckpointError(f"checkpoint {str(directory)!r} not found; give a checkpoint directory, a catalog name or a cached hub id")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {str(directory)!r} is a file, but a checkpoint is a directory with config.json and model.safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(directory)!r} has no config.json; is it a checkpoint directory?")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {str(path)!r}: {error}; the file is not valid JSON") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object, not {type(config).__name__}")
    return config


def check_format(config: Mapping[str, Any], directory: str | Path) -> None:
    """Raise CheckpointError unless the config is of this package and a readable version."""
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{str(directory)!r} is not an entropy-probe checkpoint (config.json has format={config.get('format')!r})")
    version = config.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{str(directory)!r}: config.json format_version must be an integer, not {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(directory)!r} has checkpoint format version {version}, newer than the "
            f"version {FORMAT_VERSION} this entropy-probe reads; upgrade entropy-probe"
        )


def require(config: Mapping[str, Any], key: str, kind: type | tuple[type, ...], directory: str | Path) -> Any:
    """Return config[key] after checking that it exists and has the expected type."""
    if key not in config:
        raise CheckpointError(
            f"{str(directory)!r}: config.json lacks the key {key!r}; restore the config.json written with "
            f"the weights (see docs/checkpoints.md for its keys)"
        )
    value = config[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is a subclass of int in Python, but `true` is never a valid count or size.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(
            f"{str(directory)!r}: config.json key {key!r} must be {names}, not {value!r}; restore the "
            f"config.json written with the weights (see docs/checkpoints.md for its keys)"
        )
    return value


def weights_file(directory: str | Path) -> Optional[Path]:
    """Return the weights file of a checkpoint directory: model.safetensors, else a pickled state dict."""
    directory = Path(directory)
    for name in (WEIGHTS_NAME,) + PICKLED_WEIGHTS_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def read_tensors(directory: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """Load the weights of a checkpoint directory; return the tensors and the file's SHA-256.

    The weights are model.safetensors or, when that is missing, a state dict pickled by
    torch.save as model.pt (or .pth, .ckpt, .bin), which is read with
    torch.load(weights_only=True) only. With `verify`, a `weights_sha256` recorded in
    config.json must match the file.
    """
    directory = Path(directory)
    path = weights_file(directory)
    if path is None:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} has no {WEIGHTS_NAME} (nor a state dict saved as "
            f"{PICKLED_WEIGHTS_NAMES[0]}); copy the weights file into the directory"
        )
    try:
        digest = sha256_file(path)
    except OSError as error:
        raise CheckpointError(f"cannot read {str(path)!r}: {error.strerror}") from None
    if verify:
        _check_recorded_digest(directory, path, digest)
    if path.name == WEIGHTS_NAME:
        return _read_safetensors(path), digest
    return read_pickled_state_dict(path), digest


def _check_recorded_digest(directory: Path, path: Path, digest: str) -> None:
    config_path = directory / CONFIG_NAME
    try:
        recorded = json.loads(config_path.read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return  # read_config reports an unreadable config.json
    if recorded and recorded != digest:
        raise CheckpointError(
            f"{str(path)!r} does not match {str(config_path)!r}: its SHA-256 is {digest[:12]}…, the "
            f"config records {str(recorded)[:12]}…, so the weights were replaced or damaged after "
            f"the checkpoint was written (or a save was interrupted); restore the original files"
        )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"cannot read {str(path)!r}: the file is corrupted or truncated ({error}); copy the weights again"
        ) from None


def read_pickled_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved by torch.save, with torch.load(weights_only=True) only.

    The file must hold a mapping of parameter names to tensors, or a mapping whose
    "state_dict" entry is one. torch.load(weights_only=True) rejects any pickle that would
    construct other objects or call functions, so loading cannot run code from the file.
    """
    import pickle
    import warnings

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it was not written with; the error below names the problem.
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _unpickling_detail(error)
        raise CheckpointError(
            f"rejected {str(path)!r}: it is a pickle that contains more than tensors ({detail}), "
            f"and entropy-probe unpickles only with torch.load(weights_only=True), because unpickling "
            f"other objects can run code; save the weights with safetensors (model.safetensors) instead"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"cannot read {str(path)!r}: the file is corrupted or not written by torch.save ({first_line})") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(
            f"{str(path)!r} contains a {type(loaded).__name__}, not a state dict; save "
            f"model.state_dict() (parameter names to tensors) with torch.save or safetensors"
        )
    wrong = [str(name) for name, value in loaded.items() if not (isinstance(name, str) and torch.is_tensor(value))]
    if wrong:
        raise CheckpointError(
            f"{str(path)!r} is not a state dict: entry {wrong[0]!r} is not a tensor under a name; save "
            f"model.state_dict() (parameter names to tensors) with torch.save or safetensors"
        )
    return dict(loaded)


def state_dict_mismatch(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> str:
    """Describe the first differences between a module's parameters and `tensors`; "" when they fit."""
    expected = {name: tuple(value.shape) for name, value in module.state_dict().items()}
    problems = []
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    if missing:
        problems.append(f"{len(missing)} tensors missing, such as {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, such as {unexpected[0]!r}")
    for name, shape in expected.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            problems.append(f"{name!r} has shape {tuple(tensors[name].shape)} in the file but {shape} in the network")
            break
    return "; ".join(problems)


def _unpickling_detail(error: Exception) -> str:
    """Return the part of torch's weights-only error that names what was rejected."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].strip().splitlines()
        if detail:
            # The first sentence names the rejected global; later ones suggest allowlisting it.
            return detail[0].strip().split(". ")[0].rstrip(".")
    return "objects other than tensors"


# --- oracles -------------------------------------------------------------------------------

def save_oracle(oracle, directory: str | Path, overwrite: bool = False, extra: Mapping[str, Any] | None = None) -> Path:
    """Write an oracle as a checkpoint directory."""
    from . import __version__

    config: dict[str, Any] = {
        "kind": "oracle",
        "oracle": oracle.kind,
        "data_shape": list(oracle.data_shape),
        "pixel_range": list(oracle.pixel_range) if oracle.pixel_range else None,
        "quantization_step": oracle.quantization_step,
        "package_version": __version__,
    }
    if oracle.provenance:
        config["provenance"] = oracle.provenance
    if extra:
        config.update(extra)
    return write_checkpoint(directory, config, oracle.tensors(), overwrite=overwrite)


def load_oracle(directory: str | Path):
    """Load an oracle checkpoint directory."""
    from .oracles import EmpiricalOracle, GaussianMixtureOracle, GaussianOracle
    from .errors import SpecError

    config = read_config(directory)
    check_format(config, directory)
    if config.get("kind") != "oracle":
        raise CheckpointError(
            f"{str(directory)!r} is not an oracle checkpoint (kind={config.get('kind')!r}); give an exact data law "
            f"written by 'entropy-probe oracle', for example 'entropy-probe oracle gmm --dim 3 --out gmm3'"
        )
    kind = require(config, "oracle", str, directory)
    shape = tuple(require(config, "data_shape", list, directory))
    tensors, digest = read_tensors(directory)
    expected = {"gaussian": {"mean", "std"}, "gmm": {"weights", "means", "stds"}, "empirical": {"points"}}
    if kind not in expected:
        raise CheckpointError(f"{str(directory)!r}: unknown oracle type {kind!r}; expected gaussian, gmm or empirical")
    missing = expected[kind] - set(tensors)
    if missing:
        raise CheckpointError(f"{str(directory)!r}: model.safetensors lacks the tensors {sorted(missing)} of a {kind} oracle")
    try:
        if kind == "gaussian":
            oracle = GaussianOracle(tensors["mean"], tensors["std"], shape)
        elif kind == "gmm":
            oracle = GaussianMixtureOracle(tensors["weights"], tensors["means"], tensors["stds"], shape)
        else:
            oracle = EmpiricalOracle(tensors["points"], shape)
    except SpecError as error:
        raise CheckpointError(
            f"{str(directory)!r}: {error}; its config.json and model.safetensors do not belong together, so restore "
            f"both as written, or write the oracle again with 'entropy-probe oracle'"
        ) from None
    pixel_range = config.get("pixel_range")
    oracle.pixel_range = tuple(pixel_range) if pixel_range else None
    oracle.quantization_step = config.get("quantization_step")
    oracle.provenance = {"kind": "oracle", "oracle": kind, "path": str(Path(directory).resolve()), "weights_sha256": digest}
    if "provenance" in config:
        oracle.provenance["recipe"] = config["provenance"].get("recipe")
    oracle.fingerprint = digest
    return oracle
