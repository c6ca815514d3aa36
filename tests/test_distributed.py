"""Runs over two processes (torchrun, gloo on the CPU) against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from entropy_probe import distributed
from entropy_probe.estimators import NodeSums
from entropy_probe.results import read_dataset

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", ENTROPY_PROBE_NO_PROGRESS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


DESIGNS = {
    "grid": ["--samples", "40", "--nodes", "17"],
    "importance-rounds": [
        "--estimator", "importance", "--proposal", "pilot", "--strata", "16", "--samples", "8",
        "--antithetic", "--target-stderr", "0.02", "--batch-size", "24",
    ],
}


@pytest.mark.parametrize("design", list(DESIGNS))
def test_two_processes_match_one(cli_run, mixture_dir, tmp_path, design):
    options = ["--process", "vp", *DESIGNS[design]]
    single_dir, double_dir = tmp_path / "one", tmp_path / "two"
    single_dir.mkdir()
    double_dir.mkdir()
    done = cli_run("measure", str(mixture_dir), *options, "--out", str(single_dir / "r.nc"))
    assert done.returncode == 0, done.stderr
    done = _torchrun("-m", "entropy_probe", "measure", str(mixture_dir), *options, "--out", str(double_dir / "r.nc"))
    assert done.returncode == 0, done.stderr

    one, two = read_dataset(single_dir / "r.nc"), read_dataset(double_dir / "r.nc")
    assert two.attrs["world_size"] == 2
    for name in ("s_nn", "s_nn_stderr", "cross_term", "denoising_loss", "s_tot"):
        assert float(two[name]) == pytest.approx(float(one[name]), rel=1e-10, abs=0), name
    assert two.attrs["samples_total"] == one.attrs["samples_total"]
    assert two.attrs["network_evaluations"] == one.attrs["network_evaluations"]
    # Rank 0 alone prints the summary and writes the result and its options.
    assert done.stdout.count("S_NN") == 1
    assert sorted(path.name for path in double_dir.iterdir()) == ["r.nc", "r.options.json"]


def test_data_parallel_step_matches_full_batch(tmp_path):
    single, double = tmp_path / "one.npy", tmp_path / "two.npy"
    done = subprocess.run([sys.executable, str(HERE / "distributed_step.py"), str(single)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = _torchrun(str(HERE / "distributed_step.py"), str(double))
    assert done.returncode == 0, done.stderr
    one, two = np.load(single), np.load(double)
    assert one[-1] == 1
    assert two[-1] == 2
    np.testing.assert_allclose(two[:-1], one[:-1], rtol=1e-12)


def test_single_process_helpers_are_identities():
    assert not distributed.launched_by_torchrun()
    context = distributed.init_from_environment("cpu")
    assert not context.distributed
    assert context.is_main
    sums = NodeSums(("nn",), np.array([2.0, 3.0]), np.array([[1.0], [2.0]]), np.array([[4.0], [5.0]]))
    reduced = distributed.all_reduce_sums(sums)
    np.testing.assert_array_equal(reduced.total, sums.total)
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(module, context) is module
    assert distributed.unwrap_model(module) is module


@pytest.mark.parametrize("n", [0, 1, 7, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shards_partition_the_items(n, world_size):
    covered = []
    for rank in range(world_size):
        context = distributed.Context(rank=rank, world_size=world_size)
        start, stop = distributed.shard_range(n, context)
        covered.extend(range(start, stop))
        assert list(distributed.shard(list(range(n)), context)) == list(range(start, stop))
        assert stop - start in (n // world_size, -(-n // world_size))
    assert covered == list(range(n))


def test_data_parallel_training_matches_one_process(cli_run, tmp_path):
    # 61 items in batches of 20: the last batch has one item, so one rank's share is empty.
    options = [
        "train", "--model", "mlp", "--data", "gmm:dim=2,n=61,seed=1", "--epochs", "2", "--batch-size", "20",
        "--noise-draws", "1", "--widths", "16,16", "--fourier-features", "8", "--lr", "1e-2",
    ]
    env = {"OMP_NUM_THREADS": "1", "ENTROPY_PROBE_NO_PROGRESS": "1"}
    done = cli_run(*options, "--out", str(tmp_path / "one"), env=env)
    assert done.returncode == 0, done.stderr
    done = _torchrun("-m", "entropy_probe", *options, "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("wrote") == 1
    from safetensors.torch import load_file

    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "two" / "loss.jsonl").read_text().splitlines()]
    reference = [json.loads(line)["loss"] for line in (tmp_path / "one" / "loss.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
