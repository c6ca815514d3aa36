"""Time grids and quadrature rules for integrals over [t_min, T].

Rates are integrated in u = log σ̃ rather than in t: with dt/du = 2σ²/g², the entropy rate
per unit u is σ² E|e_θ|², which stays of order d near t_min where the rate per unit time
diverges like 1/t. Nodes uniform in u (equivalently in log-SNR) therefore resolve the sharp
peak of image rates at small t.

Rules:
- `simpson`: composite Simpson in u, an odd number of nodes including t_min and T (default).
- `trapezoid`: trapezoid in u, endpoints included.
- `gauss`: Gauss–Legendre in u, best for smooth rates, endpoints excluded.
- `trapezoid-t`: trapezoid uniform in t, the rule of the Neural Entropy reference code; kept
  for comparisons, it needs far more nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SpecError
from .processes import Process

RULES = ("simpson", "trapezoid", "gauss", "trapezoid-t")


@dataclass(frozen=True)
class Grid:
    """Nodes t_k with weights w_k such that ∫_{t_min}^{T} h(t) dt ≈ Σ_k w_k h(t_k)."""

    rule: str
    t_min: float
    t_max: float
    t: np.ndarray
    weights: np.ndarray
    #: Row k holds the weights of ∫_{t_min}^{t_k} (exact partial sums for simpson and the
    #: trapezoid rules; an interpolating approximation for gauss).
    cumulative: np.ndarray

    @property
    def size(self) -> int:
        return self.t.size

    def integrate(self, values: np.ndarray) -> np.ndarray:
        """Σ_k w_k values_k along the first axis."""
        return np.tensordot(self.weights, values, axes=(0, 0))

    def integrate_variance(self, variances: np.ndarray) -> np.ndarray:
        """Variance of Σ_k w_k h_k for independent node estimates with the given variances."""
        return np.tensordot(self.weights**2, variances, axes=(0, 0))


def make_grid(process: Process, t_min: float, t_max: float, nodes: int, rule: str = "simpson") -> Grid:
    """Build the nodes and weights of `rule` on [t_min, t_max]."""
    if rule not in RULES:
        raise SpecError(f"unknown quadrature rule {rule!r}; choose one of {', '.join(RULES)}")
    if nodes < 2:
        raise SpecError(f"invalid number of nodes {nodes}; it must be >= 2 (for example --nodes 65)")
    if rule == "simpson" and nodes % 2 == 0:
        raise SpecError(f"the simpson rule needs an odd number of nodes, got {nodes}; use --nodes {nodes + 1}")
    process.check_time_range(t_min, t_max)

    if rule == "trapezoid-t":
        t = np.linspace(t_min, t_max, nodes)
        weights_t, cumulative_t = _trapezoid_weights(t)
        return Grid(rule, t_min, t_max, t, weights_t, cumulative_t)

    u_min = float(process.log_sigma_tilde(t_min))
    u_max = float(process.log_sigma_tilde(t_max))
    if rule == "gauss":
        x, w = np.polynomial.legendre.leggauss(nodes)
        u = u_min + (x + 1.0) * 0.5 * (u_max - u_min)
        weights_u = w * 0.5 * (u_max - u_min)
        cumulative_u = _interpolated_cumulative(u, u_min)
    else:
        u = np.linspace(u_min, u_max, nodes)
        if rule == "simpson":
            weights_u, cumulative_u = _simpson_weights(u)
        else:
            weights_u, cumulative_u = _trapezoid_weights(u)
    t = np.asarray(process.t_from_log_sigma_tilde(u), dtype=np.float64)
    if rule != "gauss":
        # Pin the ends to the requested times exactly (the inversion is exact only to round-off).
        t[0], t[-1] = t_min, t_max
    dt_du = 1.0 / process.dlog_sigma_tilde_dt(t)
    return Grid(rule, t_min, t_max, t, weights_u * dt_du, cumulative_u * dt_du[None, :])


def _trapezoid_weights(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy import integrate  # imported here: it adds about half a second to every command's start

    basis = np.eye(x.size)
    cumulative = integrate.cumulative_trapezoid(basis, x, axis=0, initial=0.0)
    return cumulative[-1].copy(), cumulative


def _simpson_weights(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy import integrate

    basis = np.eye(x.size)
    cumulative = integrate.cumulative_simpson(basis, x=x, axis=0, initial=0.0)
    # The last row is the composite Simpson rule; build it directly so it is exact.
    h = x[1] - x[0]
    weights = np.zeros(x.size)
    weights[0:-1:2] += h / 3.0
    weights[1::2] += 4.0 * h / 3.0
    weights[2::2] += h / 3.0
    cumulative[-1] = weights
    return weights, cumulative


def _interpolated_cumulative(u: np.ndarray, u_min: float) -> np.ndarray:
    """Partial integrals from u_min to each Gauss node by the trapezoid rule on the nodes."""
    from scipy import integrate

    x = np.concatenate([[u_min], u])
    basis = np.vstack([np.eye(u.size)[0], np.eye(u.size)])  # constant extrapolation below u_0
    cumulative = integrate.cumulative_trapezoid(basis, x, axis=0, initial=0.0)
    return cumulative[1:]


def integrate_smooth(process: Process, t_min: float, t_max: float, integrand_u, panels: int = 256) -> float:
    """∫ h du over u = log σ̃ in [u(t_min), u(t_max)] by composite 8-point Gauss–Legendre.

    `integrand_u(t)` returns the integrand at times t; used for deterministic integrals of
    closed-form process quantities (for example ∫ g²/2 dt = ∫ σ² du).
    """
    u_min = float(process.log_sigma_tilde(t_min))
    u_max = float(process.log_sigma_tilde(t_max))
    x, w = np.polynomial.legendre.leggauss(8)
    edges = np.linspace(u_min, u_max, panels + 1)
    half = 0.5 * np.diff(edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    u = (centres[:, None] + half[:, None] * x[None, :]).ravel()
    weights = (half[:, None] * w[None, :]).ravel()
    t = process.t_from_log_sigma_tilde(u)
    return float(np.sum(weights * integrand_u(t)))
