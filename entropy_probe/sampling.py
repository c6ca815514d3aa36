"""Samplers driven by any denoiser under any linear process, through the excess score e_θ.

Forward process dx = f x dt + g dW; the model's score is k x + e_θ with k = 2f/g². In reverse
time τ = T − t (coefficients at t = T − τ), the reverse-time drift f x − g² ∇log p becomes

    dx = [f x + g² e_θ] dτ + g dB̄                (generative SDE)
    dx/dτ = (g²/2) e_θ                           (probability-flow ODE)

because g² k x = 2 f x: the equilibrium part of the drift cancels in the ODE. The ODE is
integrated in u = log σ̃ = log(σ/α), where dt/du = 2σ²/g², so dx/du = −σ² e_θ: a velocity of
order one near t_min, where dx/dτ diverges.

Samplers:
- `sde`: Euler–Maruyama on nodes uniform in log σ̃ from T down to t_min.
- `ode`: Heun's method (second order) on the same nodes.
- `ode-adaptive`: Dormand–Prince 5(4) with a step size of its own for every sample.

Every sample has its own random generator, seeded from the seed and the sample index. It
draws the sample's start at T and then its noise at every step, so a sample does not depend
on the batch size or on the other samples. Sampling starts from the prior π at T (see
`quantities.prior_for`) and may end with a denoising step x̂_0 = D(x/α, σ̃) at t_min.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from .denoiser import Denoiser
from .draws import derived_seed
from .errors import DataError, SpecError
from .field import Coefficients, EntropyMatchingField
from .odesolvers import dormand_prince
from .processes import Process
from .quantities import Prior, prior_for

logger = logging.getLogger(__name__)

SAMPLERS = ("sde", "ode", "ode-adaptive")

#: Tags that separate the random streams derived from one seed.
TAG_SAMPLE = 11
TAG_PROBE = 12
TAG_PERTURB = 13


@dataclass
class SamplerSettings:
    """Options of one sampling run; defaults are those of `entropy-probe sample`."""

    sampler: str = "sde"
    #: Steps of the fixed-step samplers (the adaptive one chooses its own).
    steps: int = 256
    seed: int = 0
    t_min: Optional[float] = None
    t_max: Optional[float] = None
    #: Replace the state at t_min by the denoiser's estimate of x_0 (one more evaluation).
    denoise: bool = True
    batch_size: int = 256
    #: Tolerances of the adaptive solver (relative, and absolute in data units).
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 10_000
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SpecError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps < 1:
            raise SpecError(f"invalid number of steps {self.steps}; it must be >= 1 (for example --steps 256)")
        if self.batch_size < 1:
            raise SpecError(f"invalid batch size {self.batch_size}; it must be >= 1")
        if not (self.rtol > 0 and self.atol > 0):
            raise SpecError(f"invalid tolerances rtol={self.rtol}, atol={self.atol}; both must be > 0")
        if self.max_steps < 1:
            raise SpecError(f"invalid max_steps {self.max_steps}; it must be >= 1")


@dataclass
class SampleResult:
    """Samples (CPU, float64, shape (N, *data_shape)) and how they were made."""

    x: torch.Tensor
    labels: Optional[torch.Tensor]
    #: Denoiser evaluations per sample.
    evaluations: np.ndarray
    prior: Prior
    t_min: float
    t_max: float
    process: str
    settings: SamplerSettings
    info: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """Provenance as plain JSON-compatible values."""
        return {
            "process": self.process,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "prior": self.prior.kind,
            "prior_variance": self.prior.variance,
            "evaluations_total": int(self.evaluations.sum()),
            "evaluations_per_sample_mean": float(self.evaluations.mean()) if self.evaluations.size else 0.0,
            "settings": asdict(self.settings),
            **self.info,
        }


def sample_generator(seed: int, tag: int, index: int) -> torch.Generator:
    """The CPU generator of one item of one random stream."""
    return torch.Generator().manual_seed(derived_seed(seed, tag, index))


def log_sigma_tilde_nodes(process: Process, t_min: float, t_max: float, steps: int) -> np.ndarray:
    """steps + 1 times from T down to t_min, uniform in log σ̃ (ends exact)."""
    u = np.linspace(float(process.log_sigma_tilde(t_max)), float(process.log_sigma_tilde(t_min)), steps + 1)
    t = np.asarray(process.t_from_log_sigma_tilde(u), dtype=np.float64)
    t[0], t[-1] = t_max, t_min
    return t


class ReverseDynamics:
    """Drifts of the generative SDE and ODE of one denoiser under one process.

    `labels` contains the class of every item of the batch being integrated (or None);
    `evaluations` counts denoiser evaluations per item of that batch.
    """

    def __init__(self, model: Denoiser, process: Process, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.process = process
        self.field = EntropyMatchingField(model, process)
        self.device = torch.device(device)
        self.labels: Optional[torch.Tensor] = None
        self.evaluations: Optional[torch.Tensor] = None

    def start_batch(self, size: int, labels: Optional[torch.Tensor]) -> None:
        self.labels = None if labels is None else labels.to(self.device)
        self.evaluations = torch.zeros(size, dtype=torch.int64)

    def coefficients(self, t: np.ndarray | float, size: int) -> Coefficients:
        times = np.array(np.broadcast_to(np.asarray(t, dtype=np.float64), (size,)))
        return Coefficients.at(self.process, times, self.device)

    def excess_score(self, x: torch.Tensor, coeffs: Coefficients, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        labels = self.labels
        if labels is not None and index is not None:
            labels = labels[index.to(labels.device)]
        if self.evaluations is not None:
            if index is None:
                self.evaluations += 1
            else:
                self.evaluations[index.cpu()] += 1
        return self.field.excess_score(x, coeffs, labels)

    def flow_velocity(self, x: torch.Tensor, coeffs: Coefficients, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """dx/du = −σ² e_θ with u = log σ̃ (the probability-flow ODE)."""
        return -coeffs.expand("sigma2", x) * self.excess_score(x, coeffs, index)

    def sde_drift(self, x: torch.Tensor, coeffs: Coefficients) -> torch.Tensor:
        """f x + g² e_θ, the drift of the generative SDE per unit of reverse time τ."""
        e = self.excess_score(x, coeffs)
        return coeffs.expand("f", x) * x + coeffs.expand("g2", x) * e

    def denoise(self, x: torch.Tensor, coeffs: Coefficients) -> torch.Tensor:
        """x̂_0 = D(x/α, σ̃)."""
        if self.evaluations is not None:
            self.evaluations += 1
        labels = self.labels
        return self.model.denoise(x / coeffs.expand("alpha", x), coeffs.sigma_tilde, labels)


def _euler_maruyama(dynamics: ReverseDynamics, x: torch.Tensor, nodes: np.ndarray, generators: list[torch.Generator]) -> torch.Tensor:
    size = x.shape[0]
    for t_now, t_next in zip(nodes[:-1], nodes[1:]):
        coeffs = dynamics.coefficients(t_now, size)
        dtau = float(t_now - t_next)
        drift = dynamics.sde_drift(x, coeffs)
        noise = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float64) for g in generators]).to(x.device)
        x = x + drift * dtau + torch.sqrt(coeffs.expand("g2", x) * dtau) * noise
    return x


def _heun(dynamics: ReverseDynamics, x: torch.Tensor, nodes: np.ndarray) -> torch.Tensor:
    size = x.shape[0]
    u = dynamics.process.log_sigma_tilde(nodes)
    coeffs_now = dynamics.coefficients(nodes[0], size)
    velocity = dynamics.flow_velocity(x, coeffs_now)
    for i in range(len(nodes) - 1):
        h = float(u[i + 1] - u[i])
        coeffs_next = dynamics.coefficients(nodes[i + 1], size)
        predicted = x + h * velocity
        velocity_next = dynamics.flow_velocity(predicted, coeffs_next)
        x = x + 0.5 * h * (velocity + velocity_next)
        if i + 2 < len(nodes):
            velocity = dynamics.flow_velocity(x, coeffs_next)
    return x


def _adaptive(dynamics: ReverseDynamics, x: torch.Tensor, t_min: float, t_max: float, settings: SamplerSettings) -> torch.Tensor:
    process = dynamics.process
    shape = x.shape

    def rhs(y: torch.Tensor, u: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # Every item has its own u, and the process maps u to t in NumPy: one small host
        # round trip per evaluation.
        t = process.t_from_log_sigma_tilde(u.cpu().numpy())
        coeffs = Coefficients.at(process, np.asarray(t, dtype=np.float64), y.device)
        state = y.reshape((y.shape[0],) + tuple(shape[1:]))
        return dynamics.flow_velocity(state, coeffs, index).reshape(y.shape[0], -1)

    result = dormand_prince(
        rhs,
        x.reshape(shape[0], -1),
        float(process.log_sigma_tilde(t_max)),
        float(process.log_sigma_tilde(t_min)),
        rtol=settings.rtol,
        atol=settings.atol,
        max_steps=settings.max_steps,
    )
    return result.y.reshape(shape)


def resolve_labels(model: Denoiser, n: int, labels: Optional[list[int] | np.ndarray]) -> Optional[torch.Tensor]:
    """Class of every sample: the given labels repeated in turn, or 0, 1, 2, … cyclically."""
    if model.num_classes is None:
        if labels is not None and len(labels):
            raise SpecError("labels were given, but the model is unconditional; drop --labels")
        return None
    if labels is None or len(labels) == 0:
        values = np.arange(n) % model.num_classes
    else:
        given = np.asarray(labels, dtype=np.int64)
        bad = given[(given < 0) | (given >= model.num_classes)]
        if bad.size:
            raise SpecError(
                f"invalid label {int(bad[0])}; the model has {model.num_classes} classes, "
                f"so labels run from 0 to {model.num_classes - 1}"
            )
        values = np.resize(given, n)
    return torch.as_tensor(values, dtype=torch.int64)


def resolve_prior(process: Process, t_max: float, dim: int, second_moment: Optional[float]) -> Prior:
    """Return the prior π at T. The moment-matched prior needs E|x_0|² of the data."""
    if float(process.f(t_max)) < 0:
        return prior_for(process, t_max, dim, 0.0)
    if second_moment is None:
        raise DataError(
            f"process {process.spec!r} has no equilibrium law at T, so the prior is a Gaussian "
            f"matched to the data's second moment; give data with --data (for example the "
            f"training set) or use a process with f(T) < 0 such as vp"
        )
    return prior_for(process, t_max, dim, second_moment)


def sample(
    model: Denoiser,
    process: Process,
    n: int,
    settings: SamplerSettings,
    labels: Optional[list[int] | np.ndarray] = None,
    second_moment: Optional[float] = None,
    progress_factory: Optional[Callable] = None,
) -> SampleResult:
    """Draw n samples from `model` under `process`.

    `second_moment` (E|x_0|², summed over dimensions) is needed only for processes with
    f(T) ≥ 0 such as ve, whose prior is moment-matched to the data.
    """
    settings.validate()
    if n < 1:
        raise SpecError(f"invalid number of samples {n}; it must be >= 1 (for example -n 64)")
    t_min = process.default_t_min if settings.t_min is None else float(settings.t_min)
    t_max = process.default_t_max if settings.t_max is None else float(settings.t_max)
    process.check_time_range(t_min, t_max)
    model.check_time_range(process, t_min, t_max, "the time range of sampling")
    prior = resolve_prior(process, t_max, model.dim, second_moment)
    sample_labels = resolve_labels(model, n, labels)
    model.to(settings.device)
    dynamics = ReverseDynamics(model, process, settings.device)
    nodes = log_sigma_tilde_nodes(process, t_min, t_max, settings.steps)
    shape = tuple(model.data_shape)

    outputs: list[torch.Tensor] = []
    evaluations: list[np.ndarray] = []
    starts = range(0, n, settings.batch_size)
    iterator = starts
    if settings.progress and progress_factory is not None:
        iterator = progress_factory(starts, total=len(starts), desc="sample", unit="batch")
    for start in iterator:
        stop = min(n, start + settings.batch_size)
        generators = [sample_generator(settings.seed, TAG_SAMPLE, i) for i in range(start, stop)]
        batch_labels = None if sample_labels is None else sample_labels[start:stop]
        dynamics.start_batch(stop - start, batch_labels)
        x = math.sqrt(prior.variance) * torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in generators])
        x = x.to(settings.device)
        with torch.inference_mode():
            if settings.sampler == "sde":
                x = _euler_maruyama(dynamics, x, nodes, generators)
            elif settings.sampler == "ode":
                x = _heun(dynamics, x, nodes)
            else:
                x = _adaptive(dynamics, x, t_min, t_max, settings)
            if settings.denoise:
                x = dynamics.denoise(x, dynamics.coefficients(t_min, x.shape[0]))
        if not bool(torch.isfinite(x).all()):
            raise DataError(
                f"sampling produced non-finite values in samples {start} to {stop - 1}; check the "
                f"checkpoint or use more --steps"
            )
        outputs.append(x.cpu())
        evaluations.append(dynamics.evaluations.numpy().copy())
    return SampleResult(
        x=torch.cat(outputs),
        labels=sample_labels,
        evaluations=np.concatenate(evaluations),
        prior=prior,
        t_min=t_min,
        t_max=t_max,
        process=process.spec,
        settings=settings,
    )


def save_samples(result: SampleResult, path, overwrite: bool = False, extra: Optional[dict[str, Any]] = None):
    """Write samples as .npz (arrays x, labels, evaluations and JSON text metadata), atomically.

    The file reads back as data with `npz:path=FILE` (key x).
    """
    import json
    import os
    import tempfile
    from pathlib import Path

    from .filemodes import publish_file
    from .results import check_output_path

    path = check_output_path(path, overwrite)
    arrays: dict[str, np.ndarray] = {
        "x": result.x.numpy(),
        "evaluations": result.evaluations,
        "metadata": np.array(json.dumps({**result.metadata(), **(extra or {})}, default=str)),
    }
    if result.labels is not None:
        arrays["labels"] = result.labels.numpy()
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.npz", dir=directory)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        publish_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

