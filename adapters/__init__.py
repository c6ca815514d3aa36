"""Adapters: every checkpoint format becomes one `Denoiser`.

An adapter is a small object with a `name`, a `detect(path)` test for local paths and a
`load(path, **options)` function. Built-in adapters cover this package's own checkpoints
(oracles and trained networks) and diffusers models. Other packages add adapters through the
entry-point group `entropy_probe.adapters` (each entry point names an `Adapter` instance), and
local code can be used with `--adapter module:function`, where `function(source, **options)`
returns a `Denoiser`.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from ..denoiser import Denoiser
from ..errors import CheckpointError, SpecError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "entropy_probe.adapters"


@dataclass(frozen=True)
class Adapter:
    """A checkpoint family: how to recognise a local path and how to load it."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., Denoiser]
    description: str = ""


_BUILTIN: list[Adapter] = []


def register(adapter: Adapter) -> Adapter:
    """Add a built-in adapter (detection runs in registration order)."""
    _BUILTIN.append(adapter)
    return adapter


def _plugin_adapters() -> list[Adapter]:
    adapters = []
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            adapter = entry.load()
        except Exception as error:  # a broken plugin must not break the built-in formats
            logger.warning("skipping adapter plugin %s: %s", entry.name, error)
            continue
        if not isinstance(adapter, Adapter):
            logger.warning("skipping adapter plugin %s: it is a %s, not an Adapter", entry.name, type(adapter).__name__)
            continue
        adapters.append(adapter)
    return adapters


def all_adapters() -> list[Adapter]:
    _load_builtin()
    return list(_BUILTIN) + _plugin_adapters()


