"""Adapter for oracle checkpoints written by `entropy-probe oracle`."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import CONFIG_NAME, load_oracle
from . import Adapter, register, reject_options


def _detect(path: Path) -> bool:
    config = path / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == "entropy-probe" and data.get("kind") == "oracle"


def _load(path: Path, device: str = "cpu", **options):
    reject_options("oracle", path, options)
    return load_oracle(path).to(device)


register(Adapter("oracle", _detect, _load, "exact oracles: gaussian, gmm, empirical"))
