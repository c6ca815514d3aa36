"""Export a U-Net checkpoint of `entropy-probe train` as a diffusers folder.

The folder contains `unet/` (config.json and diffusion_pytorch_model.safetensors, written by
`UNet2DModel.save_pretrained` from the unchanged state dict), `model_index.json` and
`entropy_probe.json`. An entropy-matching network outputs the excess score e_θ(x_t, t) of its
own process, with a preconditioning of its input, time and output. No diffusers scheduler can
express that, so `entropy_probe.json` records them, and the diffusers adapter of this package
reads it:

    e_θ(x_t, t) = unet(c_in x_t, time_scale · t).sample / σ(t)   (output_scaling inverse_sigma)
    c_in = 1 / sqrt(α(t)² m + σ(t)²)                              (input_scaling rms)

Other tools can rebuild the network with `UNet2DModel.from_pretrained(DIR, subfolder="unet")`
and this formula.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from . import __version__
from .checkpoint import check_format, read_config, read_tensors, require, write_json_atomic
from .errors import CheckpointError, OutputError, SpecError
from .filemodes import publish_tree
from .processes import Process, from_spec

FORMATS = ("diffusers",)
#: Prefix of the prose `time_input.variable` of trainer checkpoints that feed the native time t.
NATIVE_TIME = "native time t"


def export_checkpoint(checkpoint: str | Path, out: str | Path, format: str = "diffusers", overwrite: bool = False) -> Path:
    """Write `checkpoint` in `format` to the folder `out` (atomically); return `out`."""
    if format not in FORMATS:
        raise SpecError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    directory = resolve_checkpoint(checkpoint)
    check_output_folder(Path(out), overwrite)
    return export_diffusers(directory, out, overwrite=overwrite)


def resolve_checkpoint(source: str | Path) -> Path:
    """Return the directory of `source`: an existing path or the name of a shipped catalog entry.

    Catalog names resolve as in `measure`. A hub id names a diffusers model, which is in a
    diffusers format already, so it is rejected with that reason.
    """
    from .catalog import resolve_catalog_name

    path = Path(source).expanduser()
    if path.exists():
        return path
    resolved = resolve_catalog_name(str(source))
    if resolved is not None:
        return resolved
    if "/" in str(source) and not str(source).startswith((".", "/", "~")):
        raise CheckpointError(
            f"checkpoint {str(source)!r} not found: it is neither an existing path nor a catalog name; a "
            f"hub id names a diffusers model, which needs no export, so give a folder written by "
            f"'entropy-probe train'"
        )
    raise CheckpointError(
        f"checkpoint {str(source)!r} not found: it is neither an existing path nor a catalog name; "
        f"run 'entropy-probe catalog list' for the known names"
    )


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Raise OutputError unless the folder `out` can be created (or replaced with `overwrite`)."""
    if out.exists() and not overwrite:
        raise OutputError(f"output folder {str(out)!r} exists already; choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {str(out)!r} is a file; give a folder for --out")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {str(out)!r}: folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {str(out)!r}: folder {str(parent)!r} is not writable; choose another --out")
    # Permissions do not tell everything (read-only file systems, root): try to create a folder.
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent)
    except OSError as error:
        raise OutputError(f"cannot write {str(out)!r}: {error.strerror} in folder {str(parent)!r}; choose another --out") from None
    os.rmdir(probe)