def _load_builtin() -> None:
    # Importing the modules registers their adapters; heavy imports stay inside `load`.
    from . import builtin, oracle  # noqa: F401

    for optional in ("diffusers_adapter", "hub"):
        try:
            importlib.import_module(f"{__name__}.{optional}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{optional}":
                raise


def load_function(reference: str) -> Callable[..., Any]:
    """Import `module:function` for --adapter."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise SpecError(f"invalid --adapter {reference!r}; write it as module:function, for example mymodels:load")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"cannot import adapter module {module_name!r}: {error}; is it on PYTHONPATH?") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise SpecError(f"adapter module {module_name!r} has no function {attribute!r}")
    return function


def check_readable_directory(path: Path, source: str) -> None:
    """Raise CheckpointError for a checkpoint folder that cannot be read."""
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise CheckpointError(f"cannot read checkpoint directory {source!r}: permission denied; make it readable (chmod u+rx)")


def explain_file(path: Path, source: str) -> None:
    """Raise CheckpointError for a file that no adapter reads, saying what to give instead."""
    from ..checkpoint import CONFIG_NAME, PICKLED_WEIGHTS_NAMES, WEIGHTS_NAME

    if path.suffix in {Path(name).suffix for name in PICKLED_WEIGHTS_NAMES} | {".safetensors"}:
        raise CheckpointError(
            f"checkpoint {source!r} is a weights file without its network description; put it into a "
            f"directory as {WEIGHTS_NAME} (or as a state dict {PICKLED_WEIGHTS_NAMES[0]}) beside the "
            f"{CONFIG_NAME} that describes the network, and pass that directory (see docs/checkpoints.md)"
        )
    raise CheckpointError(
        f"checkpoint {source!r} is a file; give the checkpoint directory (config.json and "
        f"model.safetensors), a diffusers folder, or --adapter module:function for other formats"
    )


#: Kinds of entropy-probe checkpoints that load as a model.
MODEL_KINDS = ("oracle", "network")


def explain_config(path: Path) -> None:
    """Raise CheckpointError naming what keeps every adapter from reading the config.json of `path`.

    Call it after no adapter detected the folder. Returns only when the folder has no config.json.
    """
    import json

    from ..checkpoint import CONFIG_NAME, FORMAT

    config_path = path / CONFIG_NAME
    if not config_path.exists():
        return
    try:
        text = config_path.read_text()
    except OSError as error:
        raise CheckpointError(f"cannot read {str(config_path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{str(config_path)!r} is not UTF-8 text ({error.reason} at byte {error.start}); restore the file") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{str(config_path)!r} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}; "
            f"restore the file or fix its syntax"
        ) from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(config_path)!r} must contain a JSON object, not a {type(config).__name__}; restore the file")
    if config.get("format") == FORMAT:
        kind = config.get("kind")
        expected = " or ".join(repr(name) for name in MODEL_KINDS)
        if "kind" not in config:
            raise CheckpointError(
                f"{str(config_path)!r} lacks the key 'kind' ({expected}); restore the config.json written with the weights"
            )
        if kind == "training-state":
            raise CheckpointError(
                f"{str(path)!r} is the training state of a run, not a model; give the run folder or one of its epoch-NNNN folders"
            )
        raise CheckpointError(f"{str(config_path)!r} has kind {kind!r}, but this version reads only {expected}; restore the config.json or upgrade entropy-probe")
    if "format" in config:
        raise CheckpointError(
            f"{str(config_path)!r} has format {config['format']!r}, which no adapter reads; use --adapter module:function for other formats"
        )
    raise CheckpointError(
        f"{str(config_path)!r} has neither the key 'format' of entropy-probe checkpoints nor the key '_class_name' "
        f"of diffusers models; restore the config.json written with the weights, or use --adapter module:function for other formats"
    )


def reject_options(adapter: str, path: Path, options: dict[str, Any]) -> None:
    """Raise SpecError for loading options that `adapter` does not use, such as --scheduler-config."""
    set_options = sorted(name for name, value in options.items() if value is not None)
    if set_options:
        flags = ", ".join("--" + name.replace("_", "-") for name in set_options)
        raise SpecError(f"{flags} does not apply to {str(path)!r}, a checkpoint of the {adapter} adapter; leave it out")


def _check_catalog_revision(name: str, revision: str | None) -> None:
    """Raise SpecError for --revision with a catalog entry other than a hub model, which has one version only."""
    from ..catalog import load_catalog

    kind = load_catalog()[name].kind
    if revision and kind != "hub":
        raise SpecError(
            f"--revision {revision} applies only to hub models, but catalog entry {name!r} is a {kind} entry "
            f"with a single version; leave --revision out"
        )


def load_denoiser(source: str, *, adapter: str | None = None, device: str = "cpu", **options: Any) -> Denoiser:
    """Load `source` (a path, a catalog name or a cached hub id) as a Denoiser on `device`."""
    if adapter:
        denoiser = load_function(adapter)(source, **options)
        if not isinstance(denoiser, Denoiser):
            raise CheckpointError(f"adapter {adapter!r} returned a {type(denoiser).__name__}, not a Denoiser")
        return denoiser.to(device)

    path = Path(source).expanduser()
    if not path.exists():
        from ..catalog import resolve_catalog_name

        resolved = resolve_catalog_name(source, revision=options.get("revision"))
        if resolved is not None:
            _check_catalog_revision(source, options.get("revision"))
            # The revision chose the cached snapshot; the folder itself takes no revision.
            rest = {name: value for name, value in options.items() if name != "revision"}
            return load_denoiser(str(resolved), device=device, **rest)
    adapters = all_adapters()
    if path.exists():
        check_readable_directory(path, source)
        for candidate in adapters:
            if candidate.detect(path):
                return candidate.load(path, device=device, **options)
        if path.is_file():
            explain_file(path, source)
        explain_config(path)
        raise CheckpointError(
            f"{source!r} is not a checkpoint directory this version can read (no entropy-probe or "
            f"diffusers config.json found); use --adapter module:function for other formats"
        )
    for candidate in adapters:
        if candidate.name == "hub" and "/" in source:
            return candidate.load(source, device=device, **options)
    raise CheckpointError(
        f"checkpoint {source!r} not found: it is neither an existing path nor a catalog name; "
        f"run 'entropy-probe catalog list' for the known names"
    )
