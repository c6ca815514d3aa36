"""Run a recipe's train-and-measure items and combine their results into one Dataset.

Layout of an output directory DIR:

    DIR/plan.json                            the resolved plan (recipe, scale, every item's settings)
    DIR/events.jsonl                         one JSON line per item and invocation: skipped, finished, failed, interrupted
    DIR/items/NAME/run/                      the item's training run (see docs/checkpoints.md)
    DIR/items/NAME/epoch-NNNN.nc             the measurement of one checkpoint, with generated samples
    DIR/combined.nc                          every measurement on the study's axes, NaN where missing
    DIR/figures/*.png, DIR/summary.txt       figures and fitted numbers (see `analysis`)

Every file is written atomically, so an item is finished exactly when all its epoch files exist.
Ctrl-C or SIGTERM stops the sweep. The main process unwinds its writes, and worker processes
(`jobs` > 1) are killed and the temporary files of their writes removed, so nothing is left
half written. A second invocation skips the finished items and measurements. A training run that was cut
short resumes from its last saved epoch (the trainer's resume state). All items of a study
share the measurement seed, nodes and samples, so every checkpoint sees the same draws (common
random numbers).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import xarray as xr

from . import __version__, interrupts
from .checkpoint import write_json_atomic
from .errors import OutputError, UserError
from .probe import MeasureSettings
from .recipes import Item, Plan
from .train import TrainSettings
from .results import NATS, read_dataset, write_dataset

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
EVENTS_FILE = "events.jsonl"
ITEMS_DIR = "items"
RUN_DIR = "run"
COMBINED_FILE = "combined.nc"
TITLE = "entropy-probe reproduction"

#: Variables of a measurement that depend only on the process, the grid and the data law. The
#: combined Dataset drops the axes along which they do not change (for example s_tot, which is
#: the same for every seed and epoch because all checkpoints share the draws).
INVARIANT_VARIABLES = (
    "t", "sigma_tilde", "log_snr", "alpha", "sigma", "g2", "quadrature_weight", "samples_per_node",
    "s_tot", "s_tot_stderr", "s_tot_rate", "s_tot_rate_stderr", "s_tot_cumulative",
    "thermo_length_tot", "thermo_length_tot_stderr", "entropy_t_min", "entropy_t_min_stderr",
    "kl_prior", "kl_prior_stderr", "w2", "diffusion_integral", "speed_limit_bound",
    "data_second_moment", "ce_prior_term", "ce_constant_term",
)


@dataclass
class Hooks:
    """Callbacks for tests and progress reports; they run in the main process (only with jobs = 1)."""

    #: Called after every finished training epoch of an item: (item, loss-log entry).
    on_epoch: Optional[Callable[[Item, dict[str, Any]], None]] = None
    #: Called after every item, finished or skipped: (item, event record).
    on_item: Optional[Callable[[Item, dict[str, Any]], None]] = None


def epoch_file_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.nc"


def item_directory(out: Path, item: Item) -> Path:
    return out / ITEMS_DIR / item.name


def missing_epochs(out: Path, item: Item) -> list[int]:
    """Epochs of the item whose result file does not exist yet."""
    directory = item_directory(out, item)
    return [epoch for epoch in item.epochs if not (directory / epoch_file_name(epoch)).is_file()]


# --- the output directory ---------------------------------------------------------------------

def prepare_output(plan: Plan, out: str | Path) -> Path:
    """Create DIR and its plan.json, or check that an existing DIR contains the same plan."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {str(out)!r} is a file; give a directory for --out")
    plan_path = out / PLAN_FILE
    record = json.loads(plan.fingerprint())
    if plan_path.is_file():
        try:
            saved = json.loads(plan_path.read_text())
        except (OSError, ValueError) as error:
            raise OutputError(f"cannot read {str(plan_path)!r}: {error}; delete the directory or choose another --out") from None
        if not same_plan(saved.get("fingerprint"), record):
            raise OutputError(
                f"{str(out)!r} contains the sweep of another plan ({saved.get('recipe')!r} at scale "
                f"{saved.get('scale')!r}, or the same recipe with different settings); choose another --out"
            )
        return out
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"output directory {str(out)!r} exists and is not a reproduce directory; choose another --out")
    try:
        (out / ITEMS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output directory {str(out)!r}: {error.strerror}; choose another --out") from None
    write_json_atomic(plan_path, {**plan.describe(), "fingerprint": record, "package_version": __version__})
    return out


def same_plan(saved: Any, current: dict[str, Any]) -> bool:
    """Return whether a saved plan fingerprint describes the current plan.

    A plan written before a measurement or training setting existed lacks that key. It still
    matches when the current plan leaves the setting at its default, because the default
    reproduces the behaviour that the sweep ran with.
    """
    if saved == current:
        return True
    if not isinstance(saved, dict) or saved.get("items") is None or len(saved["items"]) != len(current["items"]):
        return False
    defaults = {
        "measure": {f.name: f.default for f in dataclasses.fields(MeasureSettings)},
        "train": {f.name: f.default for f in dataclasses.fields(TrainSettings)},
    }
    items = []
    for old, new in zip(saved["items"], current["items"]):
        new = dict(new)
        for section, section_defaults in defaults.items():
            if isinstance(old.get(section), dict) and isinstance(new.get(section), dict):
                new[section] = {
                    key: value for key, value in new[section].items()
                    if key in old[section] or key not in section_defaults or value != section_defaults[key]
                }
        items.append(new)
    return saved == {**current, "items": items}


def append_event(out: Path, event: dict[str, Any]) -> None:
    """Append one JSON line to DIR/events.jsonl (single writes of one line, from the main process)."""
    line = json.dumps(event, default=str) + "\n"
    with open(out / EVENTS_FILE, "a", encoding="utf-8") as handle:
        handle.write(line)


def read_events(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / EVENTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- one item ---------------------------------------------------------------------------------

def run_item(item: Item, out: Path, recipe: str, scale: str, on_epoch: Optional[Callable] = None) -> dict[str, Any]:
    """Train the item as far as its missing measurements need, then measure them.

    Return the event record: what was done and how long it took.
    """
    started = time.perf_counter()
    directory = item_directory(out, item)
    missing = missing_epochs(out, item)
    event: dict[str, Any] = {"item": item.name, "missing_epochs": missing}
    if not missing:
        return {**event, "action": "skipped"}
    directory.mkdir(parents=True, exist_ok=True)
    run = directory / RUN_DIR
    event.update(_train_if_needed(item, run, missing, on_epoch))
    measured = []
    for epoch in missing:
        dataset = measure_epoch(item, run, epoch, recipe, scale)
        write_dataset(dataset, directory / epoch_file_name(epoch), overwrite=True)
        measured.append(epoch)
        logger.info("%s: measured epoch %d: S_NN = %.6g nats", item.name, epoch, float(dataset["s_nn"]))
    return {**event, "action": "finished", "measured_epochs": measured, "seconds": round(time.perf_counter() - started, 3)}


def _train_if_needed(item: Item, run: Path, missing: list[int], on_epoch: Optional[Callable]) -> dict[str, Any]:
    from .train import train
    from .train import io as train_io

    needed = [e for e in missing if not (run / train_io.epoch_dir_name(e) / "config.json").is_file()]
    if not needed:
        return {"trained": False}
    state = train_io.find_state(run) if run.is_dir() else None
    resumed_from = 0
    if state is not None:
        resumed_from = int(json.loads((state / "config.json").read_text()).get("epoch", 0))
    elif run.is_dir():
        # A run stopped before its first saved epoch: nothing to resume, start it again.
        logger.info("%s: the run directory has no saved state; starting the training again", item.name)
        shutil.rmtree(run)
    logger.info("%s: training epochs %d to %d", item.name, resumed_from + 1, item.train.epochs)
    callback = None if on_epoch is None else (lambda entry: on_epoch(item, entry))
    train(item.train, run, resume=True, on_epoch=callback)
    return {"trained": True, "resumed_from_epoch": resumed_from}


def measure_epoch(item: Item, run: Path, epoch: int, recipe: str, scale: str) -> xr.Dataset:
    """Measure the checkpoint of one epoch under its training process; add generated samples."""
    from .api import load_model, resolve_data, resolve_process, resolve_reference
    from .probe import measure
    from .train import io as train_io

    checkpoint = run / train_io.epoch_dir_name(epoch)
    model = load_model(str(checkpoint))
    process = resolve_process(model, None)
    data = resolve_data(model, item.measure_data)
    reference = resolve_reference(model, data, None)
    provenance = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": model.fingerprint,
        "recipe": recipe,
        "scale": scale,
        "item": item.name,
        "item_key": dict(item.key),
        "epoch": epoch,
    }
    dataset = measure(model, process, data, item.measure, reference=reference, provenance=provenance)
    if item.sampling is not None and epoch in item.sampling.epochs:
        _add_samples(dataset, model, process, data, item)
    return dataset


def _add_samples(dataset: xr.Dataset, model, process, data, item: Item) -> None:
    from .sampling import sample

    plan = item.sampling
    result = sample(model, process, plan.count, plan.settings, second_moment=data.second_moment())
    flat = result.x.numpy().reshape(plan.count, -1)
    dataset["generated"] = xr.DataArray(
        flat,
        dims=("sample", "component"),
        attrs={
            "units": "data units",
            "long_name": "samples generated by the network, flattened",
            "item_shape": json.dumps(list(model.data_shape)),
            "pixel_range": json.dumps(list(data.pixel_range) if data.pixel_range else None),
            "sampler": json.dumps(result.metadata(), default=str),
        },
    )
    if result.labels is not None:
        dataset["generated_labels"] = xr.DataArray(
            result.labels.numpy(), dims=("sample",), attrs={"units": "1", "long_name": "class label of each generated sample"}
        )


# --- the sweep --------------------------------------------------------------------------------

def run_plan(plan: Plan, out: str | Path, jobs: int = 1, hooks: Optional[Hooks] = None) -> list[dict[str, Any]]:
    """Run every unfinished item; return the event records of this invocation.

    With jobs > 1, items run in that many spawned worker processes, each with one torch thread.
    A failed item is logged and recorded; the other items still run. Ctrl-C or SIGTERM raises
    KeyboardInterrupt after the workers have stopped; the item in progress is recorded as
    interrupted, and a re-run resumes it.
    """
    out = prepare_output(plan, out)
    hooks = hooks or Hooks()
    pending = [item for item in plan.items if missing_epochs(out, item)]
    pending_names = {item.name for item in pending}
    events = []
    for item in plan.items:
        if item.name not in pending_names:
            event = {"item": item.name, "action": "skipped", "time": _now()}
            append_event(out, event)
            events.append(event)
            logger.info("%s: finished in an earlier run; skipped", item.name)
            if hooks.on_item is not None:
                hooks.on_item(item, event)
    logger.info("%d of %d items to run with %d job(s)", len(pending), len(plan.items), jobs)
    with interrupts.catch_signals():
        if jobs <= 1:
            _run_in_this_process(pending, out, plan, hooks, events)
        else:
            _run_in_workers(pending, out, plan, jobs, hooks, events)
    return events


def _run_in_this_process(pending: list[Item], out: Path, plan: Plan, hooks: Hooks, events: list) -> None:
    for position, item in enumerate(pending):
        try:
            event = _run_and_record(item, out, plan, hooks.on_epoch)
        except KeyboardInterrupt:
            # The writes of this process unwind through their cleanup, so nothing is half written.
            _record_interrupted(out, pending[position:])
            raise
        events.append(event)
        if hooks.on_item is not None:
            hooks.on_item(item, event)


def _run_in_workers(pending: list[Item], out: Path, plan: Plan, jobs: int, hooks: Hooks, events: list) -> None:
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(logging.getLogger("entropy_probe").getEffectiveLevel(),),
    )
    recorded: set[str] = set()
    try:
        futures = {pool.submit(_worker, item, str(out), plan.recipe, plan.scale): item for item in pending}
        for future in concurrent.futures.as_completed(futures):
            item = futures[future]
            event = future.result()
            if event.get("action") == "failed":
                logger.error("%s failed: %s", item.name, event.get("error"))
            event["time"] = _now()
            append_event(out, event)
            recorded.add(item.name)
            events.append(event)
            if hooks.on_item is not None:
                hooks.on_item(item, event)
    except BaseException:
        # Stop the workers now instead of waiting for their items. A re-run resumes them.
        _terminate_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        unrecorded = [item for item in pending if item.name not in recorded]
        for item in unrecorded:
            remove_partial_writes(item_directory(out, item))
        _record_interrupted(out, unrecorded)
        raise
    pool.shutdown(wait=True)


