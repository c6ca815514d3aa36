"""The shipped reference checkpoints: files, recorded numbers and the recorded training command."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from entropy_probe import api
from entropy_probe.adapters import load_denoiser
from entropy_probe.catalog import entry_path, load_catalog
from entropy_probe.checkpoint import CONFIG_NAME, WEIGHTS_NAME, sha256_file
from entropy_probe.cli import cli, register_commands
from entropy_probe.cli.measure import DEFAULT_CHECKPOINT
from entropy_probe.errors import CheckpointError
from entropy_probe.formatting import format_estimate
from entropy_probe.probe import MeasureSettings
from entropy_probe.train.io import load_network, write_float16_copy

ROOT = Path(__file__).resolve().parent.parent

SHIPPED = sorted(name for name, entry in load_catalog().items() if entry.kind == "shipped")

#: Samples per node of the re-measurement: a U-Net batch costs about 0.1 s per 64 items on a
#: CPU core, the mixture MLP much less.
TEST_SAMPLES = {"unet": 16, "mlp": 128}

#: Data of the shortened training run: the same source with fewer items.
SHORT_DATA = {"mnist:n_c=10": "mnist:n_c=1", "gmm:dim=3,seed=0,n=8192,sample_seed=0": "gmm:dim=3,seed=0,n=64,sample_seed=0"}

#: Config entries that depend on the training length or the data subset, not on the recipe.
RUN_DEPENDENT = {"weights_sha256", "epoch", "step", "loss", "converted_from"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _entry(name: str):
    return load_catalog()[name]


def test_shipped_catalog_has_reference_models():
    assert DEFAULT_CHECKPOINT in SHIPPED
    for name in ("mnist-unet-vp", "mnist-unet-sl", "gmm3-mlp-vp", "gmm3-mlp-sl"):
        assert name in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_match_sha256(name):
    entry = _entry(name)
    folder = entry_path(entry)
    recorded = entry.fields["files"]
    assert set(recorded) == {CONFIG_NAME, WEIGHTS_NAME}
    for file_name, facts in recorded.items():
        path = folder / file_name
        assert sha256_file(path) == facts["sha256"], f"{path} differs from the catalog's SHA-256"
        assert path.stat().st_size == facts["bytes"]
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["weights_sha256"] == recorded[WEIGHTS_NAME]["sha256"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_as_float32(name):
    folder = entry_path(_entry(name))
    stored = load_file(str(folder / WEIGHTS_NAME))
    floating = [value for value in stored.values() if value.is_floating_point()]
    assert floating and all(value.dtype == torch.float16 for value in floating)

    network, config, _ = load_network(folder)
    assert config["weights_dtype"] == "float16"
    state = network.core.state_dict()
    for key, value in stored.items():
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], value.float())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_s_nn_matches_record(name):
    """A fresh measurement with another seed agrees with the recorded one within 4 standard errors."""
    entry = _entry(name)
    recorded = entry.fields["recorded"]
    settings = recorded["settings"]
    model = load_denoiser(name)
    architecture = model.config["architecture"]
    estimator = settings.get("estimator", "grid")
    if estimator == "importance":
        design = {"strata": settings["strata"], "proposal": settings["proposal"]}
    else:
        design = {"rule": settings["rule"], "nodes": settings["nodes"]}
    measure_settings = MeasureSettings(
        t_min=settings["t_min"],
        t_max=settings["t_max"],
        estimator=estimator,
        **design,
        samples=TEST_SAMPLES[architecture],
        seed=settings["seed"] + 1,
        batch_size=256,
        progress=False,
    )
    result = api.measure_checkpoint(model, process=settings["process"], data=settings["data"], settings=measure_settings)

    for quantity in ("s_nn", "ce_bound"):
        difference = float(result[quantity]) - recorded[quantity]
        combined = math.hypot(recorded[f"{quantity}_stderr"], float(result[f"{quantity}_stderr"]))
        assert abs(difference) < 4 * combined, (
            f"{name}: {quantity} {float(result[quantity]):.6g} differs from the recorded "
            f"{recorded[quantity]:.6g} by {difference / combined:.1f} combined standard errors"
        )


def _short_command(argv: list[str], out: Path) -> list[str]:
    """The recorded training command with one epoch, a small subset of the data and `out`."""
    command = list(argv)
    command[command.index("--epochs") + 1] = "1"
    data_index = command.index("--data") + 1
    command[data_index] = SHORT_DATA[command[data_index]]
    command[command.index("--out") + 1] = str(out)
    return command


def _recipe_fields(config: dict) -> dict:
    """Config entries that the recipe fixes, without those that depend on the run's length or data."""
    fields = {key: value for key, value in config.items() if key not in RUN_DEPENDENT}
    fields["data"] = {key: value for key, value in config["data"].items() if key not in ("spec", "size")}
    fields["training"] = {key: value for key, value in config["training"].items() if key not in ("epochs", "data", "progress")}
    fields["input_scaling"] = {key: value for key, value in config["input_scaling"].items() if key != "data_mean_square"}
    return fields


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_command_rebuilds_checkpoint(name, tmp_path):
    entry = _entry(name)
    argv = entry.fields["provenance"]["train_argv"]
    register_commands()
    result = CliRunner().invoke(cli, ["-q", *_short_command(argv, tmp_path / "run"), "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    copy = write_float16_copy(tmp_path / "run", tmp_path / "copy")

    shipped_config = json.loads((entry_path(entry) / CONFIG_NAME).read_text())
    rebuilt_config = json.loads((copy / CONFIG_NAME).read_text())
    assert rebuilt_config["epoch"] == 1
    assert _recipe_fields(rebuilt_config) == _recipe_fields(shipped_config)

    shipped = load_file(str(entry_path(entry) / WEIGHTS_NAME))
    rebuilt = load_file(str(copy / WEIGHTS_NAME))
    assert {key: (value.shape, value.dtype) for key, value in rebuilt.items()} == {
        key: (value.shape, value.dtype) for key, value in shipped.items()
    }
    model = load_denoiser(str(copy))
    assert type(model).__name__ == "BuiltinNetwork"
    assert model.data_shape == load_denoiser(name).data_shape


def test_catalog_list_shows_shipped():
    register_commands()
    result = CliRunner().invoke(cli, ["catalog", "list", "--kind", "shipped"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert set(rows) == set(SHIPPED)
    for name in SHIPPED:
        fields = _entry(name).fields
        assert f"{fields['size']['bytes'] / 1e6:.1f} MB" in rows[name]
        assert fields["process"] in rows[name]
        assert format_estimate(fields["recorded"]["s_nn"], fields["recorded"]["s_nn_stderr"]) in rows[name]


def test_catalog_show_prints_provenance():
    register_commands()
    result = CliRunner().invoke(cli, ["catalog", "show", DEFAULT_CHECKPOINT], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    fields = _entry(DEFAULT_CHECKPOINT).fields
    assert f"trained with: {fields['provenance']['train_command']}" in result.output
    assert f"repeat with: {fields['recorded']['command']}" in result.output
    assert fields["files"][WEIGHTS_NAME]["sha256"] in result.output


def test_measure_defaults_to_shipped_model(tmp_path):
    """Without a checkpoint, measure resolves the default model, its held-out digits and the recorded settings."""
    register_commands()
    result = CliRunner().invoke(cli, ["measure", "--dry-run", "--out", str(tmp_path / "r.nc")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    options = json.loads(result.output)
    settings = _entry(DEFAULT_CHECKPOINT).fields["recorded"]["settings"]
    assert options["checkpoint"] == DEFAULT_CHECKPOINT
    assert options["data"] == "mnist:split=heldout" == settings["data"]
    keys = ["process", "t_min", "t_max", "estimator", "samples", "seed"]
    keys += ["strata", "proposal"] if settings["estimator"] == "importance" else ["rule", "nodes"]
    for key in keys:
        assert options[key] == settings[key], key


# --- the float16 copy ---------------------------------------------------------------------------

def test_float16_copy_rounds_weights(tmp_path):
    from entropy_probe.train import TrainSettings, train

    settings = TrainSettings(
        architecture="mlp", data="gmm:dim=2,seed=1,n=64", epochs=1,
        network={"widths": [16], "fourier_features": 8}, progress=False,
    )
    train(settings, tmp_path / "run")
    copy = write_float16_copy(tmp_path / "run", tmp_path / "copy")
    original, original_config, original_digest = load_network(tmp_path / "run")
    half, config, digest = load_network(copy)

    assert config["converted_from"] == {"weights_dtype": "float32", "weights_sha256": original_digest}
    assert config["weights_sha256"] == digest != original_digest
    for key, value in original.core.state_dict().items():
        assert torch.equal(half.core.state_dict()[key], value.half().float())
    assert (copy / WEIGHTS_NAME).stat().st_size < 0.75 * (tmp_path / "run" / WEIGHTS_NAME).stat().st_size


def test_float16_copy_rejects_oracle(tmp_path, mixture_dir):
    with pytest.raises(CheckpointError, match="not a network checkpoint"):
        write_float16_copy(mixture_dir, tmp_path / "copy")


# --- files in the repository and in installs ----------------------------------------------------

def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_tracked_by_git(name):
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    folder = entry_path(_entry(name))
    for path in [folder / CONFIG_NAME, folder / WEIGHTS_NAME, ROOT / "catalog" / f"{name}.json"]:
        relative = str(path.resolve().relative_to(ROOT))
        assert _git("check-ignore", "-q", relative).returncode == 1, f"{relative} is ignored by .gitignore"
        assert _git("ls-files", "--error-unmatch", relative).returncode == 0, f"{relative} is not tracked"


def test_shipped_files_in_package_data():
    """pyproject.toml's package data covers every file of every shipped checkpoint."""
    tomllib = pytest.importorskip("tomllib")

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    package = next(name for name, folder in setuptools["package-dir"].items() if folder == "catalog")
    catalog = ROOT / "catalog"
    included = {path.resolve() for pattern in setuptools["package-data"][package] for path in catalog.glob(pattern)}
    for name in SHIPPED:
        assert (catalog / f"{name}.json").resolve() in included
        for path in entry_path(_entry(name)).iterdir():
            assert path.resolve() in included, f"{path} is not package data"
