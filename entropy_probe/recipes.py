"""Experiment recipes of the catalog, resolved into a plan of train-and-measure items.

A catalog entry of kind `recipe` may carry a `reproduce` section that `entropy-probe reproduce`
runs. Its top-level settings are those of the publication the recipe reproduces (for the
`paper-*` entries, A. Premkumar, "Neural Entropy", NeurIPS 2025). Each named scale overrides
some of them:

    "reproduce": {
      "analysis": "epochs" | "training_size",
      "axes": [{"name": "dim", "values": [3, 6, 9], "labels": ..., "units": "1", "long_name": ...}, ...],
      "derived": {"n_train": {"axis": "n_c", "factor": 10, "units": "images", "long_name": ...}},
      "variables": {"data_dir": "what the user must give"},
      "train": {fields of TrainSettings, with "model" for the architecture},
      "measure": {"data": SPEC or null, "epochs": "saved" | "last" | [E1, ...], fields of MeasureSettings},
      "sampling": {"count": N, "epochs": "saved" | "last" | [E1, ...], fields of SamplerSettings} or null,
      "scales": {"tiny": {...}, "cpu": {...}, "paper": {...}}
    }

Every combination of axis values is one item: one training run, measured at the listed epochs.

- A scale merges into the top-level settings: objects merge key by key, and lists and all other
  values replace. Its `axes` is an object that overrides axes by name (`{"seed": {"values": [0]}}`).
- Strings may contain placeholders `{AXIS}` (the item's value on that axis) and `{VARIABLE}`.
  A string that is a single placeholder takes the value with its type (an int stays an int).
- A value `{"by": AXIS, "values": {LABEL: VALUE, ...}}` is chosen per item by its label on AXIS.
- `measure.data` null measures on the checkpoint's own held-out data. Items share the measurement
  seed, nodes and samples, so all checkpoints of a study see the same draws.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any, Optional

from .catalog import CatalogEntry, CatalogError, get_entry, load_catalog
from .errors import SpecError
from .probe import MeasureSettings
from .sampling import SamplerSettings
from .train import TrainSettings

ANALYSES = ("epochs", "training_size")

#: Keys of the `train` section that are not TrainSettings fields of the same name.
_TRAIN_RENAMES = {"model": "architecture"}
#: TrainSettings fields that describe the machine, not the experiment.
_MACHINE_FIELDS = ("device", "progress")


@dataclass(frozen=True)
class Axis:
    """One dimension of a study: its values, their labels (directory names, coordinates) and units."""

    name: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]
    units: str = "1"
    long_name: str = ""

    def coordinate_values(self) -> list[Any]:
        """Coordinate values in the combined Dataset: numbers stay numbers, others become labels."""
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values):
            return list(self.values)
        return list(self.labels)


@dataclass(frozen=True)
class Derived:
    """A coordinate computed from an axis by a factor, such as N = 10 n_c."""

    name: str
    axis: str
    factor: float
    units: str = "1"
    long_name: str = ""


@dataclass
class SamplingPlan:
    """Generated samples stored with the measurements of some epochs."""

    count: int
    epochs: list[int]
    settings: SamplerSettings


@dataclass
class Item:
    """One training run of a study and the epochs at which it is measured."""

    #: (axis name, label) pairs in axis order.
    key: tuple[tuple[str, str], ...]
    values: dict[str, Any]
    train: TrainSettings
    measure: MeasureSettings
    #: Data spec to measure on; None = the checkpoint's held-out data.
    measure_data: Optional[str]
    epochs: list[int]
    sampling: Optional[SamplingPlan]

    @property
    def name(self) -> str:
        """Directory name of the item, such as 'dim=3_process=vp_seed=0'."""
        return "_".join(f"{axis}={label}" for axis, label in self.key)

    def record(self) -> dict[str, Any]:
        """Return the item's settings without the machine-dependent fields (device, progress)."""
        train = {k: v for k, v in self.train.record().items() if k not in _MACHINE_FIELDS}
        measure = {k: v for k, v in dataclasses.asdict(self.measure).items() if k not in _MACHINE_FIELDS}
        sampling = None
        if self.sampling is not None:
            sampler = {k: v for k, v in dataclasses.asdict(self.sampling.settings).items() if k not in _MACHINE_FIELDS}
            sampling = {"count": self.sampling.count, "epochs": self.sampling.epochs, **sampler}
        return {
            "name": self.name,
            "key": dict(self.key),
            "train": train,
            "measure": measure,
            "measure_data": self.measure_data,
            "epochs": self.epochs,
            "sampling": sampling,
        }