def _record_interrupted(out: Path, items: list[Item]) -> None:
    """Record each of `items` as interrupted, or as finished when its last write came before the signal."""
    for item in items:
        action = "interrupted" if missing_epochs(out, item) else "finished"
        append_event(out, {"item": item.name, "action": action, "time": _now()})
        logger.info("%s: %s", item.name, "interrupted; a re-run resumes it" if action == "interrupted" else "finished")


def _terminate_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Kill every worker with SIGTERM, whose default action the workers keep (exit at once)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14 and later
    if terminate is not None:
        terminate()
        return
    # NOTE: older Pythons have no public way to stop running workers; _processes is the
    # executor's own table of worker processes.
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()


#: Names of what an atomic write leaves while it runs: `.NAME.XXXXXXXX.tmp` files,
#: `.NAME.XXXXXXXX` staging folders and `.NAME.old.XXXXXXXX` folders moved aside (see checkpoint.py).
_MOVED_ASIDE = re.compile(r"\.(?P<name>.+)\.old\.[A-Za-z0-9_]+")


def remove_partial_writes(directory: Path) -> None:
    """Delete what a killed process left of its atomic writes below `directory`.

    Every write goes to a hidden temporary file or folder that is renamed into place when it is
    complete, so those hidden entries are removed. A checkpoint folder moved aside
    (`.NAME.old.*`) whose replacement was never renamed into place is moved back to NAME.
    """
    if not directory.is_dir():
        return
    for parent, folders, files in os.walk(directory):
        base = Path(parent)
        for name in files:
            if name.startswith("."):
                (base / name).unlink(missing_ok=True)
        for name in [folder for folder in folders if folder.startswith(".")]:
            folders.remove(name)
            moved = _MOVED_ASIDE.fullmatch(name)
            target = base / moved.group("name") if moved else None
            if target is not None and not target.exists():
                os.replace(base / name, target)
                logger.info("restored %s from the copy that an interrupted save moved aside", target)
            else:
                shutil.rmtree(base / name, ignore_errors=True)


