"""Builders for tiny diffusers models, folder layouts and a hub cache, shared by the tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

DDPM_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.42.1",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "variance_type": "fixed_small",
}

SDE_VE_SCHEDULER = {
    "_class_name": "ScoreSdeVeScheduler",
    "_diffusers_version": "0.42.1",
    "num_train_timesteps": 2000,
    "sigma_min": 0.01,
    "sigma_max": 50.0,
    "snr": 0.15,
    "sampling_eps": 1e-5,
    "correct_steps": 1,
}


def tiny_unet(seed: int = 0, **overrides):
    """A randomly initialised UNet2DModel for 1×8×8 images (about 40k parameters)."""
    from diffusers import UNet2DModel

    config = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    return UNet2DModel(**config).eval()


def save_pipeline(unet, scheduler: dict, folder: Path) -> Path:
    """Write a pipeline folder: model_index.json, unet/ and scheduler/ (diffusers layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def save_flat(unet, scheduler: dict, folder: Path) -> Path:
    """Write the flat layout of the early google/ddpm-* repositories (everything at the top)."""
    unet.save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    index = {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def install_in_hub_cache(folder: Path, hf_home: Path, repo_id: str, revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Copy a folder into a hub cache under hf_home as models--ORG--NAME/snapshots/REV, refs/main."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def write_image_data(path: Path, count: int = 64, shape=(1, 8, 8), seed: int = 0) -> Path:
    """Write an .npz of 8-bit-like images in [−1, 1] under the key x."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(count,) + tuple(shape)) * (2.0 / 255.0) - 1.0
    np.savez(path, x=x.astype(np.float64))
    return path


class OracleUNet(torch.nn.Module):
    """Mimics UNet2DModel's call with an oracle's exact native prediction on a DDPM table.

    The timestep τ (integer or fractional) maps to σ̃ by interpolating log σ̃ over the float64
    table σ̃_i = sqrt(1/ᾱ_i − 1); the input is x = α x̃ with α = 1/sqrt(1 + σ̃²).
    """

    dtype = torch.float64

    def __init__(self, oracle, betas: np.ndarray, prediction: str) -> None:
        super().__init__()
        self.oracle = oracle
        alpha_bar = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        self.log_sigma_tilde = 0.5 * np.log(1.0 / alpha_bar - 1.0)
        self.prediction = prediction
        self.calls = 0

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        self.calls += 1
        tau = timestep.detach().cpu().numpy().astype(np.float64)
        sigma_tilde = np.exp(np.interp(tau, np.arange(self.log_sigma_tilde.size), self.log_sigma_tilde))
        alpha = 1.0 / np.sqrt(1.0 + sigma_tilde**2)
        sigma = sigma_tilde * alpha
        st = torch.as_tensor(sigma_tilde, device=sample.device)
        shape = (-1,) + (1,) * (sample.dim() - 1)
        a = torch.as_tensor(alpha, device=sample.device).reshape(shape)
        s = torch.as_tensor(sigma, device=sample.device).reshape(shape)
        x_tilde = sample / a
        score = self.oracle.ve_score(x_tilde, st)
        epsilon = -st.reshape(shape) * score
        x0 = x_tilde + st.reshape(shape) ** 2 * score
        if self.prediction == "epsilon":
            out = epsilon
        elif self.prediction == "v_prediction":
            out = a * epsilon - s * x0
        else:
            out = x0
        return SimpleNamespace(sample=out)
