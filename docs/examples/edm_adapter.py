"""Example adapter: an EDM-preconditioned network as an entropy-probe Denoiser.

EDM (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
NeurIPS 2022) wraps a raw network F in σ-dependent scalings,

    D(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ)),
    c_skip = σ_d² / (σ² + σ_d²),  c_out = σ σ_d / sqrt(σ² + σ_d²),
    c_in = 1 / sqrt(σ² + σ_d²),   c_noise = log(σ) / 4,

where x = x_0 + σ ε is already in variance-exploding coordinates, so σ is the σ̃ of
entropy-probe. The VE score (D − x)/σ² is written out as
−x/(σ² + σ_d²) + σ_d F / (σ sqrt(σ² + σ_d²)), which has no cancellation at small σ.

Use it from the command line with

    entropy-probe measure my_edm.pt --adapter edm_adapter:load --data ... --out result.nc

after putting this file on PYTHONPATH and filling in `load` for your checkpoint format.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from entropy_probe.denoiser import Denoiser, expand_like


class EDMDenoiser(Denoiser):
    """D(x, σ) of an EDM-preconditioned network F(c_in x, c_noise, labels)."""

    def __init__(
        self,
        network: Callable[..., torch.Tensor],
        data_shape: tuple[int, ...],
        sigma_data: float = 0.5,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.network = network
        self.data_shape = tuple(data_shape)
        self.sigma_data = sigma_data
        # EDM trains on σ in [0.002, 80] for images in [−1, 1].
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.pixel_range = (-1.0, 1.0)
        self.quantization_step = 2.0 / 255.0
        self.native_process = f"ve:sigma_min={sigma_min!r},sigma_max={sigma_max!r}"
        self.dtype = dtype
        self.provenance = {"kind": "edm-example"}

    def _raw(self, x: torch.Tensor, sigma: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        c_in = 1.0 / torch.sqrt(sigma**2 + self.sigma_data**2)
        c_noise = torch.log(sigma) / 4.0
        out = self.network((expand_like(c_in, x) * x).to(self.dtype), c_noise.to(self.dtype), labels)
        self.evaluations += x.shape[0]
        return out.to(torch.float64)

    def ve_score(self, x_tilde, sigma_tilde, labels=None):
        raw = self._raw(x_tilde, sigma_tilde, labels)
        s = expand_like(sigma_tilde, x_tilde)
        total = s * s + self.sigma_data**2
        return -x_tilde / total + self.sigma_data * raw / (s * torch.sqrt(total))

    def denoise(self, x_tilde, sigma_tilde, labels=None):
        raw = self._raw(x_tilde, sigma_tilde, labels)
        s = expand_like(sigma_tilde, x_tilde)
        total = s * s + self.sigma_data**2
        return (self.sigma_data**2 / total) * x_tilde + (s * self.sigma_data / torch.sqrt(total)) * raw


def load(source: str, device: str = "cpu", **options) -> EDMDenoiser:
    """Entry for `--adapter edm_adapter:load`: build the network of `source` and wrap it.

    Replace the body with the loading code of your checkpoint format; keep untrusted files to
    safetensors or torch.load(weights_only=True).
    """
    raise NotImplementedError(f"fill in how to build the EDM network stored in {source!r}")


__all__ = ["EDMDenoiser", "load"]
