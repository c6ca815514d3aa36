"""Interrupted and resumed jobs, non-finite network outputs, and batch-size invariance.

The signal tests run the installed console script in a subprocess, wait until the job has saved
some progress, send SIGINT (or SIGTERM), and check that `--resume` ends with exactly the numbers
of an uninterrupted run. The other cases run the command line in-process with click's CliRunner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from entropy_probe.cli import cli, register_commands
from entropy_probe.results import read_dataset

torch.set_num_threads(1)
register_commands()

SCRIPT = Path(sys.executable).with_name("entropy-probe")

#: Adapters for the subprocesses: the mixture oracle slowed down, so that a signal reliably
#: arrives in the middle of the measurement, and a network that returns NaN at large noise.
ADAPTERS = '''
import time

import torch

from entropy_probe.checkpoint import load_oracle


def slow(source, **options):
    oracle = load_oracle(source)
    inner = oracle.ve_score

    def ve_score(x_tilde, sigma_tilde, labels=None):
        time.sleep(0.05)
        return inner(x_tilde, sigma_tilde, labels)

    oracle.ve_score = ve_score
    return oracle


def nan_above_one(source, **options):
    oracle = load_oracle(source)
    inner = oracle.ve_score

    def ve_score(x_tilde, sigma_tilde, labels=None):
        score = inner(x_tilde, sigma_tilde, labels)
        return torch.where((sigma_tilde > 1.0).reshape(-1, *([1] * (score.dim() - 1))), float("nan"), score)

    oracle.ve_score = ve_score
    return oracle
'''

#: A measurement of 9 × 64 samples in 36 batches.
MEASURE = ("--nodes", "9", "--samples", "64", "--batch-size", "16", "--seed", "4")
TRAIN = (
    "train", "--model", "mlp", "--data", "gmm:dim=2,n=64", "--widths", "8,8", "--fourier-features", "4",
    "--noise-draws", "1", "--batch-size", "16", "--epochs", "300", "--save-epochs", "300", "--seed", "2",
)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    (folder / "probe_test_adapters.py").write_text(textwrap.dedent(ADAPTERS))
    return folder


def _env(adapters: Path) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", ENTROPY_PROBE_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(adapters), env.get("PYTHONPATH", "")]))
    return env


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _interrupt(command: list[str], env: dict, ready: Path, signum: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """Start `command`, send `signum` once `ready` exists, and return the finished process."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"{ready} did not appear before the job ended (status {process.returncode}):\n{stderr}")
        time.sleep(0.02)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _numbers(path: Path) -> dict[str, np.ndarray]:
    dataset = read_dataset(path)
    return {name: dataset[name].values for name in dataset.data_vars}


