"""`reproduce`: recipes resolve into plans, the tiny scales run end to end, interrupted sweeps resume."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from entropy_probe.cli import cli, register_commands
from entropy_probe.errors import OutputError, SpecError
from entropy_probe.recipes import load_plan, reproducible_recipes
from entropy_probe.reproduce import (
    COMBINED_FILE,
    Hooks,
    combine,
    epoch_file_name,
    item_directory,
    read_events,
    reproduce,
)
from entropy_probe.results import read_dataset

register_commands()

RECIPES = ("paper-gmm", "paper-mnist-unet", "paper-cifar10-unet-vp")


pytestmark = pytest.mark.usefixtures("one_thread")


class Stop(Exception):
    """Raised by a hook to simulate an interruption."""


# --- plans ------------------------------------------------------------------------------------

def test_every_recipe_has_three_scales():
    assert set(RECIPES) <= set(reproducible_recipes())
    for recipe in RECIPES:
        for scale in ("tiny", "cpu", "paper"):
            # A scale that reads no data_dir rejects one, and a scale that reads it requires it.
            try:
                plan = load_plan(recipe, scale)
            except SpecError as error:
                assert "needs the variable 'data_dir'" in str(error)
                plan = load_plan(recipe, scale, {"data_dir": "/data"})
            assert plan.items
            assert all(item.epochs for item in plan.items)
            # Common random numbers: one measurement setting for the whole study.
            settings = {json.dumps(item.record()["measure"], sort_keys=True) for item in plan.items}
            assert len(settings) == 1


def test_gmm_paper_scale_settings():
    plan = load_plan("paper-gmm", "paper")
    assert [axis.name for axis in plan.axes] == ["dim", "process", "seed"]
    assert len(plan.items) == 3 * 3 * 3
    item = plan.items[0]
    assert item.name == "dim=3_process=vp_seed=0"
    assert item.train.data == "gmm:dim=3,components=5,side=4,std_min=0.5,std_max=1,seed=0,n=8192"
    assert item.train.process == "vp:beta_min=0.1,beta_max=16"
    assert item.train.seed == 0 and isinstance(item.train.seed, int)
    assert (item.train.lr, item.train.batch_size, item.train.noise_draws, item.train.epochs) == (1e-4, 32, 10, 200)
    assert item.measure.samples == 10000
    assert item.epochs == [5, 10, 20, 50, 100, 150, 200]
    assert plan.items[-1].train.process == "vpx:beta_min=0.1,beta_max=16,kappa=0.1"


def test_mnist_cpu_scale_within_bundled_pool():
    plan = load_plan("paper-mnist-unet", "cpu")
    n_c = sorted({item.values["n_c"] for item in plan.items})
    assert max(n_c) <= 400
    assert {item.values["process"] for item in plan.items} == {"vp:beta_min=0.1,beta_max=16", "sl:sigma0=0.1"}
    by_n_c = {item.values["n_c"]: item for item in plan.items if item.key[1] == ("process", "vp")}
    # Per-size tables: every size trains for about the same number of optimizer steps.
    steps = [by_n_c[c].train.epochs * -(-10 * c // 32) for c in n_c]
    assert max(steps) / min(steps) < 1.3
    assert all(item.measure_data == "mnist:split=heldout" for item in plan.items)


def test_paper_scale_needs_data_dir():
    with pytest.raises(SpecError, match="--data-dir"):
        load_plan("paper-mnist-unet", "paper")
    with pytest.raises(SpecError, match="--data-dir"):
        load_plan("paper-cifar10-unet-vp", "tiny")


def test_unknown_scale_and_recipe():
    with pytest.raises(SpecError, match="no scale 'huge'; choose one of tiny, cpu, paper"):
        load_plan("paper-gmm", "huge")
    with pytest.raises(SpecError, match="no reproduce section"):
        load_plan("ddpm-cifar10-32", "tiny")
    with pytest.raises(SpecError, match="takes no variable 'colour'"):
        load_plan("paper-gmm", "tiny", {"colour": "red"})


def test_output_of_other_plan_rejected(tmp_path):
    from entropy_probe.reproduce import prepare_output

    prepare_output(load_plan("paper-gmm", "tiny"), tmp_path / "sweep")
    with pytest.raises(OutputError, match="sweep of another plan"):
        prepare_output(load_plan("paper-gmm", "cpu"), tmp_path / "sweep")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="not a reproduce directory"):
        prepare_output(load_plan("paper-gmm", "tiny"), tmp_path / "other")


def test_older_plan_matches_defaults():
    from entropy_probe.reproduce import same_plan

    current = json.loads(load_plan("paper-gmm", "tiny").fingerprint())
    # A sweep started before the `estimator` setting existed: its plan lacks the key.
    older = json.loads(json.dumps(current))
    for item in older["items"]:
        assert item["measure"].pop("estimator") == "grid"
    assert same_plan(older, current)
    # The key is missing and the current plan sets a non-default value, so the plans differ.
    importance = json.loads(json.dumps(current))
    importance["items"][0]["measure"]["estimator"] = "importance"
    assert not same_plan(older, importance)
    # A setting that exists in both and differs still makes another plan.
    changed = json.loads(json.dumps(current))
    changed["items"][0]["measure"]["samples"] += 1
    assert not same_plan(current, changed)
    assert not same_plan(older, changed)


# --- the mixture study at tiny scale, interrupted twice ----------------------------------------

@pytest.fixture(scope="module")
def gmm_sweep(tmp_path_factory):
    """Run paper-gmm at tiny scale: stop after the first item, then inside the second item's
    training, then let it finish. Return the directory, plan, file times and the events."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sweeps") / "gmm"
    plan = load_plan("paper-gmm", "tiny")
    first, second, third = plan.items

    def stop_after_first(item, event):
        if event["action"] == "finished":
            raise Stop(item.name)

    with pytest.raises(Stop):
        reproduce(plan, out, hooks=Hooks(on_item=stop_after_first))
    state = {"first_only": sorted(p.name for p in (out / "items").iterdir())}
    first_files = {p: p.stat().st_mtime_ns for p in item_directory(out, first).glob("epoch-*.nc")}

    def stop_in_training(item, entry):
        if item.name == second.name and entry["epoch"] == 1:
            raise Stop(item.name)

    with pytest.raises(Stop):
        reproduce(plan, out, hooks=Hooks(on_epoch=stop_in_training))
    state["second_after_stop"] = sorted(p.name for p in item_directory(out, second).iterdir())
    state["events_before_final"] = len(read_events(out))

    dataset, events = reproduce(plan, out)
    return out, plan, first_files, state, events, dataset


