"""ODE likelihood: closed-form Gaussian densities, Hutchinson estimates and the bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropy_probe.data import DistributionSource
from entropy_probe.denoiser import Denoiser
from entropy_probe.likelihood import LikelihoodSettings, NotDifferentiableError, log_likelihood
from entropy_probe.oracles import GaussianOracle, paper_mixture
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.processes import from_spec
from entropy_probe.sampling import TAG_PERTURB, sample_generator


pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(**options) -> LikelihoodSettings:
    return LikelihoodSettings(progress=False, **options)


def perturbed(x0: torch.Tensor, process, t_min: float, seed: int = 0) -> torch.Tensor:
    """The points x = α x_0 + σ ε at which `log_likelihood(perturb=True)` evaluates."""
    noise = torch.stack(
        [torch.randn(x0.shape[1:], generator=sample_generator(seed, TAG_PERTURB, i), dtype=torch.float64) for i in range(x0.shape[0])]
    )
    return float(process.alpha(t_min)) * x0 + float(process.sigma(t_min)) * noise


def diffused_moments(oracle: GaussianOracle, process, t: float) -> tuple[np.ndarray, np.ndarray]:
    a, s2 = float(process.alpha(t)), float(process.sigma2(t))
    return a * oracle.mu.numpy(), a * a * oracle.std.numpy() ** 2 + s2


def ode_model_law(model: GaussianOracle, process, t_min: float, t_max: float, prior_variance: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the ODE model's law at t_min, started from π = N(0, prior_variance I).

    The probability-flow ODE of Gaussian data maps x_T affinely, x ↦ m(t_min) + r (x − m(T))
    with r = sqrt(v(t_min)/v(T)), so it carries π to a Gaussian.
    """
    m_end, v_end = diffused_moments(model, process, t_min)
    m_start, v_start = diffused_moments(model, process, t_max)
    ratio = np.sqrt(v_end / v_start)
    return m_end - ratio * m_start, ratio**2 * prior_variance


