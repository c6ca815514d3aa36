"""Shared fixtures: small oracles and a runner for the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("ENTROPY_PROBE_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: their networks are small and the cores may be shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def run_cli(*args: str, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m entropy_probe ARGS` in a subprocess and capture its output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "entropy_probe", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli_run():
    return run_cli


@pytest.fixture(scope="session")
def gaussian_params():
    rng = np.random.default_rng(1)
    dim = 4
    return rng.uniform(-1.0, 1.0, dim), rng.uniform(0.3, 1.5, dim)


@pytest.fixture(scope="session")
def mixture_dir(tmp_path_factory):
    """A 2-D, 5-component mixture oracle checkpoint made by `paper_mixture`."""
    from entropy_probe.checkpoint import save_oracle
    from entropy_probe.oracles import paper_mixture

    path = tmp_path_factory.mktemp("oracles") / "gmm2"
    save_oracle(paper_mixture(2, seed=3), path)
    return path