def test_interrupted_sweep_runs_only_missing_items(gmm_sweep):
    out, plan, first_files, state, events, _ = gmm_sweep
    first, second, third = plan.items
    assert state["first_only"] == [first.name]
    # The second interruption left the second item's run after epoch 1 and no measurement.
    assert state["second_after_stop"] == ["run"]
    by_item = {event["item"]: event for event in events}
    assert by_item[first.name]["action"] == "skipped"
    assert by_item[second.name]["action"] == "finished"
    assert by_item[second.name]["resumed_from_epoch"] == 1
    assert by_item[third.name]["resumed_from_epoch"] == 0
    for path, mtime in first_files.items():
        assert path.stat().st_mtime_ns == mtime
    logged = read_events(out)
    assert len(logged) == state["events_before_final"] + 3
    assert [e["action"] for e in logged[:1]] == ["finished"]


def test_gmm_combined_dataset(gmm_sweep):
    out, plan, _, _, _, dataset = gmm_sweep
    saved = read_dataset(out / COMBINED_FILE)
    assert saved.attrs["title"] == "entropy-probe reproduction"
    assert saved.attrs["recipe"] == "paper-gmm"
    assert saved.attrs["scale"] == "tiny"
    assert json.loads(saved.attrs["items_missing"]) == []
    assert list(saved["process"].values) == ["vp", "sl", "vpx"]
    assert json.loads(saved["process"].attrs["values"])["sl"] == "sl:sigma0=0.1"
    assert saved["s_nn"].dims == ("dim", "process", "seed", "epoch")
    assert saved["s_nn_rate"].dims == ("dim", "process", "seed", "epoch", "node")
    assert not np.isnan(saved["s_nn"].values).any()
    for name, variable in saved.variables.items():
        assert "units" in variable.attrs, name
    # Every checkpoint saw the same draws, so the exact-law S_tot is one number per (process, dim).
    assert saved["s_tot"].dims == ("dim", "process")
    assert saved["t"].dims == ("dim", "process", "node")
    # The numbers are those of the per-epoch files.
    single = read_dataset(item_directory(out, plan.items[1]) / epoch_file_name(2))
    assert float(saved["s_nn"].sel(dim=3, process="sl", seed=0, epoch=2)) == float(single["s_nn"])
    assert saved["train_loss"].sizes["train_epoch"] == 2
    # vp trains with the likelihood weighting and sl with the σ² weighting, so the loss records each item's weighting.
    weightings = json.loads(saved["train_loss"].attrs["weighting"])
    assert weightings[item_directory(out, plan.items[0]).name] == "likelihood"
    assert weightings[item_directory(out, plan.items[1]).name] == "sigma2"
    assert saved["generated"].sizes["component"] == 3
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["rates.png", "s_nn_fraction.png", "s_nn_vs_epoch.png", "samples_sl.png", "samples_vp.png", "samples_vpx.png"]
    assert "S_tot" in (out / "summary.txt").read_text()


