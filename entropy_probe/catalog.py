"""Catalog of known checkpoints and experiment recipes, stored as data files in `catalog/`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def resolve_catalog_name(name: str) -> Optional[Path]:
    """Local directory of a catalog entry, or None when `name` is not in the catalog."""
    return None
