"""Proposal densities q(t) for importance-sampled totals, and their strata.

A proposal is a piecewise-constant density in a coordinate x of time, either u = log σ̃ (the
shapes that follow a rate) or t itself (the uniform-t baseline). Sampling inverts its exact
cumulative distribution, so the density q(t) = q_x(x(t)) dx/dt of every drawn time is known
in closed form, which is all an unbiased weight 1/q(t) needs.

Shapes (all on [t_min, T]):

- `gaussian`: proportional to the entropy-production rate of Gaussian data with the data's mean
  and covariance spectrum. Per unit u it is σ² Σ_i [1/v_i + 2k + k² v_i] + σ² k² α² |μ|² with
  v_i = α² λ_i + σ², k = 2f/g², over the covariance eigenvalues λ_i; this is
  (g²/2) Σ_i [1/v + 2k + k²(v + m²)] times dt/du = 2σ²/g².
- `pilot`: proportional to a pilot estimate of the rate per unit u, interpolated linearly.
- `log-snr`: uniform in u (equivalently in log-SNR).
- `uniform-t`: uniform in t, the plain Monte Carlo baseline.

The rate-shaped proposals are mixed with a uniform density in u (weight `defensive`), which
bounds the weight 1/q where the shape underestimates the rate, so the variance stays finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SpecError
from .processes import Process
from .quadrature import Grid

PROPOSALS = ("gaussian", "pilot", "log-snr", "uniform-t")

#: Bins of the piecewise-constant density of the rate-shaped proposals.
PROPOSAL_BINS = 1024


@dataclass(frozen=True)
class Proposal:
    """A piecewise-constant density over [t_min, T] in u = log σ̃ or in t."""

    kind: str
    process: Process
    t_min: float
    t_max: float
    #: "log_sigma_tilde" or "t".
    coordinate: str
    #: Bin edges in the coordinate, increasing, from x(t_min) to x(T).
    edges: np.ndarray
    #: Probability of every bin; positive, summing to 1.
    probabilities: np.ndarray

    @property
    def cdf(self) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(self.probabilities)[:-1], [1.0]])

    def _x_to_t(self, x: np.ndarray) -> np.ndarray:
        if self.coordinate == "t":
            t = np.asarray(x, dtype=np.float64)
        else:
            t = np.asarray(self.process.t_from_log_sigma_tilde(x), dtype=np.float64)
        return np.clip(t, self.t_min, self.t_max)

    def _t_to_x(self, t: np.ndarray) -> np.ndarray:
        if self.coordinate == "t":
            return np.asarray(t, dtype=np.float64)
        return np.asarray(self.process.log_sigma_tilde(t), dtype=np.float64)

    def sample_t(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Times at cumulative probabilities p, and the density q(t) per unit time at each.

        The density is that of the bin each time was drawn from, so round-off in the
        conversion between u and t never assigns a time to the neighbouring bin.
        """
        p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
        cdf = self.cdf
        bins = np.clip(np.searchsorted(cdf, p, side="right") - 1, 0, self.probabilities.size - 1)
        widths = np.diff(self.edges)
        fraction = np.clip((p - cdf[bins]) / self.probabilities[bins], 0.0, 1.0)
        t = self._x_to_t(self.edges[bins] + fraction * widths[bins])
        density = self.probabilities[bins] / widths[bins]
        if self.coordinate != "t":
            density = density * self.process.dlog_sigma_tilde_dt(t)
        return t, density

    def quantile_t(self, p: np.ndarray) -> np.ndarray:
        """Time t at cumulative probability p (the inverse distribution function)."""
        return self.sample_t(p)[0]

    def density_t(self, t: np.ndarray) -> np.ndarray:
        """q(t) per unit time."""
        t = np.asarray(t, dtype=np.float64)
        x = self._t_to_x(t)
        widths = np.diff(self.edges)
        bins = np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, widths.size - 1)
        density_x = self.probabilities[bins] / widths[bins]
        if self.coordinate == "t":
            return density_x
        return density_x * self.process.dlog_sigma_tilde_dt(t)

    def strata_grid(self, strata: int) -> Grid:
        """Strata of equal probability 1/strata as a `Grid` whose weights are the stratum widths in t.

        The node of a stratum is its median under q. Row k of `cumulative` integrates the
        strata before k and half of stratum k, an approximation used only for plotting the
        cumulative entropy.
        """
        edges_t = self.quantile_t(np.linspace(0.0, 1.0, strata + 1))
        edges_t[0], edges_t[-1] = self.t_min, self.t_max
        centres = self.quantile_t((np.arange(strata) + 0.5) / strata)
        widths = np.diff(edges_t)
        cumulative = np.tril(np.broadcast_to(widths, (strata, strata)), k=-1) + np.diag(0.5 * widths)
        return Grid("importance", self.t_min, self.t_max, centres, widths, cumulative)


