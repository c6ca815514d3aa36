"""`entropy-probe train` through the real command line, then `measure` on its output."""

from __future__ import annotations

import json

import xarray as xr

#: One thread: the networks are small and the test machine's cores are shared.
ENV = {"OMP_NUM_THREADS": "1", "ENTROPY_PROBE_NO_PROGRESS": "1"}


def test_train_then_measure_mnist_unet(tmp_path, cli_run):
    run = tmp_path / "mnist10"
    trained = cli_run("train", "--model", "unet", "--data", "mnist:n_c=10", "--epochs", "1", "--batch-size", "50", "--out", str(run), env=ENV)
    assert trained.returncode == 0, trained.stderr
    assert "checkpoint of epoch 1" in trained.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["architecture"] == "unet"
    assert config["data"]["heldout_spec"] == "mnist:split=heldout"
    assert (run / "options.json").is_file()

    measured = cli_run(
        "measure", str(run), "--samples", "8", "--nodes", "9", "--out", "result.nc", "--plot", "result.png",
        cwd=tmp_path, env=ENV,
    )
    assert measured.returncode == 0, measured.stderr
    assert (tmp_path / "result.png").stat().st_size > 0
    with xr.open_dataset(tmp_path / "result.nc") as result:
        assert result.attrs["data"] == "mnist:split=heldout"
        assert result.attrs["process"] == config["process"]
        assert result["s_nn"].attrs["units"] == "nats"
        assert float(result["s_nn"]) > 0


def test_train_dry_run_reports_size(tmp_path, cli_run):
    result = cli_run("train", "--data", "mnist:n_c=10", "--out", str(tmp_path / "run"), "--dry-run", env=ENV)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["settings"]["architecture"] == "unet"
    assert record["steps_per_epoch"] == 4
    assert 0.8e6 < record["parameters"] < 1.3e6
    assert not (tmp_path / "run").exists()


def test_train_existing_dir_one_line_error(tmp_path, cli_run):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("x")
    result = cli_run("train", "--data", "gmm:dim=2,n=16", "--out", str(tmp_path / "run"), env=ENV)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "exists already" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_resume_cli(tmp_path, cli_run):
    run = str(tmp_path / "run")
    first = cli_run("train", "--model", "mlp", "--widths", "16,16", "--fourier-features", "8", "--data", "gmm:dim=2,n=64", "--epochs", "1", "--lr", "1e-3", "--out", run, env=ENV)
    assert first.returncode == 0, first.stderr
    changed = cli_run("train", "--resume", "--lr", "0.5", "--epochs", "2", "--out", run, env=ENV)
    assert changed.returncode == 2
    assert "lr=0.5" in changed.stderr
    resumed = cli_run("train", "--resume", "--epochs", "2", "--out", run, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint of epoch 2" in resumed.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["lr"] == 1e-3


def test_train_missing_cifar_dir(tmp_path, cli_run):
    missing = tmp_path / "cifar-10-batches-py"
    result = cli_run("train", "--data", f"cifar10:dir={missing}", "--out", str(tmp_path / "run"), env=ENV)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
