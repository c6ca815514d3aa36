"""The excess score e_θ of any denoiser under any linear process.

For x_t = α x̃ with σ̃ = σ/α, the model's score of p_t is ∇ log p_t(x) = ∇̃ log p̃_σ̃(x/α) / α,
where ∇̃ log p̃ is the denoiser's VE score, and the excess score subtracts the quasi-invariant
part: e_θ(x, t) = ∇ log p_t(x) − k(t) x with k = 2f/g². Everything here is float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .denoiser import Denoiser, expand_like
from .processes import Process


@dataclass
class Coefficients:
    """Process coefficients at per-item times, as float64 tensors of shape (B,)."""

    t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    sigma2: torch.Tensor
    sigma_tilde: torch.Tensor
    f: torch.Tensor
    g2: torch.Tensor
    k: torch.Tensor

    @classmethod
    def at(cls, process: Process, t: np.ndarray, device: torch.device | str = "cpu") -> "Coefficients":
        t = np.asarray(t, dtype=np.float64)
        values = {
            "t": t,
            "alpha": process.alpha(t),
            "sigma": process.sigma(t),
            "sigma2": process.sigma2(t),
            "sigma_tilde": process.sigma_tilde(t),
            "f": process.f(t),
            "g2": process.g2(t),
            "k": process.equilibrium_score_coefficient(t),
        }
        # np.array copies, so read-only inputs never reach torch (it warns on those).
        return cls(**{name: torch.as_tensor(np.array(v, dtype=np.float64), device=device) for name, v in values.items()})

    def expand(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return expand_like(getattr(self, name), like)


class EntropyMatchingField:
    """e_θ(x, t) of a denoiser under a process."""

    def __init__(self, denoiser: Denoiser, process: Process) -> None:
        self.denoiser = denoiser
        self.process = process

    def score(self, x: torch.Tensor, coeffs: Coefficients, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """∇ log p_t(x) of the model at the times in `coeffs`."""
        alpha = coeffs.expand("alpha", x)
        return self.denoiser.ve_score(x / alpha, coeffs.sigma_tilde, labels) / alpha

    def excess_score(self, x: torch.Tensor, coeffs: Coefficients, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """e_θ(x, t) = ∇ log p_t(x) − k(t) x."""
        return self.score(x, coeffs, labels) - coeffs.expand("k", x) * x