@dataclass
class Plan:
    """A recipe at one scale: its axes and the items to run."""

    recipe: str
    scale: str
    analysis: str
    axes: list[Axis]
    derived: list[Derived]
    items: list[Item]
    variables: dict[str, str]
    description: str
    entry: CatalogEntry
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> list[int]:
        """Every measured epoch of any item, sorted."""
        return sorted({e for item in self.items for e in item.epochs})

    def fingerprint(self) -> str:
        """JSON text of everything that decides the results (not the machine it runs on)."""
        record = {"recipe": self.recipe, "scale": self.scale, "items": [item.record() for item in self.items]}
        return json.dumps(record, sort_keys=True, default=str)

    def describe(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "scale": self.scale,
            "description": self.description,
            "analysis": self.analysis,
            "variables": self.variables,
            "axes": [dataclasses.asdict(axis) for axis in self.axes],
            "derived": [dataclasses.asdict(d) for d in self.derived],
            "items": [item.record() for item in self.items],
        }


# --- reading a recipe -------------------------------------------------------------------------

def reproduce_section(entry: CatalogEntry) -> dict[str, Any]:
    """Return the `reproduce` section of a recipe entry; raise SpecError for other entries."""
    section = entry.fields.get("reproduce")
    if entry.kind != "recipe" or not isinstance(section, dict):
        raise SpecError(
            f"catalog entry {entry.name!r} has no reproduce section; reproducible recipes: "
            f"{', '.join(reproducible_recipes()) or 'none'}"
        )
    return section


def reproducible_recipes() -> list[str]:
    return sorted(name for name, e in load_catalog().items() if e.kind == "recipe" and isinstance(e.fields.get("reproduce"), dict))


