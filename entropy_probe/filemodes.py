"""Permission bits for outputs written under a temporary name and renamed into place.

`tempfile.mkstemp` creates files with mode 0600 and `tempfile.mkdtemp` folders with mode 0700,
whatever the umask, so an output renamed from such a name would stay readable by its owner only.
The atomic writers call `publish_file` and `publish_folder` before the rename, which give the
modes that `open` and `mkdir` would give: 0o666 and 0o777 without the bits of the umask.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def process_umask() -> int:
    """Return the umask of this process, read once and cached.

    Linux (4.7 and later) reports it in /proc/self/status, which reads it without changing it.
    Elsewhere `os.umask` has to set a value to return the old one: it sets 0o077 and restores the
    old value at once, so a file that another thread creates in between is owner-only, never wider.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    current = os.umask(0o077)
    os.umask(current)
    return current


def file_mode() -> int:
    return 0o666 & ~process_umask()


def folder_mode() -> int:
    return 0o777 & ~process_umask()


def publish_file(path: str | Path) -> None:
    """Give a file written under a temporary name the mode that `open` would have given it."""
    os.chmod(path, file_mode())


def publish_folder(path: str | Path) -> None:
    """Give a folder made by `tempfile.mkdtemp` the mode that `mkdir` would have given it."""
    os.chmod(path, folder_mode())


def publish_tree(root: str | Path) -> None:
    """Give `root` and every folder and file below it the modes of `mkdir` and `open`.

    Some writers choose their own mode: safetensors 0.8.0 creates its files with 0600.
    """
    root = Path(root)
    publish_folder(root)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        if path.is_dir():
            publish_folder(path)
        else:
            publish_file(path)