def test_missing_measurement_is_nan(gmm_sweep, tmp_path):
    out, plan, _, _, _, _ = gmm_sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (item_directory(copy, plan.items[2]) / epoch_file_name(1)).unlink()
    dataset = combine(plan, copy)
    assert np.isnan(float(dataset["s_nn"].sel(process="vpx", epoch=1).squeeze()))
    assert not np.isnan(float(dataset["s_nn"].sel(process="vpx", epoch=2).squeeze()))
    assert json.loads(dataset.attrs["items_missing"]) == [plan.items[2].name]


def test_figures_with_unmeasured_item(gmm_sweep, tmp_path):
    from entropy_probe.study_figures import plot_study

    out, plan, _, _, _, _ = gmm_sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for path in item_directory(copy, plan.items[2]).glob("epoch-*.nc"):
        path.unlink()
    dataset = combine(plan, copy)
    assert np.isnan(dataset["s_nn"].sel(process="vpx").values).all()
    # A sweep still running draws its figures with an empty panel for the missing item.
    paths = plot_study(dataset, tmp_path / "figures")
    assert {p.name for p in paths} >= {"s_nn_vs_epoch.png", "rates.png", "s_nn_fraction.png"}
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_plot_command_single_and_invalid(gmm_sweep, tmp_path):
    out, plan, _, _, _, _ = gmm_sweep
    runner = CliRunner()
    single = item_directory(out, plan.items[0]) / epoch_file_name(2)
    result = runner.invoke(cli, ["plot", str(single), "--out", str(tmp_path / "rate.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rate.png").is_file()
    result = runner.invoke(cli, ["plot", str(out / "plan.json")])
    assert result.exit_code != 0
    assert "cannot read result file" in result.output


# --- the image studies at tiny scale ----------------------------------------------------------

def test_mnist_tiny(tmp_path):
    plan = load_plan("paper-mnist-unet", "tiny")
    dataset, events = reproduce(plan, tmp_path / "mnist")
    assert [e["action"] for e in events] == ["finished"] * 4
    np.testing.assert_array_equal(dataset["n_train"].values, [10, 20])
    assert dataset["n_train"].attrs["units"] == "images"
    assert dataset["s_nn"].dims == ("n_c", "process", "seed", "epoch")
    assert np.all(dataset["s_nn"].values > 0)
    assert dataset["ce_bound_bpd"].attrs["units"] == "bits/dim"
    assert json.loads(dataset["generated"].attrs["item_shape"]) == [1, 28, 28]
    figures = sorted(p.name for p in (tmp_path / "mnist" / "figures").glob("*.png"))
    assert figures == ["rates.png", "s_nn_vs_n.png", "samples_sl.png", "samples_vp.png", "training.png"]


def write_cifar_directory(path: Path) -> Path:
    """A CIFAR-10 python-batch directory with one random image per class in every batch."""
    path.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(10, 3072), dtype=np.uint8), b"labels": list(range(10))}
        with open(path / name, "wb") as handle:
            pickle.dump(batch, handle)
    return path