def merge(base: Any, override: Any) -> Any:
    """Merge `override` into a copy of `base`: objects merge by key, other values replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = copy.deepcopy(base)
        for key, value in override.items():
            merged[key] = merge(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def scale_settings(entry: CatalogEntry, scale: str) -> dict[str, Any]:
    """Return the recipe's settings with the scale's overrides applied, axes included."""
    section = reproduce_section(entry)
    scales = section.get("scales")
    if not isinstance(scales, dict) or not scales:
        raise CatalogError(f"recipe {entry.name!r}: reproduce.scales must be a non-empty object of named scales")
    if scale not in scales:
        raise SpecError(f"recipe {entry.name!r} has no scale {scale!r}; choose one of {', '.join(scales)}")
    override = scales[scale]
    if not isinstance(override, dict):
        raise CatalogError(f"recipe {entry.name!r}: scale {scale!r} must be an object, not {type(override).__name__} {override!r}")
    base = {key: value for key, value in section.items() if key != "scales"}
    override_axes = override.get("axes", {})
    settings = merge(base, {key: value for key, value in override.items() if key != "axes"})
    settings["axes"] = _merge_axes(entry.name, scale, base.get("axes"), override_axes)
    return settings


def _merge_axes(recipe: str, scale: str, axes: Any, overrides: Any) -> list[dict[str, Any]]:
    if not isinstance(axes, list) or not axes or not all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in axes):
        raise CatalogError(f"recipe {recipe!r}: reproduce.axes must be a non-empty list of objects with a name")
    if not isinstance(overrides, dict):
        raise CatalogError(f"recipe {recipe!r}: the axes of scale {scale!r} must be an object keyed by axis name")
    names = [a["name"] for a in axes]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise CatalogError(f"recipe {recipe!r}: scale {scale!r} overrides unknown axes {unknown}; the axes are {names}")
    return [merge(axis, overrides.get(axis["name"], {})) for axis in axes]


# --- building the plan ------------------------------------------------------------------------

def load_plan(recipe: str, scale: str, variables: Optional[dict[str, str]] = None, device: str = "cpu") -> Plan:
    """Resolve a recipe of the catalog at a scale into the plan of its items."""
    if recipe not in load_catalog():
        raise SpecError(
            f"unknown recipe {recipe!r}; reproducible recipes: {', '.join(reproducible_recipes()) or 'none'} "
            f"(see 'entropy-probe catalog list')"
        )
    entry = get_entry(recipe)
    try:
        settings = scale_settings(entry, scale)
        return build_plan(entry, scale, settings, variables or {}, device)
    except CatalogError as error:
        raise CatalogError(f"{error}; fix the file {str(entry.file)!r}") from None


def build_plan(entry: CatalogEntry, scale: str, settings: dict[str, Any], variables: dict[str, str], device: str) -> Plan:
    analysis = settings.get("analysis")
    if analysis not in ANALYSES:
        raise CatalogError(f"recipe {entry.name!r}: reproduce.analysis must be one of {', '.join(ANALYSES)}, not {analysis!r}")
    axes = [_parse_axis(entry.name, raw) for raw in settings["axes"]]
    names = [axis.name for axis in axes]
    if len(set(names)) != len(names):
        raise CatalogError(f"recipe {entry.name!r}: axis names {names} repeat")
    derived = [_parse_derived(entry.name, name, raw, names) for name, raw in settings.get("derived", {}).items()]
    declared = settings.get("variables", {})
    if not isinstance(declared, dict):
        raise CatalogError(f"recipe {entry.name!r}: reproduce.variables must be an object of NAME: description")
    unknown = sorted(set(variables) - set(declared))
    if unknown:
        raise SpecError(
            f"recipe {entry.name!r} takes no variable {unknown[0]!r}; its variables are: {', '.join(declared) or 'none'}"
        )

    items = []
    used: set[str] = set()
    for combination in _combinations(axes):
        context = {axis.name: value for axis, (value, _) in zip(axes, combination)}
        labels = {axis.name: label for axis, (_, label) in zip(axes, combination)}
        resolver = _Resolver(entry.name, scale, context, labels, variables, declared, used)
        items.append(_build_item(entry.name, settings, resolver, axes, combination, device))
    unused = sorted(set(variables) - used)
    if unused:
        option = f"--{unused[0].replace('_', '-')}"
        raise SpecError(
            f"recipe {entry.name!r} at scale {scale!r} would ignore {option} {variables[unused[0]]!r}, because no "
            f"item of this scale reads {unused[0]!r}; leave {option} out"
        )
    description = settings.get("description", "")
    return Plan(entry.name, scale, analysis, axes, derived, items, dict(variables), description, entry, settings)


def _parse_axis(recipe: str, raw: dict[str, Any]) -> Axis:
    name = raw["name"]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise CatalogError(f"recipe {recipe!r}: axis name {name!r} must be an identifier such as n_c")
    values = raw.get("values")
    if not isinstance(values, list) or not values:
        raise CatalogError(f"recipe {recipe!r}: axis {name!r} needs a non-empty list of values, not {values!r}")
    labels = raw.get("labels", [str(v) for v in values])
    if not isinstance(labels, list) or len(labels) != len(values):
        raise CatalogError(f"recipe {recipe!r}: axis {name!r} has {len(values)} values but labels {labels!r}")
    labels = [str(label) for label in labels]
    bad = [label for label in labels if not re.fullmatch(r"[A-Za-z0-9.+-]+", label)]
    if bad or len(set(labels)) != len(labels):
        raise CatalogError(
            f"recipe {recipe!r}: axis {name!r} needs distinct labels of letters, digits, '.', '+' and '-' "
            f"(they name directories); got {labels}"
        )
    return Axis(name, tuple(values), tuple(labels), str(raw.get("units", "1")), str(raw.get("long_name", name)))


def _parse_derived(recipe: str, name: str, raw: Any, axes: list[str]) -> Derived:
    if not isinstance(raw, dict) or raw.get("axis") not in axes or not isinstance(raw.get("factor"), (int, float)):
        raise CatalogError(f"recipe {recipe!r}: derived {name!r} needs an axis among {axes} and a numeric factor")
    return Derived(name, raw["axis"], float(raw["factor"]), str(raw.get("units", "1")), str(raw.get("long_name", name)))


def _combinations(axes: list[Axis]) -> list[tuple[tuple[Any, str], ...]]:
    combinations: list[tuple[tuple[Any, str], ...]] = [()]
    for axis in axes:
        combinations = [c + ((value, label),) for c in combinations for value, label in zip(axis.values, axis.labels)]
    return combinations


class _Resolver:
    """Substitute placeholders and per-axis tables for one item."""

    def __init__(self, recipe, scale, context, labels, variables, declared, used: set[str]) -> None:
        self.recipe = recipe
        #: Names of the variables that some placeholder used, shared by the resolvers of a plan.
        self.used = used
        self.scale = scale
        self.context = context
        self.labels = labels
        self.variables = variables
        self.declared = declared

    def resolve(self, value: Any, where: str) -> Any:
        if isinstance(value, dict) and set(value) == {"by", "values"}:
            return self.resolve(self._table(value, where), where)
        if isinstance(value, dict):
            return {key: self.resolve(v, f"{where}.{key}") for key, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, where) for v in value]
        if isinstance(value, str):
            return self._substitute(value, where)
        return value

    def _table(self, table: dict[str, Any], where: str) -> Any:
        axis = table["by"]
        if axis not in self.labels:
            raise CatalogError(f"recipe {self.recipe!r}: {where} is chosen by axis {axis!r}, which is not an axis of the study")
        values = table["values"]
        label = self.labels[axis]
        if not isinstance(values, dict) or label not in values:
            raise CatalogError(
                f"recipe {self.recipe!r}, scale {self.scale!r}: {where} has no value for {axis}={label}; "
                f"add it to the table"
            )
        return values[label]

    def _substitute(self, text: str, where: str) -> Any:
        fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
        if not fields:
            return text
        lookup: dict[str, Any] = {}
        for name in fields:
            if name in self.context:
                lookup[name] = self.context[name]
            elif name in self.variables:
                lookup[name] = self.variables[name]
                self.used.add(name)
            elif name in self.declared:
                option = f"--{name.replace('_', '-')} {'DIR' if name.endswith('dir') else 'VALUE'}"
                raise SpecError(
                    f"recipe {self.recipe!r} at scale {self.scale!r} needs the variable {name!r} "
                    f"({self.declared[name]}); give it with {option}"
                )
            else:
                raise CatalogError(f"recipe {self.recipe!r}: {where} uses the unknown placeholder {{{name}}}")
        if re.fullmatch(r"\{[A-Za-z_][A-Za-z0-9_]*\}", text):
            return lookup[fields[0]]
        return text.format_map(lookup)


def _build_item(recipe: str, settings: dict[str, Any], resolver: _Resolver, axes, combination, device: str) -> Item:
    train_raw = resolver.resolve(settings.get("train", {}), "train")
    measure_raw = resolver.resolve(settings.get("measure", {}), "measure")
    sampling_raw = resolver.resolve(settings.get("sampling"), "sampling")

    train = _train_settings(recipe, train_raw, device)
    saved = sorted(train.checkpoint_epochs())
    measure_raw = dict(measure_raw)
    epochs = _epoch_list(recipe, measure_raw.pop("epochs", "saved"), saved, "measure.epochs")
    measure_data = measure_raw.pop("data", None)
    measure = _dataclass_from(MeasureSettings, measure_raw, recipe, "measure")
    measure.device = device
    measure.progress = False
    measure.validate()

    sampling = None
    if sampling_raw:
        sampling_raw = dict(sampling_raw)
        count = sampling_raw.pop("count", 16)
        sample_epochs = _epoch_list(recipe, sampling_raw.pop("epochs", "last"), epochs, "sampling.epochs")
        sampler = _dataclass_from(SamplerSettings, sampling_raw, recipe, "sampling")
        sampler.device = device
        sampler.progress = False
        sampler.validate()
        if not isinstance(count, int) or count < 1:
            raise CatalogError(f"recipe {recipe!r}: sampling.count must be a positive integer, not {count!r}")
        sampling = SamplingPlan(count, sample_epochs, sampler)

    key = tuple((axis.name, label) for axis, (_, label) in zip(axes, combination))
    values = {axis.name: value for axis, (value, _) in zip(axes, combination)}
    return Item(key, values, train, measure, measure_data, epochs, sampling)


def _train_settings(recipe: str, raw: dict[str, Any], device: str) -> TrainSettings:
    values = {_TRAIN_RENAMES.get(key, key): value for key, value in raw.items()}
    settings = _dataclass_from(TrainSettings, values, recipe, "train")
    settings.device = device
    settings.progress = False
    if isinstance(settings.save_epochs, tuple):
        settings.save_epochs = list(settings.save_epochs)
    settings.validate()
    return settings


def _dataclass_from(cls, values: dict[str, Any], recipe: str, section: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise CatalogError(f"recipe {recipe!r}: {section} has unknown fields {unknown}; allowed: {', '.join(sorted(names))}")
    return cls(**values)


def _epoch_list(recipe: str, value: Any, available: list[int], where: str) -> list[int]:
    if value == "saved":
        return list(available)
    if value == "last":
        return [max(available)]
    if isinstance(value, list) and value and all(isinstance(e, int) and not isinstance(e, bool) for e in value):
        missing = sorted(set(value) - set(available))
        if missing:
            raise CatalogError(f"recipe {recipe!r}: {where} lists epochs {missing} that are not among {available}")
        return sorted(set(value))
    raise CatalogError(f"recipe {recipe!r}: {where} must be 'saved', 'last' or a list of epochs, not {value!r}")
