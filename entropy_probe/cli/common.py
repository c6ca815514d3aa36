"""Options and helpers shared by the commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click


def progress_enabled(ctx: click.Context, flag: bool = True) -> bool:
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    return flag and not quiet and os.environ.get("ENTROPY_PROBE_NO_PROGRESS", "") in ("", "0")


def tqdm_factory(iterable, total=None, desc=None, unit="it"):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    import torch

    from ..errors import SpecError

    if device == "auto":
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise SpecError(f"invalid --device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"--device {device} was requested, but no CUDA device is available; use --device cpu")
    return device


def options_path(output: str | Path) -> Path:
    """Path of the options record saved beside an output: RESULT.nc -> RESULT.options.json."""
    output = Path(output)
    return output.with_name(output.stem + ".options.json") if output.suffix else output / "options.json"


def check_options_path(output: str | Path, overwrite: bool) -> None:
    """Reject an existing options record beside `output` unless `overwrite`, before any computation."""
    from ..errors import OutputError

    path = options_path(output)
    if path.exists() and not overwrite:
        raise OutputError(
            f"options file {str(path)!r}, which this command writes beside {str(output)!r}, exists already; "
            f"choose another --out or pass --overwrite"
        )


def save_options(output: str | Path, command: str, options: dict[str, Any]) -> Path:
    """Save the options of a run beside its output (atomically)."""
    from .. import __version__
    from ..checkpoint import write_json_atomic

    path = options_path(output)
    record = {"command": command, "argv": sys.argv, "package_version": __version__, "options": options}
    write_json_atomic(path, json.loads(json.dumps(record, default=str)))
    return path


def positive_int(name: str):
    """Click callback that rejects integers < 1 with one clear line."""

    def check(ctx, param, value):
        if value is not None and value < 1:
            raise click.BadParameter(f"{value} is invalid; {name} must be >= 1")
        return value

    return check


def seed_option(ctx, param, value):
    """Click callback that rejects a seed outside [0, 2**63) before any computation."""
    from ..specs import SEED_RANGE, seed_in_range

    if value is not None and not seed_in_range(value):
        raise click.BadParameter(f"{value} is invalid; a seed must be {SEED_RANGE}, for example --seed 0")
    return value
