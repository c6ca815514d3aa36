"""Outputs written through temporary names get the modes of the umask, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from entropy_probe.filemodes import process_umask

torch.set_num_threads(1)

UMASK = 0o022
FILE_MODE = 0o644
FOLDER_MODE = 0o755


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tree(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


def _run_with_umask(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENTROPY_PROBE_NO_PROGRESS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "entropy_probe", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: os.umask(UMASK),
    )


@pytest.fixture
def umask_022():
    old = os.umask(UMASK)
    process_umask.cache_clear()
    yield
    os.umask(old)
    process_umask.cache_clear()


def test_process_umask_reads_current_value(umask_022):
    assert process_umask() == UMASK
    assert os.umask(UMASK) == UMASK


def test_measure_outputs_readable_by_group_and_others(mixture_dir, tmp_path):
    oracle = tmp_path / "oracle"
    done = _run_with_umask("oracle", "gaussian", "--dim", "2", "--out", str(oracle), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result, plot = tmp_path / "r.nc", tmp_path / "r.png"
    done = _run_with_umask(
        "measure", str(mixture_dir), "--samples", "16", "--strata", "4", "--out", str(result), "--plot", str(plot), cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr

    for path in (result, plot, tmp_path / "r.options.json"):
        assert _mode(path) == FILE_MODE, path
    for path in _tree(oracle):
        assert _mode(path) == (FOLDER_MODE if path.is_dir() else FILE_MODE), path


def test_training_run_readable_by_group_and_others(umask_022, tmp_path):
    from entropy_probe.train import TrainSettings, train

    settings = TrainSettings(
        architecture="mlp", data="gmm:dim=2,n=16", epochs=1, batch_size=16,
        network={"widths": [4], "fourier_features": 2}, progress=False,
    )
    run = tmp_path / "run"
    train(settings, run)

    paths = _tree(run)
    assert {path.name for path in paths} >= {"epoch-0001", "train-state", "config.json", "model.safetensors"}
    for path in paths:
        assert _mode(path) == (FOLDER_MODE if path.is_dir() else FILE_MODE), path


def test_sample_file_readable_by_group_and_others(umask_022, mixture_dir, tmp_path):
    from entropy_probe.cli import main

    out = tmp_path / "s.npz"
    with pytest.raises(SystemExit) as exit:
        main(["sample", str(mixture_dir), "-n", "4", "--out", str(out)])
    assert exit.value.code in (0, None)
    assert _mode(out) == FILE_MODE
