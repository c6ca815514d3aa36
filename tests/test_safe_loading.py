"""Weights are read from safetensors, or from a pickled state dict with torch.load(weights_only=True).

A checkpoint directory may hold model.pt (or .pth, .ckpt, .bin) instead of model.safetensors. It
must give the same numbers as the safetensors file, and a pickle that contains anything but tensors
is rejected before any of its code can run.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from entropy_probe.checkpoint import read_pickled_state_dict, read_tensors
from entropy_probe.errors import CheckpointError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    from entropy_probe.train import TrainSettings, train

    root = tmp_path_factory.mktemp("safe")
    settings = TrainSettings(
        architecture="mlp", data="gmm:dim=2,n=32", epochs=1, batch_size=32,
        network={"widths": [8, 8], "fourier_features": 4}, progress=False,
    )
    train(settings, root / "net")
    return root / "net"


def _as_pickled(network, target, name="model.pt", wrap=False):
    """Copy the checkpoint with its weights saved by torch.save instead of safetensors."""
    shutil.copytree(network, target, ignore=shutil.ignore_patterns("epoch-*", "train-state", "*.jsonl", "options.json"))
    tensors = load_file(str(target / "model.safetensors"))
    (target / "model.safetensors").unlink()
    config = json.loads((target / "config.json").read_text())
    config.pop("weights_sha256")
    (target / "config.json").write_text(json.dumps(config))
    torch.save({"state_dict": tensors} if wrap else tensors, target / name)
    return tensors


@pytest.mark.parametrize("name, wrap", [("model.pt", False), ("model.ckpt", True)])
def test_pickled_state_dict_gives_the_same_numbers(network, tmp_path, name, wrap):
    from click.testing import CliRunner

    from entropy_probe.cli import cli, register_commands
    from entropy_probe.results import read_dataset

    register_commands()
    tensors = _as_pickled(network, tmp_path / "pickled", name, wrap)
    loaded, _ = read_tensors(tmp_path / "pickled")
    assert loaded.keys() == tensors.keys()
    for key in tensors:
        assert torch.equal(loaded[key], tensors[key]), key

    values = []
    for source, out in ((network, tmp_path / "a.nc"), (tmp_path / "pickled", tmp_path / "b.nc")):
        result = CliRunner().invoke(cli, ["measure", str(source), "--data", "gmm:dim=2", "--nodes", "5", "--samples", "16", "--out", str(out)])
        assert result.exit_code == 0, result.output
        values.append(float(read_dataset(out)["s_nn"]))
    assert values[0] == values[1]


class _Runs:
    """Unpickling this calls `print`, the kind of call weights_only=True must refuse."""

    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickle_with_objects_rejected_unrun(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "extra": _Runs()}, path)
    with pytest.raises(CheckpointError, match=r"rejected .*weights_only=True.*safetensors"):
        read_pickled_state_dict(path)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_pickle_without_tensors_is_rejected(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": [1.0, 2.0]}, path)
    with pytest.raises(CheckpointError, match=r"entry 'weight' is not a tensor"):
        read_pickled_state_dict(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=r"contains a Tensor, not a state dict"):
        read_pickled_state_dict(path)


def test_truncated_pickle_is_reported(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"corrupted or not written by torch.save"):
        read_pickled_state_dict(path)


def test_safetensors_wins_over_a_pickle(network, tmp_path):
    target = tmp_path / "both"
    shutil.copytree(network, target, ignore=shutil.ignore_patterns("epoch-*", "train-state", "*.jsonl", "options.json"))
    torch.save({"state_layers.0.weight": torch.zeros(1)}, target / "model.pt")
    loaded, _ = read_tensors(target)
    assert loaded.keys() == load_file(str(target / "model.safetensors")).keys()


class _CreatesFile:
    """Unpickling this opens (and so creates) the file at `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_diffusers_bin_with_objects_is_rejected(tmp_path):
    from diffusers_fixtures import DDPM_SCHEDULER, save_pipeline, tiny_unet

    from entropy_probe.adapters import load_denoiser

    folder = save_pipeline(tiny_unet(), DDPM_SCHEDULER, tmp_path / "pipe")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    state = tiny_unet().state_dict()
    state["extra"] = _CreatesFile(str(tmp_path / "created"))
    torch.save(state, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"weights_only=True.*diffusion_pytorch_model.safetensors"):
        load_denoiser(str(folder))
    assert not (tmp_path / "created").exists()