def _u_range(process: Process, t_min: float, t_max: float) -> tuple[float, float]:
    return float(process.log_sigma_tilde(t_min)), float(process.log_sigma_tilde(t_max))


def _mixed(shape: np.ndarray, defensive: float) -> np.ndarray:
    shape = np.clip(np.nan_to_num(shape, nan=0.0, posinf=0.0), 0.0, None)
    total = shape.sum()
    uniform = np.full(shape.size, 1.0 / shape.size)
    if not total > 0:
        return uniform
    return (1.0 - defensive) * shape / total + defensive * uniform


def gaussian_rate_per_u(process: Process, t: np.ndarray, mean: np.ndarray, cov_eigenvalues: np.ndarray) -> np.ndarray:
    """Entropy-production rate per unit log σ̃ of Gaussian data with the given moments."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    lam = np.clip(np.asarray(cov_eigenvalues, dtype=np.float64), 0.0, None)
    mean_sq = float(np.sum(np.asarray(mean, dtype=np.float64) ** 2))
    alpha2 = process.alpha(t) ** 2
    sigma2 = process.sigma2(t)
    k = process.equilibrium_score_coefficient(t)
    v = alpha2[:, None] * lam[None, :] + sigma2[:, None]
    per_dim = 1.0 / v + 2.0 * k[:, None] + k[:, None] ** 2 * v
    return sigma2 * (per_dim.sum(axis=1) + k**2 * alpha2 * mean_sq)


def gaussian_proposal(process: Process, t_min: float, t_max: float, mean, cov_eigenvalues, defensive: float = 0.1) -> Proposal:
    u_min, u_max = _u_range(process, t_min, t_max)
    edges = np.linspace(u_min, u_max, PROPOSAL_BINS + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    t = np.clip(process.t_from_log_sigma_tilde(centres), t_min, t_max)
    shape = gaussian_rate_per_u(process, t, mean, cov_eigenvalues)
    return Proposal("gaussian", process, t_min, t_max, "log_sigma_tilde", edges, _mixed(shape, defensive))


def pilot_proposal(process: Process, grid: Grid, rate: np.ndarray, defensive: float = 0.1) -> Proposal:
    """Proposal proportional to a pilot rate (per unit time) measured at the nodes of `grid`."""
    u_nodes = np.asarray(process.log_sigma_tilde(grid.t), dtype=np.float64)
    rate_per_u = np.clip(rate, 0.0, None) / process.dlog_sigma_tilde_dt(grid.t)
    u_min, u_max = _u_range(process, grid.t_min, grid.t_max)
    edges = np.linspace(u_min, u_max, PROPOSAL_BINS + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    shape = np.interp(centres, u_nodes, rate_per_u)
    return Proposal("pilot", process, grid.t_min, grid.t_max, "log_sigma_tilde", edges, _mixed(shape, defensive))


def log_snr_proposal(process: Process, t_min: float, t_max: float) -> Proposal:
    u_min, u_max = _u_range(process, t_min, t_max)
    return Proposal("log-snr", process, t_min, t_max, "log_sigma_tilde", np.array([u_min, u_max]), np.ones(1))


def uniform_t_proposal(process: Process, t_min: float, t_max: float) -> Proposal:
    return Proposal("uniform-t", process, t_min, t_max, "t", np.array([t_min, t_max]), np.ones(1))


def check_proposal(kind: str, defensive: float) -> None:
    if kind not in PROPOSALS:
        raise SpecError(f"unknown proposal {kind!r}; choose one of {', '.join(PROPOSALS)}")
    if not 0.0 < defensive <= 1.0:
        raise SpecError(f"invalid defensive weight {defensive}; it must be in (0, 1] (for example 0.1)")
