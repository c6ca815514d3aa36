"""Exact log-likelihood of a denoiser's probability-flow ODE model.

The ODE dx/du = F(x, u) = −σ² e_θ(x, t(u)) with u = log σ̃ (see `sampling`) carries the prior π
at T to the model's law q at t_min. Along a trajectory d log q/du = −div F, so for a point x at
t_min

    log q(x) = log π(x_T) + ∫_{u(t_min)}^{u(T)} div F(x_u, u) du,

integrated from t_min up to T together with the state (Chen et al. 2018, "Neural ordinary
differential equations"; Song et al. 2021, "Score-based generative modeling through SDEs").
The divergence is estimated by Hutchinson's estimator div F ≈ vᵀ (∂F/∂x) v, averaged over
`probes` vectors v with E[v vᵀ] = I (Rademacher or Gaussian), drawn once per item and kept
fixed along its trajectory; vᵀ ∂F/∂x is a vector-Jacobian product from torch.autograd, so the
denoiser must be differentiable. `probe="exact"` takes the trace from d products instead.

Units: nats; bits/dim of quantised data = continuous bits/dim − log2(Δ), as for the
cross-entropy bound of the probe. The likelihood is of the model's law at t_min, so it is
comparable with the bound on H(p_{t_min}, q_θ) when the items are drawn from p_{t_min}
(`perturb=True`: x = α(t_min) x_0 + σ(t_min) ε).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from .denoiser import Denoiser
from .errors import DataError, SpecError, UserError
from .field import Coefficients
from .odesolvers import dormand_prince
from .processes import Process
from .quantities import Prior
from .sampling import TAG_PERTURB, TAG_PROBE, ReverseDynamics, resolve_prior, sample_generator

LN2 = math.log(2.0)
PROBES = ("rademacher", "gaussian", "exact")


@dataclass
class LikelihoodSettings:
    """Options of an ODE likelihood evaluation."""

    t_min: Optional[float] = None
    t_max: Optional[float] = None
    #: Hutchinson probe vectors per item.
    probes: int = 1
    #: Distribution of the probe vectors, or "exact" for the full trace (d products per step).
    probe: str = "rademacher"
    #: Evaluate at x = α x_0 + σ ε (a draw from p_{t_min}); otherwise at x = x_0 itself.
    perturb: bool = True
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 10_000
    seed: int = 0
    batch_size: int = 128
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        if self.probe not in PROBES:
            raise SpecError(f"unknown probe distribution {self.probe!r}; choose one of {', '.join(PROBES)}")
        if self.probes < 1:
            raise SpecError(f"invalid number of probes {self.probes}; it must be >= 1")
        if not (self.rtol > 0 and self.atol > 0):
            raise SpecError(f"invalid tolerances rtol={self.rtol}, atol={self.atol}; both must be > 0")
        if self.batch_size < 1:
            raise SpecError(f"invalid batch size {self.batch_size}; it must be >= 1")


@dataclass
class LikelihoodResult:
    """Per-item negative log-likelihoods (nats) and their parts."""

    nll: np.ndarray
    #: −log π(x_T) per item.
    prior_nll: np.ndarray
    #: ∫ div F du per item (log q(x) = log π(x_T) + divergence_integral).
    divergence_integral: np.ndarray
    #: Denoiser evaluations per item (backward passes not counted).
    evaluations: np.ndarray
    #: States x_T where the trajectories reach T (CPU, float64, shape (N, *data_shape)).
    end_states: torch.Tensor
    dim: int
    quantization_step: Optional[float]
    prior: Prior
    t_min: float
    t_max: float
    settings: LikelihoodSettings

    @property
    def offset_bits(self) -> float:
        """−log2(Δ) for quantised data, 0 for continuous data."""
        return -math.log2(self.quantization_step) if self.quantization_step else 0.0

    @property
    def bpd(self) -> np.ndarray:
        """Per-item bits/dim, including the quantisation offset."""
        return self.nll / (self.dim * LN2) + self.offset_bits

    def mean_nll(self) -> tuple[float, float]:
        """Mean NLL (nats) and its standard error over items."""
        return _mean_stderr(self.nll)

    def mean_bpd(self) -> tuple[float, float]:
        return _mean_stderr(self.bpd)

    def summary(self) -> dict[str, Any]:
        nll, nll_se = self.mean_nll()
        bpd, bpd_se = self.mean_bpd()
        return {
            "nll": nll,
            "nll_stderr": nll_se,
            "bpd": bpd,
            "bpd_stderr": bpd_se,
            "items": int(self.nll.size),
            "evaluations_mean": float(self.evaluations.mean()) if self.evaluations.size else 0.0,
            "quantization_step": self.quantization_step or 0.0,
            "prior": self.prior.kind,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "settings": asdict(self.settings),
        }


def _mean_stderr(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return math.nan, math.nan
    se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    return float(values.mean()), se


def _probe_vectors(settings: LikelihoodSettings, indices: np.ndarray, dim: int) -> Optional[torch.Tensor]:
    """Probe vectors of shape (B, probes, dim), one generator per item; None for the exact trace."""
    if settings.probe == "exact":
        return None
    vectors = []
    for i in indices:
        generator = sample_generator(settings.seed, TAG_PROBE, int(i))
        if settings.probe == "gaussian":
            v = torch.randn((settings.probes, dim), generator=generator, dtype=torch.float64)
        else:
            v = torch.randint(0, 2, (settings.probes, dim), generator=generator).to(torch.float64) * 2.0 - 1.0
        vectors.append(v)
    return torch.stack(vectors)


def _divergence(velocity: torch.Tensor, x: torch.Tensor, probes: Optional[torch.Tensor]) -> torch.Tensor:
    """Estimate of div F per item from vector-Jacobian products of velocity = F(x)."""
    flat_velocity = velocity.reshape(velocity.shape[0], -1)
    dim = flat_velocity.shape[1]
    if probes is None:
        total = torch.zeros(flat_velocity.shape[0], dtype=torch.float64, device=x.device)
        for j in range(dim):
            (row,) = torch.autograd.grad(flat_velocity[:, j].sum(), x, retain_graph=True)
            total = total + row.reshape(row.shape[0], -1)[:, j]
        return total
    total = torch.zeros(flat_velocity.shape[0], dtype=torch.float64, device=x.device)
    count = probes.shape[1]
    for p in range(count):
        v = probes[:, p, :]
        (vjp,) = torch.autograd.grad(flat_velocity, x, grad_outputs=v, retain_graph=p + 1 < count)
        total = total + (vjp.reshape(vjp.shape[0], -1) * v).sum(1)
    return total / count


class NotDifferentiableError(UserError):
    """The model's output carries no autograd graph, so its divergence cannot be taken."""