def _run_and_record(item: Item, out: Path, plan: Plan, on_epoch) -> dict[str, Any]:
    try:
        event = run_item(item, out, plan.recipe, plan.scale, on_epoch)
    except (UserError, ValueError, RuntimeError, OSError) as error:
        logger.error("%s failed: %s", item.name, error)
        event = {"item": item.name, "action": "failed", "error": f"{type(error).__name__}: {error}"}
    event["time"] = _now()
    append_event(out, event)
    return event


def _init_worker(log_level: int = logging.WARNING) -> None:
    """Set up a spawned worker: one torch thread, no progress bars, the parent's log level."""
    import torch

    # Ctrl-C reaches the whole process group, but only the main process handles it (it kills the workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    os.environ.setdefault("ENTROPY_PROBE_NO_PROGRESS", "1")
    # A spawned worker starts with fresh logging, so it takes the level of the -q/-v options from the parent.
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("entropy_probe").setLevel(log_level)
    logging.getLogger("matplotlib").setLevel(max(log_level, logging.WARNING))


def _worker(item: Item, out: str, recipe: str, scale: str) -> dict[str, Any]:
    try:
        return run_item(item, Path(out), recipe, scale)
    except Exception as error:  # noqa: BLE001 - reported to the main process, which records it
        logger.debug("%s", traceback.format_exc())
        return {"item": item.name, "action": "failed", "error": f"{type(error).__name__}: {error}"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --- combining --------------------------------------------------------------------------------

def combine(plan: Plan, out: str | Path) -> xr.Dataset:
    """Gather every item's measurements (and training losses) into one Dataset on the study's axes."""
    out = Path(out)
    axes = plan.axes
    dims = [axis.name for axis in axes]
    shape = [len(axis.values) for axis in axes]
    epochs = plan.epochs
    results: dict[tuple[int, ...], dict[int, xr.Dataset]] = {}
    for index, item in zip(np.ndindex(*shape), plan.items):
        directory = item_directory(out, item)
        found = {e: read_dataset(directory / epoch_file_name(e)) for e in item.epochs if (directory / epoch_file_name(e)).is_file()}
        results[index] = found
    first = next((ds for found in results.values() for ds in found.values()), None)
    if first is None:
        raise OutputError(f"no item of {str(out)!r} has a finished measurement yet; run 'entropy-probe reproduce' first")

    variables = _gather_measurements(results, shape, dims, epochs)
    variables.update(_gather_losses(plan, out, shape, dims))
    dataset = xr.Dataset(variables)
    dataset = dataset.assign_coords(_coordinates(plan, epochs))
    for name in INVARIANT_VARIABLES:
        if name in dataset:
            dataset[name] = _drop_constant_dims(dataset[name])
    missing = [item.name for item in plan.items if missing_epochs(out, item)]
    dataset.attrs = _combined_attrs(plan, first, missing)
    return dataset


def _gather_measurements(results, shape, dims, epochs) -> dict[str, xr.DataArray]:
    """Stack scalars to (axes..., epoch), node variables to (axes..., epoch, node)."""
    datasets = [ds for found in results.values() for ds in found.values()]
    nodes = {ds.sizes["t"] for ds in datasets}
    if len(nodes) != 1:
        raise OutputError(f"the measurements have different node counts {sorted(nodes)}; a study needs one count")
    node_count = nodes.pop()
    templates: dict[str, xr.DataArray] = {}
    for ds in datasets:
        for name in ["t", *ds.data_vars]:
            templates.setdefault(name, ds[name])
    sample_count = max((ds.sizes.get("sample", 0) for ds in datasets), default=0)
    component_count = max((ds.sizes.get("component", 0) for ds in datasets), default=0)

    arrays: dict[str, np.ndarray] = {}
    var_dims: dict[str, tuple[str, ...]] = {}
    for name, template in templates.items():
        extra: tuple[str, ...]
        if template.dims == ():
            extra, extra_shape = (), ()
        elif template.dims == ("t",):
            extra, extra_shape = ("node",), (node_count,)
        elif template.dims == ("sample", "component"):
            extra, extra_shape = ("sample", "component"), (sample_count, component_count)
        elif template.dims == ("sample",):
            extra, extra_shape = ("sample",), (sample_count,)
        else:
            continue
        arrays[name] = np.full(tuple(shape) + (len(epochs),) + extra_shape, np.nan)
        var_dims[name] = tuple(dims) + ("epoch",) + extra

    for index, found in results.items():
        for epoch, ds in found.items():
            e = epochs.index(epoch)
            for name, array in arrays.items():
                if name not in ds.variables:
                    continue
                values = np.asarray(ds[name].values, dtype=np.float64)
                target = array[index + (e,)]
                if values.ndim == 2:
                    target[: values.shape[0], : values.shape[1]] = values
                elif values.ndim == 1:
                    target[: values.shape[0]] = values
                else:
                    array[index + (e,)] = values
    variables = {
        name: xr.DataArray(array, dims=var_dims[name], attrs=_variable_attrs(templates[name]))
        for name, array in arrays.items()
    }
    variables.update(_gather_costs(results, shape, dims, epochs))
    return variables


def _gather_costs(results, shape, dims, epochs) -> dict[str, xr.DataArray]:
    """Wall time and network evaluations of every measurement, from its attributes."""
    seconds = np.full(tuple(shape) + (len(epochs),), np.nan)
    evaluations = np.full_like(seconds, np.nan)
    for index, found in results.items():
        for epoch, ds in found.items():
            seconds[index + (epochs.index(epoch),)] = float(ds.attrs.get("wall_time_seconds", np.nan))
            evaluations[index + (epochs.index(epoch),)] = float(ds.attrs.get("network_evaluations", np.nan))
    target = tuple(dims) + ("epoch",)
    return {
        "measure_seconds": xr.DataArray(seconds, dims=target, attrs={"units": "s", "long_name": "wall time of the measurement"}),
        "network_evaluations": xr.DataArray(evaluations, dims=target, attrs={"units": "1", "long_name": "network evaluations of the measurement"}),
    }


def _variable_attrs(template: xr.DataArray) -> dict[str, Any]:
    attrs = {key: value for key, value in template.attrs.items() if key in ("units", "long_name", "item_shape", "pixel_range")}
    attrs.setdefault("units", "1")
    if template.name == "t":
        attrs["long_name"] = "diffusion time of the node (0 = data)"
    return attrs


def _gather_losses(plan: Plan, out: Path, shape, dims) -> dict[str, xr.DataArray]:
    from .train.io import read_loss_log

    logs = {}
    for index, item in zip(np.ndindex(*shape), plan.items):
        logs[index] = read_loss_log(item_directory(out, item) / RUN_DIR)
    train_epochs = sorted({entry["epoch"] for log in logs.values() for entry in log})
    if not train_epochs:
        return {}
    position = {epoch: i for i, epoch in enumerate(train_epochs)}
    loss = np.full(tuple(shape) + (len(train_epochs),), np.nan)
    seconds = np.full_like(loss, np.nan)
    for index, log in logs.items():
        for entry in log:
            loss[index + (position[entry["epoch"]],)] = entry["loss"]
            seconds[index + (position[entry["epoch"]],)] = entry.get("seconds", np.nan)
    weightings = {item_directory(out, item).name: item.train.weighting for item in plan.items}
    loss_name = {
        "sigma2": "training loss E|σ e_θ + σ k x_t + ε|², summed over dimensions (sigma2 weighting)",
        "likelihood": "training loss (t_max − t_min) E (g²/2)|e_θ − s_c|² (likelihood weighting)",
    }
    if len(set(weightings.values())) == 1:
        weighting = plan.items[0].train.weighting
        loss_units = NATS if weighting == "likelihood" else "1"
        loss_attrs = {"units": loss_units, "long_name": loss_name[weighting], "weighting": weighting}
    else:
        # The items of one study may train with different loss weightings, whose values and
        # units differ, so the attribute records the weighting of every item.
        loss_attrs = {
            "units": "1 (sigma2 weighting) or nats (likelihood weighting)",
            "long_name": "training loss; its weighting differs between items",
            "weighting": json.dumps(weightings),
        }
    train_dims = tuple(dims) + ("train_epoch",)
    coordinate = xr.DataArray(np.asarray(train_epochs), dims=("train_epoch",), attrs={"units": "epochs", "long_name": "training epoch of the loss log"})
    return {
        "train_loss": xr.DataArray(loss, dims=train_dims, coords={"train_epoch": coordinate}, attrs=loss_attrs),
        "train_epoch_seconds": xr.DataArray(seconds, dims=train_dims, coords={"train_epoch": coordinate}, attrs={"units": "s", "long_name": "wall time of the training epoch"}),
    }


def _coordinates(plan: Plan, epochs: list[int]) -> dict[str, Any]:
    coords: dict[str, Any] = {}
    for axis in plan.axes:
        attrs = {"units": axis.units, "long_name": axis.long_name}
        if axis.coordinate_values() != list(axis.values):
            attrs["values"] = json.dumps(dict(zip(axis.labels, axis.values)))
        coords[axis.name] = (axis.name, axis.coordinate_values(), attrs)
    coords["epoch"] = ("epoch", np.asarray(epochs), {"units": "epochs", "long_name": "training epoch of the checkpoint"})
    for derived in plan.derived:
        axis = next(a for a in plan.axes if a.name == derived.axis)
        values = np.asarray(axis.values, dtype=np.float64) * derived.factor
        if np.all(values == np.round(values)):
            values = values.astype(np.int64)
        coords[derived.name] = (derived.axis, values, {"units": derived.units, "long_name": derived.long_name})
    return coords


def _drop_constant_dims(array: xr.DataArray) -> xr.DataArray:
    """Remove the dimensions along which the non-NaN values are all equal.

    Seed and epoch go whenever that holds. Other axes go only when they have more than one
    value, so that an axis of one value (d = 3 alone, say) stays where it belongs.
    """
    for dim in list(array.dims):
        if dim in ("node", "sample", "component"):
            continue
        if array.sizes[dim] == 1 and dim not in ("seed", "epoch"):
            continue
        values = array.transpose(dim, ...).values
        reference = np.array(values[0], dtype=np.float64)
        for row in values[1:]:
            reference = np.where(np.isnan(reference), row, reference)
        same = all(np.all((row == reference) | np.isnan(row)) for row in values)
        if same:
            array = xr.DataArray(reference, dims=[d for d in array.dims if d != dim], attrs=array.attrs)
    return array


def _combined_attrs(plan: Plan, first: xr.Dataset, missing: list[str]) -> dict[str, Any]:
    keep = ("quadrature_rule", "quadrature_variable", "nodes", "samples_per_node", "seed", "time_convention", "stderr_method")
    attrs: dict[str, Any] = {key: first.attrs[key] for key in keep if key in first.attrs}
    entry = plan.entry.fields
    attrs.update(
        {
            "title": TITLE,
            "recipe": plan.recipe,
            "scale": plan.scale,
            "scale_description": plan.description,
            "analysis": plan.analysis,
            "recipe_title": entry.get("title", ""),
            "paper": entry.get("paper", ""),
            "reported": json.dumps(entry.get("reported", {})),
            "plan": json.dumps(plan.describe(), default=str),
            "variables": json.dumps(plan.variables),
            "items_total": len(plan.items),
            "items_missing": json.dumps(missing),
            "package": "entropy-probe",
            "package_version": __version__,
            "created": _now(),
            "python_version": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs",
            "common_random_numbers": (
                "every checkpoint of the study is measured with the same seed, nodes and samples on "
                "the same data, so it sees the same (x_0, ε) draws"
            ),
            "missing_values": "NaN where an item or epoch has no finished measurement",
        }
    )
    return attrs


def write_combined(plan: Plan, out: str | Path) -> tuple[xr.Dataset, Path]:
    """Combine the results and write DIR/combined.nc atomically."""
    dataset = combine(plan, out)
    path = write_dataset(dataset, Path(out) / COMBINED_FILE, overwrite=True)
    return dataset, path


def reproduce(
    plan: Plan,
    out: str | Path,
    jobs: int = 1,
    figures: bool = True,
    hooks: Optional[Hooks] = None,
) -> tuple[xr.Dataset, list[dict[str, Any]]]:
    """Run the plan, write the combined Dataset, the figures and the summary; return them.

    Raises UserError after writing when some items failed; a re-run retries them. Ctrl-C or
    SIGTERM raises KeyboardInterrupt, leaving every file written so far whole.
    """
    started = time.perf_counter()
    with interrupts.catch_signals():
        events = run_plan(plan, out, jobs=jobs, hooks=hooks)
        dataset, path = write_combined(plan, out)
        elapsed = time.perf_counter() - started
        logger.info("wrote %s (%.0f s)", path, elapsed)
        if figures:
            from .analysis import summarize_study
            from .study_figures import plot_study

            plot_study(dataset, Path(out) / "figures")
            _write_text(Path(out) / "summary.txt", summarize_study(dataset))
    failed = [event["item"] for event in events if event.get("action") == "failed"]
    if failed:
        raise UserError(
            f"{len(failed)} of {len(plan.items)} items failed ({', '.join(failed)}); their errors are in "
            f"{str(Path(out) / EVENTS_FILE)!r}. The combined Dataset has NaN for them; run the same command again to retry"
        )
    return dataset, events


def _write_text(path: Path, text: str) -> None:
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

