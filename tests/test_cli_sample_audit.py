"""`entropy-probe sample` and `entropy-probe audit` through a real subprocess."""

from __future__ import annotations

import json

import numpy as np
import pytest

from entropy_probe.checkpoint import save_oracle
from entropy_probe.data import from_spec
from entropy_probe.oracles import EmpiricalOracle
from entropy_probe.results import read_dataset

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TRAIN = "gmm:dim=2,n=40,sample_seed=1"
HELDOUT = "gmm:dim=2,n=200,sample_seed=2"
SMALL_AUDIT = ["--samples", "32", "--nodes", "9", "--items", "64", "--likelihood-items", "0", "--generate", "64", "--steps", "32"]


@pytest.fixture(scope="module")
def memoriser_dir(tmp_path_factory):
    train = from_spec(TRAIN)
    points, _ = train.get(np.arange(len(train)))
    path = tmp_path_factory.mktemp("oracles") / "memoriser"
    save_oracle(EmpiricalOracle(points), path)
    return path


def error_lines(result) -> list[str]:
    """Lines of stderr that report an error; a traceback fails the test."""
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_sample_writes_npz_and_grid(cli_run, mixture_dir, tmp_path):
    out = tmp_path / "samples.npz"
    grid = tmp_path / "samples.png"
    result = cli_run("-q", "sample", str(mixture_dir), "-n", "50", "--out", str(out), "--grid", str(grid), "--sampler", "ode", "--steps", "16", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert grid.stat().st_size > 0
    with np.load(out, allow_pickle=False) as arrays:
        assert arrays["x"].shape == (50, 2)
        assert np.all(arrays["evaluations"] == 33)
        metadata = json.loads(str(arrays["metadata"]))
    assert metadata["settings"]["sampler"] == "ode"
    assert metadata["prior"].startswith("quasi-invariant")
    assert (tmp_path / "samples.options.json").is_file()
    # The samples read back as data.
    source = from_spec(f"npz:path={out}")
    assert len(source) == 50
    assert source.shape == (2,)
    assert "wrote" in result.stdout


def test_sample_rejects_existing_output(cli_run, mixture_dir, tmp_path):
    out = tmp_path / "samples.npz"
    out.write_bytes(b"keep")
    result = cli_run("sample", str(mixture_dir), "-n", "4", "--out", str(out), env=ONE_THREAD)
    assert result.returncode != 0
    assert len(error_lines(result)) == 1
    assert "exists already" in result.stderr
    assert "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--labels", "a,b"], "invalid --labels"),
        (["--labels", "1"], "unconditional"),
        (["-n", "0"], "-n must be >= 1"),
        (["--t-min", "0"], "t_min"),
    ],
)
def test_sample_bad_input_one_line(cli_run, mixture_dir, tmp_path, arguments, message):
    out = tmp_path / "s.npz"
    result = cli_run("sample", str(mixture_dir), "--out", str(out), "--steps", "2", *arguments, env=ONE_THREAD)
    assert result.returncode != 0
    assert len(error_lines(result)) == 1, result.stderr
    assert message in result.stderr
    assert not out.exists()


def test_sample_ve_prior_from_oracle_moments(cli_run, mixture_dir, tmp_path):
    out = tmp_path / "s.npz"
    result = cli_run("-q", "sample", str(mixture_dir), "-n", "8", "--process", "ve", "--steps", "8", "--out", str(out), env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    with np.load(out, allow_pickle=False) as arrays:
        assert json.loads(str(arrays["metadata"]))["prior"].startswith("moment-matched")


def test_sample_dry_run(cli_run, mixture_dir, tmp_path):
    out = tmp_path / "s.npz"
    result = cli_run("sample", str(mixture_dir), "--out", str(out), "--dry-run", "--sampler", "ode-adaptive", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout)
    assert options["sampler"] == "ode-adaptive"
    assert options["t_min"] == pytest.approx(1e-3)
    assert not out.exists()


def test_audit_flags_memoriser(cli_run, memoriser_dir, tmp_path):
    out = tmp_path / "audit.nc"
    report = tmp_path / "audit.png"
    result = cli_run("-q", "audit", str(memoriser_dir), "--train", TRAIN, "--heldout", HELDOUT, "--out", str(out), "--report", str(report), *SMALL_AUDIT, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert "verdict: memorises training items" in result.stdout
    assert report.stat().st_size > 0
    dataset = read_dataset(out)
    assert all("units" in dataset[name].attrs for name in dataset.variables)
    assert float(dataset["copy_fraction"]) > 0.9
    assert (tmp_path / "audit.options.json").is_file()


def test_audit_rejects_distribution_training_data(cli_run, memoriser_dir, tmp_path):
    out = tmp_path / "audit.nc"
    result = cli_run("audit", str(memoriser_dir), "--train", "gmm:dim=2", "--heldout", HELDOUT, "--out", str(out), *SMALL_AUDIT, env=ONE_THREAD)
    assert result.returncode != 0
    assert len(error_lines(result)) == 1, result.stderr
    assert "finite training set" in result.stderr
    assert not out.exists()


def test_audit_rejects_existing_report(cli_run, memoriser_dir, tmp_path):
    report = tmp_path / "audit.png"
    report.write_bytes(b"keep")
    out = tmp_path / "audit.nc"
    result = cli_run("audit", str(memoriser_dir), "--train", TRAIN, "--heldout", HELDOUT, "--out", str(out), "--report", str(report), env=ONE_THREAD)
    assert result.returncode != 0
    assert "exists already" in result.stderr
    assert not out.exists()