def check_differentiable(model: Denoiser, x: torch.Tensor, sigma_tilde: float, labels: Optional[torch.Tensor]) -> None:
    """Raise NotDifferentiableError unless denoise and ve_score carry an autograd graph.

    Both are checked because either may wrap the network: a forward pass under torch.no_grad
    still gives a ve_score = (D − x̃)/σ̃² that depends on x̃, but without D's Jacobian.
    """
    with torch.inference_mode(False), torch.enable_grad():
        probe_x = x[:1].detach().clone().requires_grad_(True)
        level = torch.full((1,), sigma_tilde, dtype=torch.float64, device=x.device)
        first_label = None if labels is None else labels[:1].to(x.device)
        outputs = {
            "denoise": model.denoise(probe_x, level, first_label),
            "ve_score": model.ve_score(probe_x, level, first_label),
        }
    for name, output in outputs.items():
        if not output.requires_grad:
            raise NotDifferentiableError(
                f"the model's {name} output carries no autograd graph (the adapter may run the "
                f"network under torch.no_grad or inference_mode, or the output is constant), so "
                f"the ODE likelihood cannot take its divergence; make the forward pass differentiable"
            )


def log_likelihood(
    model: Denoiser,
    process: Process,
    x0: torch.Tensor,
    settings: LikelihoodSettings,
    labels: Optional[torch.Tensor] = None,
    second_moment: Optional[float] = None,
    quantization_step: Optional[float] = None,
    item_ids: Optional[np.ndarray] = None,
    progress_factory: Optional[Callable] = None,
) -> LikelihoodResult:
    """Negative log-likelihood under the model's ODE law at t_min of every item of x0.

    `item_ids` (default 0..N−1) seed each item's probe vectors and perturbation noise, so an
    item's result does not depend on the batch it is in. `second_moment` (E|x_0|² of the data)
    is needed for processes with f(T) ≥ 0, whose prior is moment-matched.
    """
    settings.validate()
    t_min = process.default_t_min if settings.t_min is None else float(settings.t_min)
    t_max = process.default_t_max if settings.t_max is None else float(settings.t_max)
    process.check_time_range(t_min, t_max)
    model.check_time_range(process, t_min, t_max, "the time range of the likelihood")
    x0 = torch.as_tensor(x0, dtype=torch.float64)
    if tuple(x0.shape[1:]) != tuple(model.data_shape):
        raise DataError(f"items of shape {tuple(x0.shape[1:])} do not match the model's data shape {tuple(model.data_shape)}")
    n = x0.shape[0]
    dim = model.dim
    prior = resolve_prior(process, t_max, dim, second_moment)
    ids = np.arange(n) if item_ids is None else np.asarray(item_ids, dtype=np.int64)
    model.to(settings.device)
    dynamics = ReverseDynamics(model, process, settings.device)

    parts: dict[str, list] = {"prior": [], "div": [], "evaluations": [], "end": []}
    starts = range(0, n, settings.batch_size)
    iterator = starts
    if settings.progress and progress_factory is not None:
        iterator = progress_factory(starts, total=len(starts), desc="likelihood", unit="batch")
    for start in iterator:
        stop = min(n, start + settings.batch_size)
        batch_ids = ids[start:stop]
        x = x0[start:stop]
        if settings.perturb:
            noise = torch.stack(
                [torch.randn(x.shape[1:], generator=sample_generator(settings.seed, TAG_PERTURB, int(i)), dtype=torch.float64) for i in batch_ids]
            )
            x = float(process.alpha(t_min)) * x + float(process.sigma(t_min)) * noise
        batch_labels = None if labels is None else labels[start:stop]
        prior_nll, divergence, evaluations, end = _integrate_batch(
            dynamics, x.to(settings.device), batch_labels, batch_ids, prior, t_min, t_max, settings
        )
        parts["end"].append(end)
        parts["prior"].append(prior_nll)
        parts["div"].append(divergence)
        parts["evaluations"].append(evaluations)
    prior_nll = np.concatenate(parts["prior"])
    divergence = np.concatenate(parts["div"])
    return LikelihoodResult(
        nll=prior_nll - divergence,
        prior_nll=prior_nll,
        divergence_integral=divergence,
        evaluations=np.concatenate(parts["evaluations"]),
        end_states=torch.cat(parts["end"]),
        dim=dim,
        quantization_step=quantization_step,
        prior=prior,
        t_min=t_min,
        t_max=t_max,
        settings=settings,
    )


