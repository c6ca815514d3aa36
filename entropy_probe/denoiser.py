"""The one model interface: a denoiser in variance-exploding (VE) coordinates.

Every checkpoint becomes a `Denoiser`: D(x̃, σ̃) ≈ E[x_0 | x̃] for x̃ = x_0 + σ̃ ε, valid for
σ̃ in [sigma_min, sigma_max]. Any linear process reaches x_t = α x̃ with σ̃ = σ/α, so the score
and the excess score of every process derive from D (see `field.EntropyMatchingField`).

Inputs and outputs of `denoise` and `ve_score` are float64 tensors: x̃ of shape (B, *data_shape)
and σ̃ of shape (B,). Adapters cast to the network's dtype for the forward pass and back.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .errors import SigmaRangeError


class Denoiser:
    """Base class of all adapters; subclasses implement `denoise` or `ve_score` (or both)."""

    #: Valid noise levels σ̃ (inclusive); oracles accept (0, ∞).
    sigma_min: float = 0.0
    sigma_max: float = math.inf
    #: Shape of one data item, e.g. (1, 28, 28) or (d,).
    data_shape: tuple[int, ...] = ()
    #: Range of the data values, e.g. (0.0, 1.0) for images; None for unbounded data.
    pixel_range: Optional[tuple[float, float]] = None
    #: Bin width Δ of quantised data (1/255 for 8-bit pixels in [0, 1]); None if continuous.
    quantization_step: Optional[float] = None
    #: Process spec the model was trained with, used as the default for measurement.
    native_process: Optional[str] = None
    #: Data spec to measure on when none is given (a network's held-out split), or None.
    default_data: Optional[str] = None
    #: Number of classes of a class-conditional model, None if unconditional.
    num_classes: Optional[int] = None
    #: SHA-256 of the weights file (or of the oracle parameters).
    fingerprint: str = ""
    #: Origin of the model: kind, path and adapter-specific details.
    provenance: dict[str, Any]
    #: The torch module that runs the network, if any; the default `prepare` applies the
    #: throughput options of a measurement to it. None for oracles.
    network: Optional[torch.nn.Module] = None

    def __init__(self) -> None:
        self.provenance = {}
        self.device = torch.device("cpu")
        #: Number of data items passed through the network so far (one item = one evaluation).
        self.evaluations = 0

    @property
    def dim(self) -> int:
        return math.prod(self.data_shape)

    def to(self, device: torch.device | str) -> "Denoiser":
        self.device = torch.device(device)
        return self

    def denoise(self, x_tilde: torch.Tensor, sigma_tilde: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return the estimate of x_0 given x̃ = x_0 + σ̃ ε (float64, shape of x̃)."""
        score = self.ve_score(x_tilde, sigma_tilde, labels)
        return x_tilde + _expand(sigma_tilde, x_tilde) ** 2 * score

    def ve_score(self, x_tilde: torch.Tensor, sigma_tilde: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return ∇ log p̃_σ̃(x̃) = (D(x̃, σ̃) − x̃)/σ̃² (float64, shape of x̃).

        Adapters whose network predicts a score or a noise override this to avoid the
        cancellation in D − x̃ at small σ̃.
        """
        if type(self).denoise is Denoiser.denoise:
            raise NotImplementedError(f"{type(self).__name__} implements neither denoise nor ve_score")
        x0 = self.denoise(x_tilde, sigma_tilde, labels)
        return (x0 - x_tilde) / _expand(sigma_tilde, x_tilde) ** 2

    __call__ = denoise

    def prepare(self, *, channels_last: bool = False, compile: bool = False, cuda_graphs: bool = False) -> list[str]:
        """Apply throughput options to the network after `to(device)`; return a note per option not applied.

        channels_last converts the weights of an image network to the channels-last layout
        (the measurement passes channels-last inputs); compile wraps it in torch.compile;
        cuda_graphs compiles in torch.compile's "reduce-overhead" mode, which replays CUDA
        graphs. The default applies them to `network` when it is a torch module and does
        nothing otherwise; adapters with several modules override it.
        """
        from .evaluation import prepare_module

        requested = [name for name, on in (("channels-last", channels_last), ("compile", compile), ("cuda-graphs", cuda_graphs)) if on]
        if not requested:
            return []
        if not isinstance(self.network, torch.nn.Module):
            return [f"{type(self).__name__} runs no torch module; --{', --'.join(requested)} has no effect"]
        if getattr(self, "_compiled", False):
            compile = cuda_graphs = False
        self.network = prepare_module(self.network, channels_last=channels_last, compile_model=compile, cuda_graphs=cuda_graphs)
        self._compiled = getattr(self, "_compiled", False) or compile or cuda_graphs
        return []

    def check_sigma_range(self, low: float, high: float, purpose: str = "the requested time range") -> None:
        """Raise SigmaRangeError when [low, high] leaves [sigma_min, sigma_max]."""
        # A relative slack of 1e-9 absorbs round-off in t ↔ σ̃ conversions at the ends.
        slack = 1e-9
        if low < self.sigma_min * (1 - slack) or high > self.sigma_max * (1 + slack):
            raise SigmaRangeError(
                f"{purpose} needs noise levels σ/α from {low:.4g} to {high:.4g}, but the model is "
                f"valid only from {self.sigma_min:.4g} to {self.sigma_max:.4g}; narrow "
                f"--t-min/--t-max or choose a process whose range the model covers"
            )


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-item values of shape (B,) to broadcast against (B, ...)."""
    return values.reshape(values.shape + (1,) * (like.dim() - values.dim()))


expand_like = _expand
