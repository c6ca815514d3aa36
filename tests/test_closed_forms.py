"""Identities of the theory checked by deterministic quadrature on 1-D Gaussian data.

These tests do not use Monte Carlo: they integrate the closed-form Gaussian rates with scipy,
and check the relations between entropy production, KL divergences, entropies, the
cross-entropy bound and the speed limit that the probe relies on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from entropy_probe.processes import from_spec
from entropy_probe.quantities import ce_constant_term, diffusion_integral, gelbrich_w2, mean_square_at, prior_for

MU, S = 0.7, 0.4  # 1-D Gaussian data N(MU, S²)


def _moments(process, t):
    alpha, sigma2 = float(process.alpha(t)), float(process.sigma2(t))
    return alpha * MU, alpha**2 * S**2 + sigma2


def _rate_tot(process, t):
    m, v = _moments(process, t)
    k = float(process.equilibrium_score_coefficient(t))
    return 0.5 * float(process.g2(t)) * (1 / v + 2 * k + k * k * (v + m * m))


def _integrate(process, fn, t_min, t_max):
    # Integrate in u = log σ̃ where every integrand here is smooth.
    def in_u(u):
        t = float(process.t_from_log_sigma_tilde(u))
        return fn(t) / float(process.dlog_sigma_tilde_dt(t))

    u0, u1 = float(process.log_sigma_tilde(t_min)), float(process.log_sigma_tilde(t_max))
    value, _ = integrate.quad(in_u, u0, u1, epsabs=0, epsrel=1e-13, limit=500)
    return value


def _entropy(v):
    return 0.5 * math.log(2 * math.pi * math.e * v)


def _kl_gauss(m, v, m_ref, v_ref):
    return 0.5 * (math.log(v_ref / v) + (v + (m - m_ref) ** 2) / v_ref - 1.0)


T_MIN = 1e-3
PROCESSES = ["vp", "sl:sigma0=0.1", "subvp", "ve", "vp-cosine", "vpx:kappa=0.1"]


def test_vp_entropy_production_equals_kl_difference():
    process = from_spec("vp")
    t_max = process.default_t_max
    s_tot = _integrate(process, lambda t: _rate_tot(process, t), T_MIN, t_max)
    kl = [_kl_gauss(*_moments(process, t), 0.0, 1.0) for t in (T_MIN, t_max)]
    assert s_tot == pytest.approx(kl[0] - kl[1], rel=1e-12)


@pytest.mark.parametrize("spec", ["sl:sigma0=0.1", "vpx:kappa=0.1"])
def test_fixed_equilibrium_entropy_production_equals_kl_difference(spec):
    process = from_spec(spec)
    t_max = process.default_t_max
    eq = float(process.equilibrium_variance(0.5))
    s_tot = _integrate(process, lambda t: _rate_tot(process, t), T_MIN, t_max)
    kl = [_kl_gauss(*_moments(process, t), 0.0, eq) for t in (T_MIN, t_max)]
    assert s_tot == pytest.approx(kl[0] - kl[1], rel=1e-10)


def test_ve_entropy_production_equals_entropy_difference():
    process = from_spec("ve")
    s_tot = _integrate(process, lambda t: _rate_tot(process, t), T_MIN, 1.0)
    h = [_entropy(_moments(process, t)[1]) for t in (T_MIN, 1.0)]
    assert s_tot == pytest.approx(h[1] - h[0], rel=1e-12)


@pytest.mark.parametrize("spec", PROCESSES)
def test_ce_bound_with_exact_score_is_entropy_plus_prior_kl(spec):
    """With e_θ = s*, the bound's closed form equals H(p_{t_min}) + D_KL(p_T ‖ π).

    The probe writes the bound as E[−log π(x_T)] + constant + L, where L, the denoising loss
    of the exact score, is ∫ (g²/2) (E|s_c|² − E|s*|²) dt for Gaussian data.
    """
    process = from_spec(spec)
    t_max = process.default_t_max
    m2 = MU**2 + S**2

    def loss_rate(t):
        alpha, sigma2 = float(process.alpha(t)), float(process.sigma2(t))
        k = float(process.equilibrium_score_coefficient(t))
        q = 1 / sigma2 + 2 * k + k * k * (alpha**2 * m2 + sigma2)  # E|s_c|² for d = 1
        return 0.5 * float(process.g2(t)) * q - _rate_tot(process, t)

    loss = _integrate(process, loss_rate, T_MIN, t_max)
    prior = prior_for(process, t_max, 1, m2)
    bound = prior.expected_nll(1, mean_square_at(process, t_max, 1, m2)) + ce_constant_term(process, T_MIN, t_max, 1) + loss
    m_t, v_t = _moments(process, t_max)
    expected = _entropy(_moments(process, T_MIN)[1]) + _kl_gauss(m_t, v_t, 0.0, prior.variance)
    assert bound == pytest.approx(expected, rel=1e-8, abs=1e-9)


@pytest.mark.parametrize("spec", PROCESSES)
def test_length_and_speed_limit_inequalities(spec):
    process = from_spec(spec)
    t_max = process.default_t_max
    s_tot = _integrate(process, lambda t: _rate_tot(process, t), T_MIN, t_max)
    length = _integrate(process, lambda t: math.sqrt(0.5 * float(process.g2(t)) * _rate_tot(process, t)), T_MIN, t_max)
    diffusion = diffusion_integral(process, T_MIN, t_max)
    w2 = gelbrich_w2(process, T_MIN, t_max, np.array([MU]), np.array([S**2]))
    # Exact W2 between the two 1-D Gaussians.
    (m0, v0), (m1, v1) = _moments(process, T_MIN), _moments(process, t_max)
    assert w2 == pytest.approx(math.hypot(m0 - m1, math.sqrt(v0) - math.sqrt(v1)), rel=1e-12)
    assert w2 <= length * (1 + 1e-9)
    assert length <= math.sqrt(diffusion * s_tot) * (1 + 1e-9)
    assert s_tot >= w2 * w2 / diffusion


def test_diffusion_integral_closed_form_for_ve():
    process = from_spec("ve")
    # ∫ g²/2 dt = (σ(T)² − σ(t_min)²)/2 when f = 0.
    expected = 0.5 * (float(process.sigma2(1.0)) - float(process.sigma2(T_MIN)))
    assert diffusion_integral(process, T_MIN, 1.0) == pytest.approx(expected, rel=1e-12)
