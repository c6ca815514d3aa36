"""Catalog of known checkpoints and experiment recipes, stored as data files in `catalog/`.

Each entry is one JSON file `catalog/NAME.json` (JSON rather than TOML because tomllib needs
Python 3.11 and the package supports 3.10). Fields of every entry:

- `schema_version` (1), `name` (the file name without .json), `kind`, `title`;
- optional `paper`, `description`, `notes`, `sources` (URLs the facts were checked against)
  and `verification` (which source supports which fact).

Kinds:

- `hub`: public weights on the Hugging Face hub. `hub_id` (ORG/NAME), `revision`,
  `process` (the training process as a spec of this package), `prediction_type`, `scheduler`,
  `image` (`channels`, `size`, `pixel_range`, `quantization_step`). The entry resolves to the
  snapshot in the local Hugging Face cache; nothing is downloaded.
- `shipped`: a checkpoint stored inside the catalog. `path` (a folder relative to the catalog
  folder) and optionally `process`, `data` and `size` (`architecture`, `parameters`,
  `weights_dtype`, `bytes`). Optional `files` holds the SHA-256 and size of every file.
  Optional `recorded` holds reference numbers, such as S_NN with its standard error, and the
  settings that produced them. Optional `provenance` holds the training command, seed,
  epochs, wall time and machine.
- `recipe`: an experiment without weights. `recipe` (data, process, architecture, training and
  evaluation settings), optionally `reported` (the published numbers) and `reproduce` (the
  settings that `entropy-probe reproduce` runs, with named scales; see `entropy_probe.recipes`).

The files are found as the package `entropy_probe.catalog_data` (the `catalog/` folder, mapped by
setuptools so that installs carry it), else in `catalog/` next to the package in a source
checkout. Folders listed in $ENTROPY_PROBE_CATALOG (separated by the path separator) add entries;
an entry there replaces a built-in one of the same name.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import CheckpointError, SpecError
from .formatting import format_estimate

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KINDS = ("hub", "shipped", "recipe")
PACKAGE = "entropy_probe.catalog_data"
ENVIRONMENT_VARIABLE = "ENTROPY_PROBE_CATALOG"


class CatalogError(CheckpointError):
    """A malformed catalog file, or an entry that cannot be resolved to weights."""


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog file: its parsed fields and where it lies."""

    name: str
    kind: str
    title: str
    fields: dict[str, Any]
    file: Path

    @property
    def folder(self) -> Path:
        return self.file.parent


# --- locating and reading ---------------------------------------------------------------------

def builtin_directory() -> Optional[Path]:
    """Find the folder of the built-in catalog files; return None when there is none."""
    try:
        from importlib.resources import files

        packaged = Path(str(files(PACKAGE)))
        if packaged.is_dir():
            return packaged
    except (ModuleNotFoundError, TypeError):
        pass
    source = Path(__file__).resolve().parent.parent / "catalog"
    return source if source.is_dir() else None


def catalog_directories() -> list[Path]:
    """List the built-in folder first, then the folders of $ENTROPY_PROBE_CATALOG."""
    folders = []
    builtin = builtin_directory()
    if builtin is not None:
        folders.append(builtin)
    for item in os.environ.get(ENVIRONMENT_VARIABLE, "").split(os.pathsep):
        if item.strip():
            folders.append(Path(item).expanduser())
    return folders


def load_catalog() -> dict[str, CatalogEntry]:
    """Read and validate all entries by name; later folders replace entries of the same name."""
    entries: dict[str, CatalogEntry] = {}
    for folder in catalog_directories():
        if not folder.is_dir():
            raise CatalogError(
                f"catalog folder {str(folder)!r} (from ${ENVIRONMENT_VARIABLE}) does not exist; create it or "
                f"correct ${ENVIRONMENT_VARIABLE}"
            )
        for file in sorted(folder.glob("*.json")):
            try:
                entry = read_entry(file)
            except CatalogError as error:
                if "upgrade entropy-probe" in str(error):
                    raise
                fix = (
                    "reinstall entropy-probe"
                    if folder == builtin_directory()
                    else f"fix the file, or move it out of the folder given in ${ENVIRONMENT_VARIABLE}"
                )
                raise CatalogError(f"{error}; {fix}") from None
            entries[entry.name] = entry
    return entries


