"""Files of a training run: network checkpoints, the resume state and the loss log.

Layout of a run directory DIR (see docs/checkpoints.md):

    DIR/config.json, DIR/model.safetensors   the latest saved network (a checkpoint itself)
    DIR/epoch-0005/ ...                      one checkpoint directory per saved epoch
    DIR/train-state/                         everything needed to resume (kind "training-state")
    DIR/loss.jsonl                           one JSON line per finished epoch

Every directory is written with `checkpoint.write_checkpoint` (staging directory, then rename).
The two files of DIR itself are copied from the newest epoch directory one after the other,
each through a temporary file and a rename. config.json records the SHA-256 of the weights, so
a reader detects the short window in which only one of them is new.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_format,
    read_config,
    read_tensors,
    require,
    state_dict_mismatch,
    write_checkpoint,
)
from ..errors import CheckpointError, OutputError
from ..filemodes import publish_file
from ..processes import from_spec as process_from_spec
from .networks import ARCHITECTURES, ExcessScoreNetwork, Preconditioning, build_core

logger = logging.getLogger(__name__)

STATE_DIR = "train-state"
LOSS_LOG = "loss.jsonl"
STATE_KIND = "training-state"


def epoch_dir_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


# --- network checkpoints -------------------------------------------------------------------

def save_network_checkpoint(out: Path, epoch: int, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write DIR/epoch-NNNN and make DIR itself a copy of it."""
    epoch_dir = write_checkpoint(out / epoch_dir_name(epoch), config, tensors, overwrite=True)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
        os.close(fd)
        try:
            shutil.copyfile(epoch_dir / name, tmp)
            publish_file(tmp)
            os.replace(tmp, out / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return epoch_dir


def load_network(directory: str | Path, device: str | torch.device = "cpu") -> tuple[ExcessScoreNetwork, dict[str, Any], str]:
    """Load a network checkpoint; return the network (eval mode), its config and the weights' SHA-256."""
    directory = Path(directory)
    config = read_config(directory)
    check_format(config, directory)
    if config.get("kind") != "network":
        raise CheckpointError(f"{str(directory)!r} is not a network checkpoint (kind={config.get('kind')!r})")
    architecture = require(config, "architecture", str, directory)
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"{str(directory)!r}: unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")

    arguments = require(config, "network", dict, directory)
    process = process_from_spec(require(config, "process", str, directory))
    preconditioning = Preconditioning.from_config(config, str(directory))
    tensors, digest = read_tensors(directory, verify=False)
    # Float16 copies (see `write_float16_copy`) load into the float32 network.
    tensors = {name: value.float() if value.is_floating_point() else value for name, value in tensors.items()}
    recorded = config.get("weights_sha256")
    if recorded and recorded != digest:
        raise CheckpointError(
            f"{str(directory)!r}: model.safetensors does not match config.json (SHA-256 differs), "
            f"probably because training stopped while saving; run 'entropy-probe train --resume' "
            f"again or load one of the epoch-NNNN directories"
        )

    try:
        core = build_core(architecture, arguments)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{str(directory)!r}: cannot build the {architecture} from config.json 'network' ({error})") from None
    mismatch = state_dict_mismatch(core, tensors)
    if mismatch:
        raise CheckpointError(
            f"{str(directory)!r}: the weights do not fit the {architecture} described by config.json "
            f"({mismatch}); the config and the weights come from different networks, so restore the config.json "
            f"written with these weights"
        )
    core.load_state_dict(tensors, strict=True)
    network = ExcessScoreNetwork(core, architecture, process, preconditioning).to(device)
    network.eval()
    return network, config, digest


def write_float16_copy(source: str | Path, target: str | Path, overwrite: bool = False) -> Path:
    """Write a copy of the network checkpoint `source` with its floating tensors stored as float16.

    The copy halves the file size. `load_network` casts the tensors back to float32, so the
    copy's network is the float32 network whose weights are the float16-rounded originals. Its
    config.json gains `weights_dtype` ("float16") and `converted_from` (the source's SHA-256).
    """
    source = Path(source)
    config = read_config(source)
    check_format(config, source)
    if config.get("kind") != "network":
        raise CheckpointError(f"{str(source)!r} is not a network checkpoint (kind={config.get('kind')!r})")
    tensors, digest = read_tensors(source, verify=False)
    if config.get("weights_sha256") not in (None, digest):
        raise CheckpointError(f"{str(source)!r}: model.safetensors does not match config.json (SHA-256 differs)")
    half = {name: value.half() if value.is_floating_point() else value for name, value in tensors.items()}
    copy = {key: value for key, value in config.items() if key not in ("format", "format_version", "weights_sha256")}
    copy["weights_dtype"] = "float16"
    dtypes = sorted({str(value.dtype).removeprefix("torch.") for value in tensors.values() if value.is_floating_point()})
    copy["converted_from"] = {"weights_dtype": ",".join(dtypes), "weights_sha256": digest}
    return write_checkpoint(target, copy, half, overwrite=overwrite)


