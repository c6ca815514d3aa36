"""One model under several forward processes, on common random numbers.

A trained denoiser defines e_θ for every process whose noise range it covers, so the same
checkpoint can be measured under vp, sl, vpx, ... Each process is measured with
`probe.measure` and the same settings. The draws are addressed by (seed, node, sample), so
node k of every process uses the same (x_0, ε) pairs, only at a different time t_k. Under
importance sampling the node is a stratum, and the uniform number that picks the time inside
it is shared too. Each process turns that number into a time with its own proposal.

The result is one Dataset with a `process` dimension (the canonical process specs) and a `node`
dimension: the node times differ per process, so `t(process, node)` is a variable. Scalars such
as `s_nn` become vectors over `process`. Attributes that differ between processes (the process
itself, t_min, T, timings, the prior of the cross-entropy bound) become JSON objects keyed by
process spec. All other attributes are those of the single measurements.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional, Sequence

import numpy as np
import xarray as xr

from .data import DataSource
from .denoiser import Denoiser
from .errors import SpecError
from .probe import MeasureSettings, design_line, measure, resolve_time_range
from .processes import Process, from_spec
from .results import NATS

logger = logging.getLogger(__name__)


def resolve_processes(specs: Sequence[str | Process]) -> list[Process]:
    """Parse the process specs; reject an empty list and duplicates."""
    if not specs:
        raise SpecError("compare needs at least one --process, for example --process vp --process sl:sigma0=0.1")
    processes = [from_spec(spec) for spec in specs]
    seen: dict[str, str] = {}
    for spec, process in zip(specs, processes):
        text = spec if isinstance(spec, str) else spec.spec
        if process.spec in seen:
            raise SpecError(f"process {text!r} is given twice (also as {seen[process.spec]!r}); give each process once")
        seen[process.spec] = text
    return processes


def check_ranges(model: Denoiser, processes: Sequence[Process], settings: MeasureSettings) -> None:
    """Validate every process's time range and the model's noise range before any evaluation."""
    for process in processes:
        t_min, t_max = resolve_time_range(process, settings)
        model.check_time_range(process, t_min, t_max, purpose=f"the time range of process {process.spec!r}")


def compare_processes(
    model: Denoiser,
    processes: Sequence[str | Process],
    data: DataSource,
    settings: MeasureSettings,
    reference: Optional[Denoiser] = None,
    provenance: Optional[dict[str, Any]] = None,
    progress_factory: Optional[Callable] = None,
) -> xr.Dataset:
    """Measure `model` under each process with the same settings and draws; one Dataset."""
    settings.validate()
    resolved = resolve_processes(processes)
    check_ranges(model, resolved, settings)
    results = []
    for process in resolved:
        logger.info("measuring under %s", process.spec)
        results.append(
            measure(model, process, data, settings, reference=reference, provenance=provenance, progress_factory=progress_factory)
        )
    return combine_measurements(results)


def combine_measurements(results: Sequence[xr.Dataset]) -> xr.Dataset:
    """Stack single-process measurements along a new `process` dimension."""
    specs = [str(result.attrs["process"]) for result in results]
    sizes = {result.sizes["t"] for result in results}
    if len(sizes) != 1:
        raise ValueError(f"measurements have different node counts {sorted(sizes)}; compare needs equal counts")
    parts = [_with_node_dimension(result) for result in results]
    combined = xr.concat(parts, dim="process", data_vars="all", coords="minimal", compat="override", combine_attrs="drop")
    combined = combined.assign_coords(
        process=("process", specs, {"long_name": "forward process specification", "units": "1"}),
        node=("node", np.arange(parts[0].sizes["node"]), {"long_name": "index of the time node", "units": "1"}),
    )
    for name in combined.data_vars:
        combined[name].attrs = _merge_attrs([result[name].attrs if name in result else {} for result in parts], specs)
    combined.attrs = _merge_attrs([result.attrs for result in results], specs)
    combined.attrs["title"] = "entropy-probe comparison of forward processes"
    combined.attrs["processes"] = json.dumps(specs)
    if combined.attrs.get("estimator") == "importance":
        combined.attrs["common_random_numbers"] = (
            "every process uses the same seed, strata and samples, so sample i of stratum k of each process "
            "evaluates the same (x_0, ε) pair and the same uniform number, which that process's own proposal "
            "maps to its own time"
        )
    else:
        combined.attrs["common_random_numbers"] = (
            "every process uses the same seed, node count and samples, so node k of each process "
            "evaluates the same (x_0, ε) pairs at that process's own time t(process, k)"
        )
    return combined


def _with_node_dimension(result: xr.Dataset) -> xr.Dataset:
    t = result["t"]
    part = result.drop_vars("t").rename_dims({"t": "node"})
    part["t"] = xr.DataArray(t.values, dims=("node",), attrs=dict(t.attrs))
    part["t_min"] = xr.DataArray(float(result.attrs["t_min"]), attrs={"units": "1", "long_name": "start t_min of the measured range"})
    part["t_max"] = xr.DataArray(float(result.attrs["t_max"]), attrs={"units": "1", "long_name": "end T of the measured range"})
    return part


def _merge_attrs(attr_sets: Sequence[dict[str, Any]], specs: Sequence[str]) -> dict[str, Any]:
    """Keep attributes equal across processes; store the others as a JSON object by spec."""
    keys: list[str] = []
    for attrs in attr_sets:
        keys += [key for key in attrs if key not in keys]
    merged: dict[str, Any] = {}
    for key in keys:
        values = [attrs.get(key) for attrs in attr_sets]
        encoded = [json.dumps(value, sort_keys=True, default=str) for value in values]
        if len(set(encoded)) == 1:
            merged[key] = values[0]
        else:
            merged[key] = json.dumps(dict(zip(specs, values)), default=str)
    return merged


# --- the printed table ------------------------------------------------------------------------

_COLUMNS = (
    ("S_NN [nats]", "s_nn", True),
    ("cross term [nats]", "cross_term", True),
    ("CE bound [bits/dim]", "ce_bound_bpd", True),
    ("thermo length [data units]", "thermo_length", True),
    ("S_tot lower bound [nats]", "speed_limit_bound", False),
    ("S_tot [nats]", "s_tot", True),
)


def _cell(dataset: xr.Dataset, name: str, with_error: bool, index: int) -> str:
    if name not in dataset:
        return ""
    from .formatting import format_estimate

    value = float(dataset[name].values[index])
    error_name = name + "_stderr"
    if with_error and error_name in dataset:
        return format_estimate(value, float(dataset[error_name].values[index]))
    return format_estimate(value)


def format_comparison(dataset: xr.Dataset) -> str:
    """Format a text table: one row per process, estimates with their standard errors."""
    columns = [(title, name, err) for title, name, err in _COLUMNS if name in dataset]
    header = ["process", "t range"] + [title for title, _, _ in columns]
    rows = []
    for index, spec in enumerate(dataset["process"].values):
        t_range = f"[{float(dataset['t_min'].values[index]):.3g}, {float(dataset['t_max'].values[index]):.6g}]"
        rows.append([str(spec), t_range] + [_cell(dataset, name, err, index) for _, name, err in columns])
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def summarize_comparison(dataset: xr.Dataset) -> str:
    """Format the table below a short header that names the model, data and estimate."""
    attrs = dataset.attrs
    head = [
        f"model     {attrs.get('checkpoint', attrs.get('model_fingerprint', ''))}",
        f"data      {attrs.get('data', '')}   (d = {attrs.get('data_dim', '')})",
        f"estimate  {design_line(attrs)} per process, seed {attrs.get('seed')} (common random numbers)",
        f"units     entropies in {NATS}; CE bound in bits/dim",
        "",
    ]
    return "\n".join(head) + format_comparison(dataset)