def read_entry(file: Path) -> CatalogEntry:
    """Parse and validate one catalog file."""
    try:
        fields = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CatalogError(f"cannot read catalog file {str(file)!r}: {error}") from None
    if not isinstance(fields, dict):
        raise CatalogError(f"catalog file {str(file)!r} must hold a JSON object")
    validate_entry(fields, file)
    return CatalogEntry(fields["name"], fields["kind"], fields["title"], fields, file)


def _require(fields: dict[str, Any], key: str, kind: type | tuple[type, ...], file: Path) -> Any:
    if key not in fields:
        raise CatalogError(f"catalog file {str(file)!r} lacks the field {key!r}")
    value = fields[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        preview = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise CatalogError(f"catalog file {str(file)!r}: field {key!r} must be {expected}, not {type(value).__name__} {preview}")
    return value


def validate_entry(fields: dict[str, Any], file: Path) -> None:
    """Raise CatalogError when a catalog entry breaks the schema described in this module."""
    from .processes import from_spec

    version = _require(fields, "schema_version", int, file)
    if version > SCHEMA_VERSION:
        raise CatalogError(
            f"catalog file {str(file)!r} has schema_version {version}, newer than {SCHEMA_VERSION}; upgrade entropy-probe"
        )
    name = _require(fields, "name", str, file)
    if name != file.stem:
        raise CatalogError(f"catalog file {str(file)!r}: name {name!r} must equal the file name {file.stem!r}")
    kind = _require(fields, "kind", str, file)
    if kind not in KINDS:
        raise CatalogError(f"catalog file {str(file)!r}: unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    _require(fields, "title", str, file)
    sources = fields.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) and s.startswith("https://") for s in sources):
        raise CatalogError(f"catalog file {str(file)!r}: sources must be a list of https:// URLs")

    if "process" in fields:
        try:
            from_spec(_require(fields, "process", str, file))
        except SpecError as error:
            raise CatalogError(f"catalog file {str(file)!r}: {error}") from None
    if kind == "hub":
        hub_id = _require(fields, "hub_id", str, file)
        if hub_id.count("/") != 1:
            raise CatalogError(f"catalog file {str(file)!r}: hub_id {hub_id!r} must be ORG/NAME")
        _require(fields, "revision", str, file)
        _require(fields, "process", str, file)
        _require(fields, "prediction_type", str, file)
        image = _require(fields, "image", dict, file)
        pixel_range = image.get("pixel_range")
        if not (isinstance(pixel_range, list) and len(pixel_range) == 2 and pixel_range[0] < pixel_range[1]):
            raise CatalogError(f"catalog file {str(file)!r}: image.pixel_range must be [low, high]")
        if not sources:
            raise CatalogError(f"catalog file {str(file)!r}: a hub entry must cite its sources")
    elif kind == "shipped":
        path = _require(fields, "path", str, file)
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise CatalogError(f"catalog file {str(file)!r}: path {path!r} must be relative and stay inside the catalog folder")
        _validate_shipped_record(fields, file)
    else:
        _require(fields, "recipe", dict, file)
        if "reproduce" in fields:
            reproduce = _require(fields, "reproduce", dict, file)
            scales = reproduce.get("scales")
            if not isinstance(scales, dict) or not scales:
                raise CatalogError(
                    f"catalog file {str(file)!r}: reproduce.scales must be a non-empty object of named scales, "
                    f"not {type(scales).__name__} {scales!r}"
                )
            for scale, settings in scales.items():
                if not isinstance(settings, dict):
                    raise CatalogError(
                        f"catalog file {str(file)!r}: reproduce.scales.{scale} must be an object of settings, "
                        f"not {type(settings).__name__} {settings!r}"
                    )