# --- resume state -------------------------------------------------------------------------

def save_state(out: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    write_checkpoint(out / STATE_DIR, {"kind": STATE_KIND, **config}, tensors, overwrite=True)


def find_state(out: Path) -> Optional[Path]:
    """Find the resume state directory of a run; return None when the run has saved none.

    `write_checkpoint` moves an old directory aside before it renames the new one into place. If
    a run stopped between the two renames, only the moved-aside copy exists, and it is used.
    """
    state = out / STATE_DIR
    if (state / CONFIG_NAME).is_file():
        return state
    for candidate in sorted(out.glob(f".{STATE_DIR}.old.*")):
        if (candidate / CONFIG_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file():
            logger.warning("using the resume state %s left by an interrupted save", candidate)
            return candidate
    return None


def load_state(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = read_config(directory)
    check_format(config, directory)
    if config.get("kind") != STATE_KIND:
        raise CheckpointError(f"{str(directory)!r} is not a training state (kind={config.get('kind')!r})")
    tensors, digest = read_tensors(directory, verify=False)
    if config.get("weights_sha256") not in (None, digest):
        raise CheckpointError(f"{str(directory)!r}: the state tensors do not match its config.json; the state is corrupted")
    return config, tensors


def write_loss_log(out: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite DIR/loss.jsonl from the full history (atomically), one JSON object per line."""
    path = out / LOSS_LOG
    fd, tmp = tempfile.mkstemp(prefix=f".{LOSS_LOG}.", suffix=".tmp", dir=out)
    try:
        with os.fdopen(fd, "w") as handle:
            for entry in history:
                handle.write(json.dumps(entry) + "\n")
        publish_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_loss_log(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / LOSS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- output directory -----------------------------------------------------------------------

def _is_run_directory(out: Path) -> bool:
    """Check whether `out` is the output of a training run, which --overwrite may delete."""
    config = out / CONFIG_NAME
    if (out / STATE_DIR).is_dir() or (out / LOSS_LOG).is_file():
        return True
    # A run interrupted before its first epoch has only the options record of the train command.
    if not config.exists() and _options_command(out) == "train":
        return True
    if config.is_file():
        try:
            recorded = json.loads(config.read_text())
            return recorded.get("format") == "entropy-probe" and recorded.get("kind") == "network"
        except (OSError, ValueError, AttributeError):
            return False
    return False


def _options_command(out: Path) -> Optional[str]:
    """Return the command recorded in `out`/options.json, or None when there is no readable record."""
    try:
        return json.loads((out / "options.json").read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def _describe_folder(out: Path) -> str:
    """Describe a non-empty folder that is no training run, for an error message."""
    config = out / CONFIG_NAME
    try:
        kind = json.loads(config.read_text()).get("kind") if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind == "oracle":
        return "an oracle checkpoint, not a training run"
    if config.is_file():
        return "a checkpoint that is not the output of 'entropy-probe train'"
    return "a folder that is not the output of 'entropy-probe train'"


def check_output(out: Path, resume: bool, overwrite: bool) -> tuple[Optional[Path], bool]:
    """Check the run directory without changing it.

    Return the state directory to resume from (or None) and whether an existing run must be
    deleted before a new one starts.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {str(out)!r} is a file; give a directory for --out")
    if not out.is_dir():
        return None, False
    state = find_state(out)
    if resume and state is not None:
        return state, False
    if not any(out.iterdir()):
        return None, False
    if resume:
        raise OutputError(
            f"cannot resume: {str(out)!r} has no training state ({STATE_DIR}/); start a new "
            f"run in another --out, or pass --overwrite instead of --resume"
        )
    if not _is_run_directory(out):
        raise OutputError(f"output directory {str(out)!r} exists already and is {_describe_folder(out)}; choose another --out")
    if not overwrite:
        raise OutputError(
            f"output directory {str(out)!r} exists already; pass --resume to continue its "
            f"training, --overwrite to replace it, or choose another --out"
        )
    return None, True


def create_output(out: Path, replace: bool) -> None:
    """Create the run directory, deleting the previous run first when `replace`."""
    if replace:
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output directory {str(out)!r}: {error.strerror}; choose a writable --out") from None
