"""export: a trained U-Net as a diffusers folder that measures like the original."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from entropy_probe import api
from entropy_probe.adapters import load_denoiser
from entropy_probe.adapters.diffusers_adapter import DiffusersDenoiser
from entropy_probe.errors import CheckpointError, OutputError
from entropy_probe.export import export_checkpoint
from entropy_probe.probe import MeasureSettings
from entropy_probe.processes import from_spec


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-epoch trainer runs: an unconditional and a class-conditional U-Net, and an MLP."""
    from entropy_probe.train import TrainSettings, train

    root = tmp_path_factory.mktemp("export")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = dict(architecture="unet", data="digits:n_c=2", epochs=1, batch_size=8, progress=False)
        train(TrainSettings(process="vp", network={"channels": [8, 16]}, **common), root / "unet")
        train(TrainSettings(process="sl:sigma0=0.1", network={"channels": [8, 16], "class_conditional": True}, **common), root / "conditional")
        train(
            TrainSettings(architecture="mlp", data="gmm:dim=2,n=64", epochs=1, network={"widths": [16], "fourier_features": 8}, progress=False),
            root / "mlp",
        )
    finally:
        torch.set_num_threads(threads)
    return root


def test_export_then_measure_same_s_nn(runs, tmp_path):
    folder = export_checkpoint(runs / "unet", tmp_path / "exported")
    original = load_denoiser(str(runs / "unet"))
    exported = load_denoiser(str(folder))
    assert isinstance(exported, DiffusersDenoiser)
    assert exported.native_process == original.native_process
    assert exported.default_data == original.default_data
    assert exported.pixel_range == original.pixel_range
    assert exported.quantization_step == pytest.approx(original.quantization_step)
    assert (exported.sigma_min, exported.sigma_max) == pytest.approx((original.sigma_min, original.sigma_max), rel=1e-12)

    settings = MeasureSettings(samples=32, nodes=9, progress=False)
    direct = api.measure_checkpoint(str(runs / "unet"), settings=settings)
    through = api.measure_checkpoint(str(folder), settings=settings)
    assert float(through["s_nn"]) == pytest.approx(float(direct["s_nn"]), rel=1e-6)
    assert float(through["cross_term"]) == pytest.approx(float(direct["cross_term"]), rel=1e-5, abs=1e-6)

    # Another process inside the trained noise range.
    direct_sl = api.measure_checkpoint(str(runs / "unet"), process="sl:sigma0=0.1", settings=MeasureSettings(t_max=0.99, samples=16, nodes=5, progress=False))
    through_sl = api.measure_checkpoint(str(folder), process="sl:sigma0=0.1", settings=MeasureSettings(t_max=0.99, samples=16, nodes=5, progress=False))
    assert float(through_sl["s_nn"]) == pytest.approx(float(direct_sl["s_nn"]), rel=1e-6)


def test_exported_unet_follows_documented_formula(runs, tmp_path):
    from diffusers import UNet2DModel

    folder = export_checkpoint(runs / "unet", tmp_path / "exported")
    metadata = json.loads((folder / "entropy_probe.json").read_text())
    assert metadata["prediction"] == "excess_score"
    assert metadata["output_scaling"] == "inverse_sigma"
    unet = UNet2DModel.from_pretrained(str(folder), subfolder="unet").eval()
    process = from_spec(metadata["process"])
    model = load_denoiser(str(folder))

    x_tilde = torch.randn((3, 1, 8, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = np.array([0.01, 0.3, 0.9])
    sigma_tilde = torch.as_tensor(process.sigma_tilde(t))
    alpha, sigma = process.alpha(t), process.sigma(t)
    x_t = torch.as_tensor(alpha)[:, None, None, None] * x_tilde
    c_in = 1.0 / np.sqrt(alpha**2 * metadata["data_mean_square"] + sigma**2)
    with torch.no_grad():
        raw = unet((torch.as_tensor(c_in)[:, None, None, None] * x_t).float(), torch.as_tensor(metadata["time_scale"] * t).float()).sample
    e = raw.double() / torch.as_tensor(sigma)[:, None, None, None]
    k = torch.as_tensor(process.equilibrium_score_coefficient(t))[:, None, None, None]
    expected = torch.as_tensor(alpha)[:, None, None, None] * (k * x_t + e)
    torch.testing.assert_close(model.ve_score(x_tilde, sigma_tilde), expected, rtol=1e-5, atol=1e-5)


def test_export_class_conditional(runs, tmp_path):
    folder = export_checkpoint(runs / "conditional", tmp_path / "conditional")
    original = load_denoiser(str(runs / "conditional"))
    exported = load_denoiser(str(folder))
    assert exported.num_classes == original.num_classes == 10
    x = torch.randn((4, 1, 8, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 9])
    torch.testing.assert_close(exported.ve_score(x, sigma, labels), original.ve_score(x, sigma, labels), rtol=1e-5, atol=1e-6)


def test_export_rejects_other_checkpoints(runs, tmp_path, mixture_dir):
    with pytest.raises(CheckpointError, match="only U-Nets"):
        export_checkpoint(runs / "mlp", tmp_path / "mlp")
    with pytest.raises(CheckpointError, match="not a trained network"):
        export_checkpoint(mixture_dir, tmp_path / "oracle")
    export_checkpoint(runs / "unet", tmp_path / "once")
    with pytest.raises(OutputError, match="exists already"):
        export_checkpoint(runs / "unet", tmp_path / "once")


def test_export_command_line(runs, tmp_path, cli_run):
    out = tmp_path / "cli-export"
    result = cli_run("export", str(runs / "unet"), "--format", "diffusers", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "model_index.json").is_file()
    assert (out / "entropy_probe.json").is_file()
    measured = cli_run("measure", str(out), "--samples", "8", "--nodes", "3", "--out", str(tmp_path / "m.nc"), "--no-progress")
    assert measured.returncode == 0, measured.stderr

    again = cli_run("export", str(runs / "mlp"), "--out", str(tmp_path / "mlp-export"))
    assert again.returncode != 0
    assert [line for line in again.stderr.splitlines() if line.startswith("error:")][0].endswith("use the checkpoint folder itself, which every entropy-probe command reads")
    assert "Traceback" not in again.stderr
    assert not (tmp_path / "mlp-export").exists()


def test_export_catalog_name_like_measure(tmp_path):
    from entropy_probe.catalog import resolve_catalog_name
    from entropy_probe.filemodes import process_umask

    old = os.umask(0o022)
    process_umask.cache_clear()
    try:
        out = export_checkpoint("mnist-unet-vp", tmp_path / "catalog-export")
    finally:
        os.umask(old)
        process_umask.cache_clear()

    source = json.loads((out / "entropy_probe.json").read_text())["source"]["path"]
    assert Path(source) == resolve_catalog_name("mnist-unet-vp").resolve()
    # Group and others can read the folder, as with files that open and mkdir create under umask 022.
    for path in [out, *out.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