def _validate_shipped_record(fields: dict[str, Any], file: Path) -> None:
    """Check the optional `files` and `recorded` fields of a shipped entry."""
    files = fields.get("files", {})
    if not isinstance(files, dict):
        raise CatalogError(f"catalog file {str(file)!r}: files must map file names to their sha256 and bytes")
    for file_name, facts in files.items():
        digest = facts.get("sha256") if isinstance(facts, dict) else None
        if not (isinstance(digest, str) and len(digest) == 64) or "/" in file_name or file_name.startswith("."):
            raise CatalogError(f"catalog file {str(file)!r}: files.{file_name} needs a 64-digit sha256 and a plain file name")
    recorded = fields.get("recorded")
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise CatalogError(f"catalog file {str(file)!r}: recorded must be an object")
    for key in ("s_nn", "s_nn_stderr"):
        value = recorded.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise CatalogError(f"catalog file {str(file)!r}: recorded.{key} must be a number, not {value!r}")
    if not isinstance(recorded.get("settings"), dict):
        raise CatalogError(f"catalog file {str(file)!r}: recorded.settings must hold the measurement settings")


def get_entry(name: str) -> CatalogEntry:
    """Return the entry called `name`; raise SpecError listing the names when there is none."""
    entries = load_catalog()
    if name not in entries:
        raise SpecError(
            f"unknown catalog entry {name!r}; known entries: {', '.join(sorted(entries)) or 'none'} "
            f"(see 'entropy-probe catalog list')"
        )
    return entries[name]


# --- resolving to files -----------------------------------------------------------------------

def entry_path(entry: CatalogEntry, revision: Optional[str] = None) -> Path:
    """Return the local folder of an entry's weights; raise CatalogError when they are not here."""
    if entry.kind == "hub":
        from .adapters.hub import snapshot_path

        hub_id = entry.fields["hub_id"]
        try:
            return snapshot_path(hub_id, revision or entry.fields.get("revision"))
        except CheckpointError as error:
            raise CatalogError(f"catalog entry {entry.name!r} is the hub model {hub_id}: {error}") from None
    if entry.kind == "shipped":
        path = entry.folder / entry.fields["path"]
        if not path.exists():
            raise CatalogError(
                f"catalog entry {entry.name!r} names the shipped files {str(path)!r}, which are missing; "
                f"reinstall entropy-probe"
            )
        return path
    if isinstance(entry.fields.get("reproduce"), dict):
        raise CatalogError(
            f"catalog entry {entry.name!r} is a recipe without weights; run it with "
            f"'entropy-probe reproduce {entry.name} --scale cpu --out DIR', or train it with 'entropy-probe train'"
        )
    raise CatalogError(
        f"catalog entry {entry.name!r} is a recipe without weights; train it with 'entropy-probe train' "
        f"using the settings shown by 'entropy-probe catalog show {entry.name}', then measure the run folder"
    )


def resolve_catalog_name(name: str, revision: Optional[str] = None) -> Optional[Path]:
    """Return the local directory of a catalog entry, or None when `name` is not in the catalog.

    Raises CatalogError when the entry exists but its weights are not on this machine.
    """
    entries = load_catalog()
    if name not in entries:
        return None
    return entry_path(entries[name], revision)


def entry_status(entry: CatalogEntry) -> str:
    """Describe where the entry's weights are, in a word or two for listings."""
    if entry.kind == "recipe":
        return "no weights"
    try:
        entry_path(entry)
    except CatalogError:
        return "not cached" if entry.kind == "hub" else "missing"
    return "cached" if entry.kind == "hub" else "present"


# --- text for the command line ----------------------------------------------------------------

#: Maximum length of a process spec printed in full in listings; longer ones print as NAME:...
LISTING_PROCESS_WIDTH = 32


def entry_bytes(entry: CatalogEntry) -> Optional[int]:
    """Return the recorded size of a shipped entry's files in bytes, or None when it records none."""
    size = entry.fields.get("size")
    if isinstance(size, dict) and isinstance(size.get("bytes"), int):
        return size["bytes"]
    return None


def entry_size(entry: CatalogEntry) -> str:
    size = entry_bytes(entry)
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def entry_process(entry: CatalogEntry) -> str:
    spec = entry.fields.get("process")
    if not isinstance(spec, str):
        return "-"
    if len(spec) <= LISTING_PROCESS_WIDTH:
        return spec
    # Keep the leading key=value parameters that fit (for ddpm the schedule), then an ellipsis.
    name, _, rest = spec.partition(":")
    abbreviated = name + ":"
    for part in rest.split(","):
        if len(abbreviated) + len(part) + len(",...") > LISTING_PROCESS_WIDTH:
            break
        abbreviated += part + ","
    return abbreviated + "..." if abbreviated.endswith(",") else name + ":..."