# --- measure ------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_measure_resumes_to_identical_numbers(signum, mixture_dir, adapters, tmp_path):
    reference = tmp_path / "whole.nc"
    assert invoke("measure", str(mixture_dir), *MEASURE, "--out", str(reference)).exit_code == 0

    out = tmp_path / "part.nc"
    state = tmp_path / "part.nc.partial.npz"
    command = [str(SCRIPT), "measure", str(mixture_dir), "--adapter", "probe_test_adapters:slow", *MEASURE, "--save-every", "0", "--out", str(out)]
    stopped = _interrupt(command, _env(adapters), state, signum)
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert "Traceback" not in stopped.stderr
    [line] = _error_lines(stopped.stderr)
    assert "--resume" in line
    assert str(state) in line
    done = int(line.split("interrupted after ")[1].split(" of ")[0])
    assert 0 < done < 9 * 64, line
    assert not out.exists()
    assert state.exists()

    resumed = subprocess.run(command + ["--resume"], env=_env(adapters), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not state.exists()
    whole, part = _numbers(reference), _numbers(out)
    assert whole.keys() == part.keys()
    for name in whole:
        np.testing.assert_array_equal(part[name], whole[name], err_msg=name)
    options = json.loads((tmp_path / "part.options.json").read_text())
    assert options["command"] == "measure"
    assert options["options"]["seed"] == 4


def _partial_state(mixture_dir: Path, tmp_path: Path, *extra: str) -> Path:
    """Save the state of a measurement interrupted before its first batch ended (zero sums)."""
    from entropy_probe import measure_state
    from entropy_probe.estimators import NodeSums

    out = tmp_path / "r.nc"
    dry = invoke("measure", str(mixture_dir), *MEASURE, *extra, "--out", str(out), "--dry-run")
    options = json.loads(dry.output)
    from entropy_probe.checkpoint import load_oracle

    fingerprint = load_oracle(mixture_dir).fingerprint
    # An oracle is its own reference (the data law).
    deciding = {**options, "model_fingerprint": fingerprint, "reference_fingerprint": fingerprint}
    sums = NodeSums.zeros(9, ("nn", "cross", "loss", "tot", "err"))
    measure_state.save(measure_state.state_path(out), sums, 0, 9 * 64, deciding)
    return out


def test_resume_with_other_settings_is_rejected(mixture_dir, tmp_path):
    out = _partial_state(mixture_dir, tmp_path)
    result = invoke("measure", str(mixture_dir), *MEASURE, "--seed", "5", "--out", str(out), "--resume")
    assert result.exit_code == 2
    assert "seed=5 (saved: 4)" in result.output
    assert "without --resume" in result.output
    assert not out.exists()


def test_resume_may_change_the_batch_size(mixture_dir, tmp_path):
    out = _partial_state(mixture_dir, tmp_path)
    result = invoke("measure", str(mixture_dir), *MEASURE, "--batch-size", "7", "--out", str(out), "--resume")
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert not (tmp_path / "r.nc.partial.npz").exists()


def test_saved_state_needs_resume_or_overwrite(mixture_dir, tmp_path):
    out = _partial_state(mixture_dir, tmp_path)
    result = invoke("measure", str(mixture_dir), *MEASURE, "--out", str(out))
    assert result.exit_code == 2
    assert "r.nc.partial.npz" in result.output
    assert "--resume" in result.output
    assert "--overwrite" in result.output
    assert not out.exists()


def test_resume_without_state(mixture_dir, tmp_path):
    out = tmp_path / "r.nc"
    result = invoke("measure", str(mixture_dir), *MEASURE, "--out", str(out), "--resume")
    assert result.exit_code == 2
    assert "no saved state" in result.output
    assert "without --resume" in result.output
    assert not out.exists()


def test_damaged_state_is_rejected(mixture_dir, tmp_path):
    out = tmp_path / "r.nc"
    (tmp_path / "r.nc.partial.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    result = invoke("measure", str(mixture_dir), *MEASURE, "--out", str(out), "--resume")
    assert result.exit_code == 2
    assert "cannot read the saved state" in result.output
    assert "delete it" in result.output


def test_resume_with_target_stderr_is_rejected(mixture_dir, tmp_path):
    result = invoke("measure", str(mixture_dir), "--target-stderr", "0.1", "--out", str(tmp_path / "r.nc"), "--resume")
    assert result.exit_code == 2
    assert "--target-stderr" in result.output


# --- train --------------------------------------------------------------------------------------

def test_interrupted_training_resumes_to_identical_weights(adapters, tmp_path):
    from safetensors.torch import load_file

    reference = tmp_path / "whole"
    assert invoke(*TRAIN, "--no-progress", "--out", str(reference)).exit_code == 0

    out = tmp_path / "part"
    command = [str(SCRIPT), *TRAIN, "--no-progress", "--out", str(out)]
    stopped = _interrupt(command, _env(adapters), out / "train-state" / "config.json", signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    [line] = _error_lines(stopped.stderr)
    assert "--resume" in line
    assert "train-state" in line
    epoch = json.loads((out / "train-state" / "config.json").read_text())["epoch"]
    assert 1 <= epoch < 300
    # The options are recorded when training starts, so the interrupted folder has them too.
    started = json.loads((out / "options.json").read_text())
    assert started["command"] == "train"
    assert started["options"]["out"] == str(out)

    resumed = subprocess.run(command + ["--resume"], env=_env(adapters), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    whole, part = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert whole.keys() == part.keys()
    for name in whole:
        assert torch.equal(whole[name], part[name]), name
    losses = [[json.loads(line)["loss"] for line in (run / "loss.jsonl").read_text().splitlines()] for run in (reference, out)]
    assert losses[0] == losses[1]


# --- numerical guards ---------------------------------------------------------------------------

def test_non_finite_output_names_noise_level(mixture_dir, adapters, tmp_path):
    out = tmp_path / "nan.nc"
    done = subprocess.run(
        [str(SCRIPT), "measure", str(mixture_dir), "--adapter", "probe_test_adapters:nan_above_one", *MEASURE, "--out", str(out)],
        env=_env(adapters), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    [line] = _error_lines(done.stderr)
    assert "non-finite" in line
    assert "--t-min/--t-max" in line
    sigma = float(line.split("σ/α=")[1].split(")")[0])
    assert sigma > 1.0
    assert not out.exists()
    assert not (tmp_path / "nan.nc.partial.npz").exists()


def test_batch_size_keeps_network_s_nn(tmp_path):
    """A trained MLP measured with batch sizes 3, 64 and 576 on the CPU (same seed)."""
    run = tmp_path / "net"
    assert invoke("train", "--model", "mlp", "--data", "gmm:dim=2,n=32", "--widths", "8,8", "--fourier-features", "4", "--epochs", "1", "--no-progress", "--out", str(run)).exit_code == 0
    values = {}
    for batch_size in (3, 64, 576):
        out = tmp_path / f"b{batch_size}.nc"
        result = invoke("measure", str(run), "--data", "gmm:dim=2", *MEASURE[:4], "--batch-size", str(batch_size), "--out", str(out))
        assert result.exit_code == 0, result.output
        values[batch_size] = _numbers(out)
    # The network computes in float32, and its matrix products round differently for other batch
    # sizes; the float64 sums keep that at float32 round-off. The standard error comes from a
    # difference of sums of squares, which magnifies it.
    for batch_size in (64, 576):
        for name in ("s_nn", "cross_term", "denoising_loss"):
            np.testing.assert_allclose(values[batch_size][name], values[3][name], rtol=1e-6, atol=0, err_msg=name)
        np.testing.assert_allclose(values[batch_size]["s_nn_stderr"], values[3]["s_nn_stderr"], rtol=1e-4, atol=0)


# --- options beside outputs ---------------------------------------------------------------------

def test_options_are_saved_beside_outputs(tmp_path):
    oracle = tmp_path / "g"
    assert invoke("oracle", "gaussian", "--dim", "3", "--std", "2", "--out", str(oracle)).exit_code == 0
    record = json.loads((oracle / "options.json").read_text())
    assert record["command"] == "oracle gaussian"
    assert record["options"]["dim"] == 3
    assert record["options"]["std"] == 2.0

    result = tmp_path / "r.nc"
    assert invoke("measure", str(oracle), "--nodes", "5", "--samples", "8", "--seed", "7", "--out", str(result)).exit_code == 0
    record = json.loads((tmp_path / "r.options.json").read_text())
    assert record["command"] == "measure"
    assert record["options"]["seed"] == 7
    assert record["options"]["nodes"] == 5
    assert record["options"]["process"].startswith("vp")
    assert "package_version" in record
    assert record["argv"]


# --- resuming in the library ---------------------------------------------------------------------

RESUMABLE_DESIGNS = {
    "grid": dict(samples=24, nodes=9),
    "importance": dict(estimator="importance", samples=24, strata=8),
    "importance-pilot": dict(estimator="importance", proposal="pilot", samples=24, strata=8, pilot_samples=3),
    "antithetic": dict(samples=24, nodes=9, antithetic=True),
}


@pytest.mark.parametrize("design", list(RESUMABLE_DESIGNS))
def test_resumed_sums_equal_uninterrupted(design, mixture_dir):
    """Stop `measure` after three batches, resume from the sums it reported, compare exactly."""
    from entropy_probe.api import resolve_data
    from entropy_probe.checkpoint import load_oracle
    from entropy_probe.probe import MeasureSettings, measure
    from entropy_probe.processes import from_spec

    model = load_oracle(mixture_dir)
    process = from_spec("vp")
    data = resolve_data(model, None)
    settings = MeasureSettings(seed=3, batch_size=10, progress=False, reference_samples=64, **RESUMABLE_DESIGNS[design])
    whole = measure(model, process, data, settings, reference=model)

    reported = []

    def stop_after_three(sums, done):
        reported.append((sums, done))
        if len(reported) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure(model, process, data, settings, reference=model, on_batch=stop_after_three)
    sums, done = reported[-1]
    # A batch contains 10 evaluations: 10 samples, or 5 antithetic pairs.
    assert done == 3 * reported[0][1]
    assert done == (15 if settings.antithetic else 30)
    part = measure(model, process, data, settings, reference=model, sums=sums, first_item=done, on_batch=lambda *_: None)
    for name in whole.data_vars:
        np.testing.assert_array_equal(part[name].values, whole[name].values, err_msg=name)
