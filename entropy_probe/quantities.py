"""Deterministic terms of the bounds, from the process and the data moments.

Cross-entropy bound (Song et al. 2021, Theorem 3, for a linear drift), in nats:

    H(p_{t_min}, q_θ) ≤ E[−log π(x_T)] + ∫ [f d + (2f²/g²) E|x_t|²] dt + S_NN − 2C.

Writing S_NN − 2C = L − Q with the denoising loss L = ∫ (g²/2) E|e_θ − s_c|² dt and
Q = ∫ (g²/2) E|s_c|² dt, the E|x_t|² terms cancel in closed form and

    bound = E[−log π(x_T)] − d [log α(T) − log α(t_min)] − (d/2) [λ(t_min) − λ(T)] + L,

so only L is estimated by Monte Carlo. The prior π is p_eq at T when f(T) < 0, otherwise
N(0, (σ(T)² + α(T)² m₂/d) I) with m₂ = E|x_0|².

Speed limit (Benamou–Brenier): W2(p_{t_min}, p_T)² ≤ ∫ (g²/2) dt · S_tot. W2 is bounded from
below by the Gelbrich distance between Gaussians with the same means and covariances; since
both covariances are α²Σ + σ²I for the data covariance Σ, they share eigenvectors and the
Gelbrich distance needs only the eigenvalues of Σ. For Gaussian data it is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .processes import Process
from .quadrature import integrate_smooth


@dataclass(frozen=True)
class Prior:
    """The Gaussian π = N(0, variance · I) where the reverse process starts."""

    variance: float
    kind: str

    def expected_nll(self, dim: int, mean_square_t: float) -> float:
        """E[−log π(x_T)] for E|x_T|² = mean_square_t (summed over dimensions), in nats."""
        return 0.5 * dim * math.log(2.0 * math.pi * self.variance) + mean_square_t / (2.0 * self.variance)


def prior_for(process: Process, t_max: float, dim: int, second_moment: float) -> Prior:
    if float(process.f(t_max)) < 0:
        return Prior(float(process.equilibrium_variance(t_max)), "quasi-invariant law p_eq at T")
    alpha_t = float(process.alpha(t_max))
    variance = float(process.sigma2(t_max)) + alpha_t**2 * second_moment / dim
    return Prior(variance, "moment-matched Gaussian N(0, (σ(T)² + α(T)² m2/d) I)")


def mean_square_at(process: Process, t: float, dim: int, second_moment: float) -> float:
    """E|x_t|² = α² E|x_0|² + σ² d."""
    return float(process.alpha(t)) ** 2 * second_moment + float(process.sigma2(t)) * dim


def ce_constant_term(process: Process, t_min: float, t_max: float, dim: int) -> float:
    """−d [log α(T) − log α(t_min)] − (d/2) [λ(t_min) − λ(T)], in nats."""
    d_log_alpha = float(process.log_alpha(t_max)) - float(process.log_alpha(t_min))
    d_log_snr = float(process.log_snr(t_min)) - float(process.log_snr(t_max))
    return -dim * d_log_alpha - 0.5 * dim * d_log_snr


def diffusion_integral(process: Process, t_min: float, t_max: float) -> float:
    """∫ g²/2 dt over [t_min, T], computed as ∫ σ² d(log σ̃)."""
    return integrate_smooth(process, t_min, t_max, lambda t: process.sigma2(t))


def gelbrich_w2(process: Process, t_min: float, t_max: float, mean: np.ndarray, cov_eigenvalues: np.ndarray) -> float:
    """Gelbrich lower bound on W2(p_{t_min}, p_T) from the data mean and covariance spectrum."""
    a0, a1 = float(process.alpha(t_min)), float(process.alpha(t_max))
    s0, s1 = float(process.sigma2(t_min)), float(process.sigma2(t_max))
    lam = np.clip(np.asarray(cov_eigenvalues, dtype=np.float64), 0.0, None)
    mean_part = (a0 - a1) ** 2 * float(np.sum(np.asarray(mean, dtype=np.float64) ** 2))
    cov_part = float(np.sum((np.sqrt(a0 * a0 * lam + s0) - np.sqrt(a1 * a1 * lam + s1)) ** 2))
    return math.sqrt(mean_part + cov_part)