def recorded_s_nn(entry: CatalogEntry) -> str:
    """Return the recorded S_NN as "value ± stderr" in nats, or "-" when the entry records none."""
    recorded = entry.fields.get("recorded")
    if not isinstance(recorded, dict) or "s_nn" not in recorded:
        return "-"
    return format_estimate(recorded["s_nn"], recorded.get("s_nn_stderr"))


def format_listing(entries: dict[str, CatalogEntry]) -> str:
    rows = [("name", "kind", "status", "size", "process", "S_NN [nats]", "title")]
    for e in sorted(entries.values(), key=lambda e: (KINDS.index(e.kind), e.name)):
        rows.append((e.name, e.kind, entry_status(e), entry_size(e), entry_process(e), recorded_s_nn(e), e.title))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(row[:-1], widths)) + "  " + row[-1] for row in rows
    )


def format_entry(entry: CatalogEntry) -> str:
    """Summary lines, the local status, then the entry's JSON."""
    lines = [f"{entry.name}  ({entry.kind})", entry.title, ""]
    if entry.kind == "hub":
        try:
            lines.append(f"weights: {entry_path(entry)}")
        except CatalogError:
            lines.append(f"weights: not in the local cache; see 'entropy-probe measure {entry.name}' for how to fetch them")
        lines.append(f"measure: entropy-probe measure {entry.name} --data SPEC --out result.nc")
    elif entry.kind == "shipped":
        try:
            lines.append(f"weights: {entry_path(entry)}")
        except CatalogError as error:
            lines.append(f"weights: {error}")
        lines += format_shipped_record(entry)
    else:
        lines.append("weights: none (a recipe to train)")
        scales = entry.fields.get("reproduce", {}).get("scales")
        if isinstance(scales, dict):
            lines.append(f"reproduce: entropy-probe reproduce {entry.name} --scale SCALE --out DIR  (scales: {', '.join(scales)})")
    lines += [f"file:    {entry.file}", "", json.dumps(entry.fields, indent=2, ensure_ascii=False)]
    return "\n".join(lines)


def format_shipped_record(entry: CatalogEntry) -> list[str]:
    """Summarise the recorded numbers and the provenance of a shipped entry, one fact per line."""
    fields = entry.fields
    lines = []
    recorded = fields.get("recorded")
    if isinstance(recorded, dict):
        settings = recorded.get("settings", {})
        lines += ["", f"recorded S_NN: {recorded_s_nn(entry)} nats"]
        if "ce_bound_bpd" in recorded:
            lines.append(f"recorded cross-entropy bound: {format_estimate(recorded['ce_bound_bpd'], recorded.get('ce_bound_bpd_stderr'))} bits/dim")
        if "s_tot" in recorded:
            lines.append(f"recorded S_tot (exact law): {format_estimate(recorded['s_tot'], recorded.get('s_tot_stderr'))} nats")
        if settings.get("estimator") == "importance":
            # Importance sampling uses strata; the grid's rule and nodes are recorded but unused.
            settings = {key: value for key, value in settings.items() if key not in ("rule", "nodes")}
        lines.append(
            "measured with: " + ", ".join(f"{key} {value}" for key, value in settings.items())
        )
        if "command" in recorded:
            lines.append(f"repeat with: {recorded['command']}")
    provenance = fields.get("provenance")
    if isinstance(provenance, dict):
        machine = provenance.get("machine", {})
        lines += [
            "",
            f"trained with: {provenance.get('train_command', '?')}",
            f"seed {provenance.get('seed')}, {provenance.get('epochs')} epochs ({provenance.get('steps')} steps), "
            f"{provenance.get('train_wall_time_seconds')} s wall time",
            f"machine: {machine.get('cpu', '?')}, {machine.get('cores_available', '?')} cores, torch {machine.get('torch', '?')}",
            f"entropy-probe {provenance.get('package_version', '?')}, built {provenance.get('built', '?')} by {provenance.get('build_script', '?')}",
        ]
    files = fields.get("files")
    if isinstance(files, dict):
        lines.append("")
        lines += [f"{name}: sha256 {facts['sha256']} ({facts.get('bytes', '?')} bytes)" for name, facts in files.items()]
    return lines
