"""High-level functions behind the commands, usable from Python as well."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import xarray as xr

from . import data as data_module
from .checkpoint import load_oracle
from .data import DataSource, oracle_source
from .denoiser import Denoiser
from .errors import DataError, SpecError
from .oracles import Oracle
from .probe import MeasureSettings, measure
from .processes import Process, from_spec

logger = logging.getLogger(__name__)

#: Process used for models that record none (oracles): the Neural Entropy paper's VP.
FALLBACK_PROCESS = "vp"


def load_model(checkpoint: str, **options: Any) -> Denoiser:
    """Load a checkpoint (path, catalog name or cached hub id) as a Denoiser."""
    from .adapters import load_denoiser

    if isinstance(checkpoint, str) and not checkpoint.strip():
        raise SpecError(f"invalid checkpoint {checkpoint!r}: the name is empty; give a checkpoint directory, a catalog name or a hub id")
    return load_denoiser(checkpoint, **options)


def resolve_process(model: Denoiser, spec: Optional[str]) -> Process:
    if spec:
        return from_spec(spec)
    if model.native_process:
        return from_spec(model.native_process)
    logger.info("the model records no process; using %r (set one with --process)", FALLBACK_PROCESS)
    return from_spec(FALLBACK_PROCESS)


def resolve_data(model: Denoiser, spec: Optional[str]) -> DataSource:
    if spec:
        return data_module.from_spec(spec)
    if isinstance(model, Oracle):
        return oracle_source(model, f"oracle:path={model.provenance.get('path', '(in memory)')}")
    if model.default_data:
        return data_module.from_spec(model.default_data)
    raise DataError("this checkpoint records no data to measure on; pass --data SPEC (for example --data mnist:split=heldout)")


def resolve_reference(model: Denoiser, data: DataSource, reference_dir: Optional[str]) -> Optional[Denoiser]:
    """Return the exact law of the data: --reference, else the data's own oracle, else None."""
    if reference_dir is not None and not reference_dir.strip():
        raise SpecError(
            f"invalid --reference {reference_dir!r}: the path is empty; give an oracle checkpoint directory "
            "or leave out --reference"
        )
    if reference_dir:
        return load_oracle(reference_dir)
    return data.reference


def measure_checkpoint(
    checkpoint: str | Denoiser,
    *,
    process: Optional[str] = None,
    data: Optional[str] = None,
    reference: Optional[str] = None,
    settings: Optional[MeasureSettings] = None,
    progress_factory: Optional[Callable] = None,
    load_options: Optional[dict[str, Any]] = None,
    **resume: Any,
) -> xr.Dataset:
    """Load, resolve defaults and measure; return the result Dataset."""
    settings = settings or MeasureSettings()
    model = checkpoint if isinstance(checkpoint, Denoiser) else load_model(checkpoint, **(load_options or {}))
    proc = resolve_process(model, process)
    source = resolve_data(model, data)
    ref = resolve_reference(model, source, reference)
    provenance = {
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, Denoiser) else model.provenance.get("path", "(in memory)"),
        "checkpoint_sha256": model.fingerprint,
    }
    return measure(model, proc, source, settings, reference=ref, provenance=provenance, progress_factory=progress_factory, **resume)
