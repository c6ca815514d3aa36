"""Adapter for networks trained by `entropy-probe train` (config.json kind "network").

The network outputs the excess score ê = e_θ(x_m, t_m) of its own training process m. At a VE
noise level σ̃ the adapter evaluates it at t_m = t_m(σ̃) and x_m = α_m x̃, forms the native score
s_m = k_m x_m + ê with k_m = 2 f_m / g_m², and returns the VE score α_m s_m. This skips the
denoiser D = x̃ + σ̃² · score and the cancellation in D − x̃ at small σ̃. The conversion runs in
float64; only the network itself runs in its own dtype.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..checkpoint import CONFIG_NAME
from ..denoiser import Denoiser, expand_like
from ..errors import DataError
from . import Adapter, register


class BuiltinNetwork(Denoiser):
    """A network checkpoint of this package as a Denoiser."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        super().__init__()
        from ..train.io import load_network

        self.path = Path(path)
        self.network, self.config, digest = load_network(self.path, device)
        self.device = torch.device(device)
        self.process = self.network.process
        t_min, t_max = (float(v) for v in self.config["train_time_range"])
        self.sigma_min = float(self.process.sigma_tilde(t_min))
        self.sigma_max = float(self.process.sigma_tilde(t_max))
        self.native_process = self.process.spec
        data = self.config.get("data") or {}
        self.data_shape = tuple(int(v) for v in data.get("shape", ()))
        self.pixel_range = tuple(data["pixel_range"]) if data.get("pixel_range") else None
        self.quantization_step = data.get("quantization_step")
        # Measure on held-out data: the held-out split of an image set, or fresh draws of a
        # mixture (its spec carries the exact law, so s_tot and score_error come with it).
        self.default_data = data.get("heldout_spec")
        self.num_classes = self.config.get("num_classes")
        self.fingerprint = digest
        self.provenance = {
            "kind": "network",
            "adapter": "builtin",
            "path": str(self.path.resolve()),
            "architecture": self.config.get("architecture"),
            "epoch": self.config.get("epoch"),
            "process": self.native_process,
            "data": data.get("spec"),
            "weights": self.config.get("weights"),
            "weights_sha256": digest,
        }

    def to(self, device: torch.device | str) -> "BuiltinNetwork":
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    def prepare(self, *, channels_last: bool = False, compile: bool = False, cuda_graphs: bool = False) -> list[str]:
        """Apply the throughput options to the core network only.

        The wrapper around the core computes the process coefficients in NumPy, which
        torch.compile cannot trace, so only the core is compiled.
        """
        from ..evaluation import prepare_module

        if getattr(self, "_compiled", False):
            compile = cuda_graphs = False
        self.network.core = prepare_module(self.network.core, channels_last=channels_last, compile_model=compile, cuda_graphs=cuda_graphs)
        self._compiled = getattr(self, "_compiled", False) or compile or cuda_graphs
        return []

    def excess_score(self, x: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """e_θ(x, t) at native times t (B,) of the training process, as float64."""
        labels = self._labels(labels, x.shape[0])
        self.evaluations += x.shape[0]
        return self.network(x.to(self.device), t, labels).to(torch.float64)

    def ve_score(self, x_tilde: torch.Tensor, sigma_tilde: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        sigma_np = sigma_tilde.detach().to("cpu", torch.float64).numpy()
        self.check_sigma_range(float(sigma_np.min()), float(sigma_np.max()), "this evaluation")
        t_m = self.process.t_from_sigma_tilde(sigma_np)
        alpha = torch.as_tensor(self.process.alpha(t_m), dtype=torch.float64, device=x_tilde.device)
        k = torch.as_tensor(self.process.equilibrium_score_coefficient(t_m), dtype=torch.float64, device=x_tilde.device)
        x_m = expand_like(alpha, x_tilde) * x_tilde.to(torch.float64)
        e = self.excess_score(x_m, torch.from_numpy(np.ascontiguousarray(t_m)), labels).to(x_tilde.device)
        native_score = expand_like(k, x_m) * x_m + e
        return expand_like(alpha, x_m) * native_score

    def _labels(self, labels: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        if self.num_classes is None:
            return None
        if labels is None:
            raise DataError(
                f"the network {str(self.path)!r} is class-conditional ({self.num_classes} classes) "
                f"and needs labels; measure it on labelled data (for example its held-out split)"
            )
        if labels.shape != (batch,):
            raise DataError(f"expected {batch} labels, got a tensor of shape {tuple(labels.shape)}")
        return labels.to(self.device, torch.long)


def _detect(path: Path) -> bool:
    config = path / CONFIG_NAME
    if not config.is_file():
        return False
    try:
        data: Any = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == "entropy-probe" and data.get("kind") == "network"


def _load(path: Path, device: str = "cpu", **options: Any) -> BuiltinNetwork:
    return BuiltinNetwork(path, device=device)


register(Adapter("builtin", _detect, _load, "networks trained by 'entropy-probe train' (mixture MLP, U-Net)"))