def gaussian_nll(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return 0.5 * np.sum(np.log(2 * math.pi * var) + (x - mean) ** 2 / var, axis=1)


@pytest.mark.parametrize("spec", ["vp", "sl", "ve", "vp-cosine", "subvp"])
def test_gaussian_nll_matches_closed_form(spec, gaussian_params):
    mean, std = gaussian_params
    oracle = GaussianOracle(mean, std)
    process = from_spec(spec)
    x0 = oracle.sample(32, torch.Generator().manual_seed(0))
    result = log_likelihood(oracle, process, x0, quiet(probe="exact"), second_moment=oracle.second_moment())
    x = perturbed(x0, process, result.t_min).numpy()
    dim = oracle.dim

    # The data law at t_min: the mean NLL per dimension within 1 %. Single items differ by up
    # to about 0.02 nats per dimension because the prior π is not exactly p_T.
    p_mean, p_var = diffused_moments(oracle, process, result.t_min)
    exact_nll = gaussian_nll(x, p_mean, p_var)
    assert abs(result.nll.mean() - exact_nll.mean()) / abs(exact_nll.mean()) < 0.01
    assert np.max(np.abs(result.nll - exact_nll)) / dim < 0.025

    # The ODE model's own law, exact also for π ≠ p_T: only the solver error remains.
    q_mean, q_var = ode_model_law(oracle, process, result.t_min, result.t_max, result.prior.variance)
    model_nll = gaussian_nll(x, q_mean, q_var)
    assert np.max(np.abs(result.nll - model_nll)) / dim < 1e-4


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_on_mixture(probe):
    oracle = paper_mixture(3, seed=0)
    process = from_spec("vp")
    x0 = oracle.sample(120, torch.Generator().manual_seed(1))
    exact = log_likelihood(oracle, process, x0, quiet(probe="exact"))
    estimate = log_likelihood(oracle, process, x0, quiet(probe=probe, probes=2))
    difference = estimate.nll - exact.nll
    assert np.std(difference) > 0  # the mixture's Jacobian is not diagonal, so probes add noise
    stderr = np.std(difference, ddof=1) / math.sqrt(difference.size)
    assert abs(np.mean(difference)) < 4 * stderr + 1e-6


def test_exact_trace_matches_mixture_density():
    oracle = paper_mixture(3, seed=0)
    process = from_spec("sl")
    x0 = oracle.sample(16, torch.Generator().manual_seed(2))
    result = log_likelihood(oracle, process, x0, quiet(probe="exact", rtol=1e-7, atol=1e-7))
    x = perturbed(x0, process, result.t_min)
    alpha_min, alpha_max = float(process.alpha(result.t_min)), float(process.alpha(result.t_max))

    def log_density(points, t, alpha):
        sigma_tilde = torch.full((points.shape[0],), float(process.sigma_tilde(t)), dtype=torch.float64)
        return (oracle.log_prob(points / alpha, sigma_tilde) - oracle.dim * math.log(alpha)).numpy()

    # Replacing −log π(x_T) by −log p_T(x_T) isolates the integration of state and divergence.
    nll_with_true_end = result.nll - result.prior_nll - log_density(result.end_states, result.t_max, alpha_max)
    exact = -log_density(x, result.t_min, alpha_min)
    assert np.max(np.abs(nll_with_true_end - exact)) / oracle.dim < 1e-4


def test_bound_never_below_ode_cross_entropy():
    """The cross-entropy bound of `measure` lies above H(p_{t_min}, q) from the ODE likelihood."""
    process = from_spec("vp")
    data_oracle = GaussianOracle([0.5, -1.0, 0.2], [0.8, 1.2, 0.5])
    model = GaussianOracle([0.3, -0.7, 0.0], [1.0, 1.0, 0.7])  # a deliberately wrong model
    data = DistributionSource(data_oracle, spec="gaussian test data")
    bound = measure(model, process, data, MeasureSettings(samples=2048, nodes=33, progress=False))
    ce_bound, ce_se = float(bound["ce_bound"]), float(bound["ce_bound_stderr"])

    x0 = data_oracle.sample(400, torch.Generator().manual_seed(3))
    result = log_likelihood(model, process, x0, quiet(probe="exact"))
    nll_mean, nll_se = result.mean_nll()

    p_mean, p_var = diffused_moments(data_oracle, process, result.t_min)
    q_mean, q_var = ode_model_law(model, process, result.t_min, result.t_max, result.prior.variance)
    cross_entropy = float(np.sum(0.5 * np.log(2 * math.pi * q_var) + (p_var + (p_mean - q_mean) ** 2) / (2 * q_var)))

    assert abs(nll_mean - cross_entropy) < 4 * nll_se
    assert ce_bound > nll_mean - 3 * math.hypot(ce_se, nll_se)
    assert ce_bound > cross_entropy - 3 * ce_se
    # The bound is tight here: its slack is a few hundredths of a nat, below 5 standard errors.
    assert ce_bound - cross_entropy < 5 * ce_se


def test_likelihood_independent_of_batch_size():
    oracle = paper_mixture(2, seed=3)
    process = from_spec("vp")
    x0 = oracle.sample(7, torch.Generator().manual_seed(4))
    whole = log_likelihood(oracle, process, x0, quiet(batch_size=7))
    pieces = log_likelihood(oracle, process, x0, quiet(batch_size=2))
    assert np.allclose(whole.nll, pieces.nll, rtol=0, atol=1e-10)
    assert np.array_equal(whole.evaluations, pieces.evaluations)


def test_bits_per_dim_with_quantisation_offset():
    oracle = paper_mixture(2, seed=3)
    x0 = oracle.sample(4, torch.Generator().manual_seed(5))
    result = log_likelihood(oracle, from_spec("vp"), x0, quiet(), quantization_step=1 / 255)
    expected = result.nll / (2 * math.log(2)) + math.log2(255)
    assert np.allclose(result.bpd, expected)
    assert result.summary()["quantization_step"] == pytest.approx(1 / 255)


class FrozenDenoiser(Denoiser):
    """A denoiser whose forward pass runs without autograd, like an adapter under no_grad."""

    def __init__(self) -> None:
        super().__init__()
        self.data_shape = (2,)

    def denoise(self, x_tilde, sigma_tilde, labels=None):
        with torch.no_grad():
            return x_tilde / (1.0 + sigma_tilde[:, None] ** 2)


def test_non_differentiable_model_rejected():
    x0 = torch.zeros((2, 2), dtype=torch.float64)
    with pytest.raises(NotDifferentiableError, match="differentiabl"):
        log_likelihood(FrozenDenoiser(), from_spec("vp"), x0, quiet())


def test_shape_mismatch_rejected():
    from entropy_probe.errors import DataError

    with pytest.raises(DataError, match="do not match"):
        log_likelihood(paper_mixture(2, seed=3), from_spec("vp"), torch.zeros((2, 3), dtype=torch.float64), quiet())
