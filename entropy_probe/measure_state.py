"""The resumable state of an interrupted measurement, saved beside its output.

RESULT.nc.partial.npz contains the float64 sums of every cell after the last finished batch, the
number of samples they include, and a fingerprint of the settings that decide the numbers.
`measure --resume` reloads it and continues from the next sample with the same accumulators,
so the result equals that of an uninterrupted run exactly. A state whose fingerprint differs
from the current settings is rejected, because it would mix two different measurements.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from . import interrupts
from .errors import OutputError
from .estimators import NodeSums
from .filemodes import publish_file

SUFFIX = ".partial.npz"

#: Settings that change the numbers at most by float rounding, so a resumed run may change them.
FREE_SETTINGS = ("batch_size", "device", "progress", "prefetch", "memory_budget_gb", "out", "plot", "overwrite", "resume", "save_every")


def state_path(out: str | Path) -> Path:
    """Return the path of the state of the measurement whose result goes to `out`."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def deciding(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the options that decide the numbers (all but FREE_SETTINGS) as plain JSON values."""
    fixed_settings = {name: value for name, value in options.items() if name not in FREE_SETTINGS}
    return json.loads(json.dumps(fixed_settings, sort_keys=True, default=str))


def fingerprint(options: Mapping[str, Any]) -> str:
    """Return the SHA-256 of the options that decide the numbers."""
    return hashlib.sha256(json.dumps(deciding(options), sort_keys=True).encode()).hexdigest()


def save(path: str | Path, sums: NodeSums, done: int, total: int, options: Mapping[str, Any]) -> None:
    """Write the state through a temporary file and a rename, so a reader sees old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle,
                count=sums.count,
                total=sums.total,
                total_sq=sums.total_sq,
                quantities=np.array(sums.quantities),
                done=np.array(done, dtype=np.int64),
                samples=np.array(total, dtype=np.int64),
                fingerprint=np.array(fingerprint(options)),
                options=np.array(json.dumps(deciding(options), sort_keys=True)),
            )
            handle.flush()
            os.fsync(handle.fileno())
        publish_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, options: Mapping[str, Any]) -> tuple[NodeSums, int]:
    """Return the saved sums and the number of samples done; refuse a state of other settings."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            stored = str(arrays["fingerprint"])
            saved_options = json.loads(str(arrays["options"]))
            sums = NodeSums(
                tuple(str(name) for name in arrays["quantities"]),
                arrays["count"].astype(np.float64),
                arrays["total"].astype(np.float64),
                arrays["total_sq"].astype(np.float64),
            )
            done = int(arrays["done"])
    except FileNotFoundError:
        raise OutputError(f"--resume was given, but there is no saved state {str(path)!r}; run without --resume") from None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise OutputError(
            f"cannot read the saved state {str(path)!r} ({error}); delete it and run without --resume"
        ) from None
    if stored != fingerprint(options):
        current = deciding(options)
        changed = [
            f"{name}={current.get(name)!r} (saved: {saved_options.get(name)!r})"
            for name in sorted(set(current) | set(saved_options))
            if current.get(name) != saved_options.get(name)
        ]
        raise OutputError(
            f"cannot resume from {str(path)!r} with other settings: {', '.join(changed) or 'unknown'}; give "
            f"the options of the interrupted run, or delete the state and run without --resume"
        )
    return sums, done


class StateSaver:
    """The `on_batch` callback of `measure` that keeps the state on disk.

    It saves at most every `every` seconds (0: after every batch); `flush` saves the latest
    sums at once, as after an interruption. Signals wait until a save is complete.
    """

    def __init__(self, path: str | Path, options: Mapping[str, Any], samples: int, every: float, done: int = 0) -> None:
        self.path = Path(path)
        self.options = dict(options)
        self.samples = samples
        self.every = every
        self.latest: Optional[tuple[NodeSums, int]] = None
        #: Samples included in the state on disk (those of a resumed state at first).
        self.saved = done
        self.last_save = time.monotonic()

    def __call__(self, sums: NodeSums, done: int) -> None:
        self.latest = (sums, done)
        if time.monotonic() - self.last_save >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.latest is None or self.latest[1] == self.saved:
            return
        sums, done = self.latest
        with interrupts.deferred():
            save(self.path, sums, done, self.samples, self.options)
            self.saved = done
            self.last_save = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