def _integrate_batch(dynamics, x, labels, item_ids, prior, t_min, t_max, settings):
    """Integrate one batch; return −log π(x_T), ∫ div F du, evaluations and x_T."""
    process = dynamics.process
    size = x.shape[0]
    shape = tuple(x.shape[1:])
    dim = math.prod(shape)
    probes = _probe_vectors(settings, item_ids, dim)
    if probes is not None:
        probes = probes.to(x.device)
    dynamics.start_batch(size, labels)

    def rhs(y: torch.Tensor, u: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t = np.asarray(process.t_from_log_sigma_tilde(u.cpu().numpy()), dtype=np.float64)
        coeffs = Coefficients.at(process, t, y.device)
        with torch.inference_mode(False), torch.enable_grad():
            state = y[:, :dim].detach().clone().reshape((y.shape[0],) + shape).requires_grad_(True)
            velocity = dynamics.flow_velocity(state, coeffs, index)
            divergence = _divergence(velocity, state, None if probes is None else probes[index])
        return torch.cat([velocity.detach().reshape(y.shape[0], dim), divergence.detach()[:, None]], dim=1)

    check_differentiable(dynamics.model, x, float(process.sigma_tilde(t_min)), labels)
    y0 = torch.cat([x.reshape(size, dim), torch.zeros((size, 1), dtype=torch.float64, device=x.device)], dim=1)
    result = dormand_prince(
        rhs,
        y0,
        float(process.log_sigma_tilde(t_min)),
        float(process.log_sigma_tilde(t_max)),
        rtol=settings.rtol,
        atol=settings.atol,
        max_steps=settings.max_steps,
    )
    x_end = result.y[:, :dim]
    prior_nll = 0.5 * (dim * math.log(2.0 * math.pi * prior.variance) + (x_end * x_end).sum(1) / prior.variance)
    return (
        prior_nll.cpu().numpy(),
        result.y[:, dim].cpu().numpy(),
        dynamics.evaluations.numpy().copy(),
        x_end.reshape((size,) + shape).cpu(),
    )
