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


#: Rules by which `Grid.cumulative_integral` forms partial integrals. "simpson" and "trapezoid" are the
#: partial sums of the rule itself. "interpolated" (for gauss) is the trapezoid rule through the
#: nodes, with the first value held constant down to the left end. "midpoint" (for strata) sums
#: the cells before a node and half of its own.
PARTIAL_RULES = ("simpson", "trapezoid", "interpolated", "midpoint")


@dataclass(frozen=True)
class Grid:
    """Nodes t_k with weights w_k such that ∫_{t_min}^{T} h(t) dt ≈ Σ_k w_k h(t_k)."""

    rule: str
    t_min: float
    t_max: float
    t: np.ndarray
    weights: np.ndarray
    #: One of PARTIAL_RULES.
    partial_rule: str = "midpoint"
    #: Integration variable of the partial integrals at the nodes (u = log σ̃ or t).
    partial_x: np.ndarray | None = None
    #: dt/dx at the nodes, which turns a rate per unit time into one per unit x.
    partial_dt_dx: np.ndarray | None = None
    #: Left end of the partial integrals in x, for the "interpolated" rule.
    partial_x_start: float = 0.0

    @property
    def size(self) -> int:
        return self.t.size

    def integrate(self, values: np.ndarray) -> np.ndarray:
        """Σ_k w_k values_k along the first axis."""
        return np.tensordot(self.weights, values, axes=(0, 0))

    def integrate_variance(self, variances: np.ndarray) -> np.ndarray:
        """Variance of Σ_k w_k h_k for independent node estimates with the given variances."""
        return np.tensordot(self.weights**2, variances, axes=(0, 0))

    def cumulative_integral(self, values: np.ndarray) -> np.ndarray:
        """Approximate ∫_{t_min}^{t_k} h dt at every node from the node values, along the first axis.

        The partial sums are exact for simpson and the trapezoid rules and interpolate for gauss
        and strata. Time and memory grow linearly with the number of nodes.
        """
        from scipy import integrate  # imported here: it adds about half a second to every command's start

        values = np.asarray(values, dtype=np.float64)
        shape = (-1,) + (1,) * (values.ndim - 1)
        if self.partial_rule == "midpoint":
            cells = self.weights.reshape(shape) * values
            return np.cumsum(cells, axis=0) - 0.5 * cells
        per_x = values * np.asarray(self.partial_dt_dx).reshape(shape)
        x = np.asarray(self.partial_x)
        if self.partial_rule == "interpolated":
            extended = np.concatenate([per_x[:1], per_x], axis=0)
            x = np.concatenate([[self.partial_x_start], x])
            return integrate.cumulative_trapezoid(extended, x, axis=0, initial=0.0)[1:]
        if self.partial_rule == "trapezoid":
            return integrate.cumulative_trapezoid(per_x, x, axis=0, initial=0.0)
        partial = integrate.cumulative_simpson(per_x, x=x, axis=0, initial=0.0)
        # The last row is the composite Simpson rule itself, so the total matches `integrate`.
        partial[-1] = self.integrate(values)
        return partial


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
        return Grid(rule, t_min, t_max, t, _trapezoid_weights(t), "trapezoid", t, np.ones(nodes))

    u_min = float(process.log_sigma_tilde(t_min))
    u_max = float(process.log_sigma_tilde(t_max))
    if rule == "gauss":
        x, w = np.polynomial.legendre.leggauss(nodes)
        u = u_min + (x + 1.0) * 0.5 * (u_max - u_min)
        weights_u = w * 0.5 * (u_max - u_min)
        partial_rule = "interpolated"
    else:
        u = np.linspace(u_min, u_max, nodes)
        weights_u = _simpson_weights(u) if rule == "simpson" else _trapezoid_weights(u)
        partial_rule = "simpson" if rule == "simpson" else "trapezoid"
    t = np.asarray(process.t_from_log_sigma_tilde(u), dtype=np.float64)
    if rule != "gauss":
        # Pin the ends to the requested times exactly (the inversion is exact only to round-off).
        t[0], t[-1] = t_min, t_max
    dt_du = 1.0 / process.dlog_sigma_tilde_dt(t)
    return Grid(rule, t_min, t_max, t, weights_u * dt_du, partial_rule, u, dt_du, u_min)


def _trapezoid_weights(x: np.ndarray) -> np.ndarray:
    weights = np.zeros(x.size)
    steps = np.diff(x)
    weights[:-1] += 0.5 * steps
    weights[1:] += 0.5 * steps
    return weights


def _simpson_weights(x: np.ndarray) -> np.ndarray:
    """Composite Simpson weights on equally spaced x (an odd number of points)."""
    h = x[1] - x[0]
    weights = np.zeros(x.size)
    weights[0:-1:2] += h / 3.0
    weights[1::2] += 4.0 * h / 3.0
    weights[2::2] += h / 3.0
    return weights


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
