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
            return load_denoiser(str(resolved), device=device, **options)
    adapters = all_adapters()
    if path.exists():
        for candidate in adapters:
            if candidate.detect(path):
                return candidate.load(path, device=device, **options)
        if path.is_file():
            raise CheckpointError(
                f"checkpoint {source!r} is a file; give the checkpoint directory (config.json and "
                f"model.safetensors), a diffusers folder, or --adapter module:function for other formats"
            )
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
