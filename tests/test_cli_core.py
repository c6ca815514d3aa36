"""The measure and oracle commands through the real command line."""

from __future__ import annotations

import json

import pytest

from entropy_probe.results import read_dataset


def _assert_one_line_error(done, fragment):
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert fragment in lines[0], lines[0]


def test_measure_writes_result_plot_and_options(cli_run, mixture_dir, tmp_path):
    out, png = tmp_path / "r.nc", tmp_path / "r.png"
    done = cli_run("measure", str(mixture_dir), "--process", "vp", "--samples", "64", "--nodes", "17", "--out", str(out), "--plot", str(png))
    assert done.returncode == 0, done.stderr
    assert "S_NN" in done.stdout
    assert png.stat().st_size > 10_000
    options = json.loads((tmp_path / "r.options.json").read_text())
    assert options["options"]["samples"] == 64
    result = read_dataset(out)
    assert result.attrs["checkpoint_sha256"] == result.attrs["model_fingerprint"]


def test_dry_run_prints_settings_and_writes_nothing(cli_run, mixture_dir, tmp_path):
    out = tmp_path / "r.nc"
    done = cli_run("measure", str(mixture_dir), "--process", "sl", "--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert settings["process"] == "sl:sigma0=0.1"
    assert settings["t_max"] == pytest.approx(1 - 1e-5)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--process", "nope"], "unknown process 'nope'"),
        (["--process", "vp:beta_min=1,beta_max=0.5"], "beta_max=0.5"),
        (["--t-min", "0"], "t_min=0.0"),
        (["--t-min", "0.5", "--t-max", "0.2"], "must be smaller than T=0.2"),
        (["--process", "sl", "--t-max", "1"], "T=1.0"),
        (["--samples", "0"], "samples 0"),
        (["--nodes", "0"], "nodes 0"),
        (["--nodes", "8"], "odd number of nodes"),
        (["--data", "gmm:dim=5"], "shape (5,)"),
    ],
)
def test_invalid_measure_input(cli_run, mixture_dir, tmp_path, args, fragment):
    out = tmp_path / "r.nc"
    done = cli_run("measure", str(mixture_dir), *args, "--out", str(out))
    _assert_one_line_error(done, fragment)
    assert not out.exists()


def test_missing_checkpoint(cli_run, tmp_path):
    done = cli_run("measure", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.nc"))
    _assert_one_line_error(done, "not found")


def test_existing_output_needs_overwrite(cli_run, mixture_dir, tmp_path):
    out = tmp_path / "r.nc"
    out.write_text("old")
    done = cli_run("measure", str(mixture_dir), "--samples", "8", "--nodes", "5", "--out", str(out))
    _assert_one_line_error(done, "--overwrite")
    assert out.read_text() == "old"


def test_oracle_commands_write_loadable_checkpoints(cli_run, tmp_path):
    from entropy_probe.checkpoint import load_oracle

    done = cli_run("oracle", "gaussian", "--dim", "3", "--mean", "1", "--std", "2", "--out", str(tmp_path / "g"))
    assert done.returncode == 0, done.stderr
    oracle = load_oracle(tmp_path / "g")
    assert oracle.data_shape == (3,)
    assert float(oracle.std[0]) == 2.0
    done = cli_run("oracle", "empirical", "--data", "gmm:dim=2,n=30", "--out", str(tmp_path / "e"))
    assert done.returncode == 0, done.stderr
    assert load_oracle(tmp_path / "e").means.shape == (30, 2)
    done = cli_run("oracle", "gmm", "--out", str(tmp_path / "g"))
    _assert_one_line_error(done, "exists already")