def read_unet_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and check a trainer U-Net checkpoint; return its config and the entropy_probe.json fields."""
    config = read_config(directory)
    check_format(config, directory)
    if config.get("kind") != "network":
        raise CheckpointError(
            f"{str(directory)!r} is not a trained network (kind={config.get('kind')!r}); only checkpoints "
            f"of 'entropy-probe train' can be exported"
        )
    architecture = require(config, "architecture", str, directory)
    if architecture != "unet":
        raise CheckpointError(
            f"{str(directory)!r} contains a {architecture!r} network; only U-Nets (UNet2DModel) have a "
            f"diffusers model class to export to; use the checkpoint folder itself, which every entropy-probe "
            f"command reads"
        )
    parametrisation = config.get("parametrisation")
    if parametrisation != "excess_score":
        raise CheckpointError(f"{str(directory)!r}: parametrisation {parametrisation!r} is not 'excess_score'")
    time_input = require(config, "time_input", dict, directory)
    if not str(time_input.get("variable", "")).startswith(NATIVE_TIME):
        raise CheckpointError(f"{str(directory)!r}: unknown time input {time_input.get('variable')!r}")
    input_scaling = require(config, "input_scaling", dict, directory)
    try:
        process = from_spec(require(config, "process", str, directory))
        t_min, t_max = (float(v) for v in require(config, "train_time_range", list, directory))
        time_scale = float(time_input["scale"])
        data_mean_square = float(input_scaling.get("data_mean_square", 1.0))
    except (KeyError, TypeError, ValueError, SpecError) as error:
        raise CheckpointError(f"{str(directory)!r}: config.json has an invalid process, time range or scaling ({error})") from None
    metadata = _metadata(config, process, (t_min, t_max), time_scale, input_scaling.get("kind"), data_mean_square)
    return config, metadata


def _metadata(config: dict[str, Any], process: Process, time_range: tuple[float, float], time_scale: float, input_scaling: Any, data_mean_square: float) -> dict[str, Any]:
    """Build the entropy_probe.json fields of a checked trainer config."""
    data = config.get("data") or {}
    t_min, t_max = time_range
    metadata = {
        "format": "entropy-probe-diffusers",
        "format_version": 1,
        "process": process.spec,
        "prediction": "excess_score",
        "time_input": "t",
        "time_scale": time_scale,
        "input_scaling": input_scaling,
        "data_mean_square": data_mean_square,
        "output_scaling": config.get("output_scaling"),
        "sigma_tilde_range": [float(process.sigma_tilde(t_min)), float(process.sigma_tilde(t_max))],
        "train_time_range": [t_min, t_max],
        "pixel_range": data.get("pixel_range"),
        "quantization_step": data.get("quantization_step"),
        "default_data": data.get("heldout_spec"),
        "num_classes": config.get("num_classes"),
        "formula": (
            "e(x_t, t) = unet(c_in * x_t, time_scale * t).sample, divided by sigma(t) when "
            "output_scaling is inverse_sigma; c_in = 1/sqrt(alpha(t)^2 * data_mean_square + sigma(t)^2) "
            "when input_scaling is rms, else 1; the score of p_t is (2f/g^2) x_t + e"
        ),
    }
    return metadata


def export_diffusers(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write a trainer U-Net checkpoint as a diffusers folder with entropy_probe.json."""
    from diffusers import UNet2DModel

    directory = Path(checkpoint)
    out = Path(out)
    config, metadata = read_unet_checkpoint(directory)
    tensors, digest = read_tensors(directory, verify=False)
    recorded = config.get("weights_sha256")
    if recorded and recorded != digest:
        raise CheckpointError(f"{str(directory)!r}: model.safetensors does not match config.json (SHA-256 differs)")
    try:
        unet = UNet2DModel.from_config(dict(require(config, "network", dict, directory)))
        unet.load_state_dict(tensors, strict=True)
    except (TypeError, ValueError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{str(directory)!r}: the weights do not fit the UNet2DModel of config.json ({first_line})") from None
    metadata["source"] = {
        "path": str(directory.resolve()),
        "weights_sha256": digest,
        "epoch": config.get("epoch"),
        "weights": config.get("weights"),
        "exported_by": f"entropy-probe {__version__}",
    }
    index = {"_class_name": "DiffusionPipeline", "_diffusers_version": _diffusers_version(), "unet": ["diffusers", "UNet2DModel"]}
    return _write_folder(out, overwrite, unet, index, metadata)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _write_folder(out: Path, overwrite: bool, unet, index: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
    """Write the folder into a staging sibling and rename it into place."""
    check_output_folder(out, overwrite)
    parent = out.parent if str(out.parent) else Path(".")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        unet.save_pretrained(str(staging / "unet"), safe_serialization=True)
        write_json_atomic(staging / "model_index.json", dict(index))
        write_json_atomic(staging / "entropy_probe.json", json.loads(json.dumps(dict(metadata))))
        publish_tree(staging)
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            backup.rmdir()
            os.replace(out, backup)
            os.replace(staging, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
