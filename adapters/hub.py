"""Hugging Face hub ids (`ORG/NAME`), resolved from the local cache only.

Nothing is downloaded: `snapshot_download(..., local_files_only=True)` returns the cached
snapshot folder of the requested revision, which then loads like any local diffusers folder.
The cache is the one huggingface_hub uses: $HF_HUB_CACHE, else $HF_HOME/hub, else
~/.cache/huggingface/hub, read from the environment at call time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

from ..errors import CheckpointError
from . import Adapter, register


#: ORG/NAME with the characters the hub allows; paths such as /x/y, ./x or a/b/c do not match.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")


def cache_dir() -> Path:
    """Return the hub cache folder that the environment names at the time of the call."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def fetch_hint(repo_id: str, revision: Optional[str] = None) -> str:
    """Describe the command that fetches a repository on a networked machine."""
    revision_flag = f" --revision {revision}" if revision and revision != "main" else ""
    return (
        f"fetch it on a networked machine with 'hf download {repo_id}{revision_flag}' "
        f"(or 'huggingface-cli download {repo_id}{revision_flag}') and copy the cache folder "
        f"{str(cache_dir())!r} here, or set HF_HOME to where the cache is"
    )


def snapshot_path(repo_id: str, revision: Optional[str] = None) -> Path:
    """Local folder of a cached hub snapshot; CheckpointError when it is not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=str(cache_dir()), local_files_only=True)
    except HFValidationError:
        raise CheckpointError(
            f"{repo_id!r} is not a valid hub id; write it as ORG/NAME, for example google/ddpm-cifar10-32"
        ) from None
    except (LocalEntryNotFoundError, FileNotFoundError):
        what = f"{repo_id!r} at revision {revision!r}" if revision else repr(repo_id)
        raise CheckpointError(f"hub model {what} is not in the local cache and nothing is downloaded; {fetch_hint(repo_id, revision)}") from None
    return Path(folder)


def is_cached(repo_id: str, revision: Optional[str] = None) -> bool:
    try:
        snapshot_path(repo_id, revision)
    except CheckpointError:
        return False
    return True


def load_hub(source: str | Path, *, revision: Optional[str] = None, device: str = "cpu", **options: Any):
    """Load a cached hub id as a diffusers folder."""
    from .diffusers_adapter import detect, load_folder

    repo_id = str(source)
    if not HUB_ID.match(repo_id):
        raise CheckpointError(
            f"checkpoint {repo_id!r} not found: it is neither an existing path, a catalog name nor a "
            f"hub id (ORG/NAME); check the path, or run 'entropy-probe catalog list' for the known names"
        )
    folder = snapshot_path(repo_id, revision)
    if not detect(folder):
        raise CheckpointError(
            f"cached hub model {repo_id!r} ({str(folder)!r}) is not a diffusers folder; "
            f"use --adapter module:function for other formats"
        )
    provenance = {"hub_id": repo_id, "revision": revision or "main", "commit": folder.name}
    return load_folder(folder, device=device, provenance=provenance, **options)


# Hub ids are not local paths, so `detect` never matches. `load_denoiser` calls this adapter
# by name for ORG/NAME sources that are neither paths nor catalog names.
register(Adapter("hub", lambda path: False, load_hub, "Hugging Face hub ids, from the local cache only"))