def test_cifar_tiny(tmp_path):
    data_dir = write_cifar_directory(tmp_path / "cifar-10-batches-py")
    plan = load_plan("paper-cifar10-unet-vp", "tiny", {"data_dir": str(data_dir)})
    dataset, _ = reproduce(plan, tmp_path / "cifar", figures=False)
    assert dataset.attrs["variables"] == json.dumps({"data_dir": str(data_dir)})
    assert list(dataset["process"].values) == ["vp"]
    assert not np.isnan(dataset["s_nn"].values).any()
    np.testing.assert_array_equal(dataset["generated_labels"].squeeze().values, [[0, 1], [0, 1]])
    assert not (tmp_path / "cifar" / "figures").exists()

    # The plot command draws the figures of the saved combined Dataset.
    figures = tmp_path / "cifar-figures"
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "cifar" / COMBINED_FILE), "--out", str(figures)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in figures.glob("*.png")) == ["rates.png", "s_nn_vs_n.png", "samples_vp.png", "training.png"]
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "cifar" / COMBINED_FILE), "--out", str(figures)])
    assert result.exit_code != 0
    assert "--overwrite" in result.output


# --- the command line -------------------------------------------------------------------------

def test_cli_dry_run_prints_plan():
    result = CliRunner().invoke(cli, ["reproduce", "paper-mnist-unet", "--scale", "cpu", "--out", "unused", "--dry-run", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["scale"] == "cpu"
    assert [item["key"]["n_c"] for item in plan["items"]][:5] == ["1", "1", "4", "4", "16"]


def test_cli_missing_data_dir_one_line(capsys, tmp_path):
    from entropy_probe.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "paper-cifar10-unet-vp", "--scale", "tiny", "--out", str(tmp_path / "cifar")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert error.startswith("error: recipe 'paper-cifar10-unet-vp' at scale 'tiny' needs the variable 'data_dir'")
    assert "--data-dir DIR" in error
    assert not (tmp_path / "cifar").exists()


@pytest.mark.slow
def test_sigterm_then_rerun_with_two_jobs(tmp_path):
    """Kill a real two-job sweep after its first measurement; the re-run does only the rest."""
    out = tmp_path / "gmm"
    command = [sys.executable, "-m", "entropy_probe", "reproduce", "paper-gmm", "--scale", "tiny",
               "--out", str(out), "--jobs", "2", "--device", "cpu", "--no-figures"]
    env = {**os.environ, "ENTROPY_PROBE_NO_PROGRESS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not list((out / "items").glob("*/epoch-0002.nc")):
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    finished_first = {p.parent.name for p in (out / "items").glob("*/epoch-0002.nc")}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    events = read_events(out)
    rerun = events[-3:]
    assert {e["item"] for e in rerun if e["action"] == "skipped"} == finished_first
    assert all(e["action"] in ("skipped", "finished") for e in rerun)
    assert (out / COMBINED_FILE).is_file()
