"""Samplers: exact Gaussian flow map, mixture moments, seeding and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropy_probe.errors import DataError, SigmaRangeError, SpecError
from entropy_probe.odesolvers import StepLimitError, dormand_prince
from entropy_probe.oracles import GaussianOracle, paper_mixture
from entropy_probe.processes import from_spec
from entropy_probe.sampling import TAG_SAMPLE, SamplerSettings, log_sigma_tilde_nodes, sample, sample_generator


pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(**options) -> SamplerSettings:
    return SamplerSettings(progress=False, **options)


def gaussian_flow_map(oracle: GaussianOracle, process, t_min: float, t_max: float, x_t: np.ndarray) -> np.ndarray:
    """The probability-flow ODE of Gaussian data moves x_T affinely: standardised values are kept."""
    mu, var0 = oracle.mu.numpy(), oracle.std.numpy() ** 2

    def moments(t):
        a, s2 = float(process.alpha(t)), float(process.sigma2(t))
        return a * mu, a * a * var0 + s2

    mean_end, var_end = moments(t_min)
    mean_start, var_start = moments(t_max)
    return mean_end + np.sqrt(var_end / var_start) * (x_t - mean_start)


def prior_draws(n: int, dim: int, variance: float, seed: int = 0) -> np.ndarray:
    return np.stack(
        [math.sqrt(variance) * torch.randn((dim,), generator=sample_generator(seed, TAG_SAMPLE, i), dtype=torch.float64).numpy() for i in range(n)]
    )


@pytest.mark.parametrize("spec", ["vp", "sl", "ve", "vp-cosine", "subvp"])
def test_ode_matches_gaussian_flow_map(spec, gaussian_params):
    mean, std = gaussian_params
    oracle = GaussianOracle(mean, std)
    process = from_spec(spec)
    n = 16
    m2 = oracle.second_moment()
    coarse = sample(oracle, process, n, quiet(sampler="ode", steps=64, denoise=False), second_moment=m2)
    fine = sample(oracle, process, n, quiet(sampler="ode", steps=128, denoise=False), second_moment=m2)
    adaptive = sample(oracle, process, n, quiet(sampler="ode-adaptive", denoise=False, rtol=1e-8, atol=1e-8), second_moment=m2)
    start = prior_draws(n, oracle.dim, fine.prior.variance)
    expected = gaussian_flow_map(oracle, process, fine.t_min, fine.t_max, start)
    coarse_error = np.max(np.abs(coarse.x.numpy() - expected))
    fine_error = np.max(np.abs(fine.x.numpy() - expected))
    # Heun's method is second order: halving the step divides the error by about 4.
    assert 3.0 < coarse_error / fine_error < 5.5
    assert fine_error < 1e-2
    scale = np.sqrt(float(process.sigma2(fine.t_min)) + float(process.alpha(fine.t_min)) ** 2 * std**2)
    assert np.max(np.abs(adaptive.x.numpy() - expected) / scale) < 1e-5


def moment_z_scores(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of the sample mean and of every covariance entry against the exact values.

    The standard error of a covariance entry is that of the mean of (x_j − m_j)(x_k − m_k),
    estimated from the samples.
    """
    n = x.shape[0]
    z_mean = (x.mean(0) - mean) / (x.std(0, ddof=1) / math.sqrt(n))
    centred = x - x.mean(0)
    z_cov = []
    for j in range(x.shape[1]):
        for k in range(j, x.shape[1]):
            products = centred[:, j] * centred[:, k]
            z_cov.append((products.mean() - cov[j, k]) / (products.std(ddof=1) / math.sqrt(n)))
    return z_mean, np.asarray(z_cov)


@pytest.mark.parametrize(
    "spec, sampler, steps, n",
    [("vp", "ode", 64, 2000), ("sl", "ode", 96, 2000), ("ve", "ode-adaptive", 1, 2000), ("vp", "sde", 256, 1500)],
)
def test_mixture_moments_within_sampling_error(spec, sampler, steps, n):
    oracle = paper_mixture(2, seed=3)
    result = sample(oracle, from_spec(spec), n, quiet(sampler=sampler, steps=steps, seed=7, batch_size=1000), second_moment=oracle.second_moment())
    z_mean, z_cov = moment_z_scores(result.x.numpy(), oracle.mean(), oracle.covariance())
    # Four standard errors: a false alarm has probability below 1e-4 per moment.
    assert np.all(np.abs(z_mean) < 4.0), z_mean
    assert np.all(np.abs(z_cov) < 4.0), z_cov


def test_sde_differs_from_ode_and_repeats():
    oracle = paper_mixture(2, seed=3)
    process = from_spec("vp")
    sde = sample(oracle, process, 8, quiet(sampler="sde", steps=32))
    ode = sample(oracle, process, 8, quiet(sampler="ode", steps=32))
    assert not torch.allclose(sde.x, ode.x)
    again = sample(oracle, process, 8, quiet(sampler="sde", steps=32))
    assert torch.equal(sde.x, again.x)


@pytest.mark.parametrize("sampler", ["sde", "ode", "ode-adaptive"])
def test_samples_independent_of_batch_size(sampler):
    oracle = paper_mixture(3, seed=0)
    process = from_spec("vp")
    whole = sample(oracle, process, 10, quiet(sampler=sampler, steps=24, batch_size=10, seed=3))
    pieces = sample(oracle, process, 10, quiet(sampler=sampler, steps=24, batch_size=3, seed=3))
    assert torch.allclose(whole.x, pieces.x, rtol=0, atol=1e-12)
    assert np.array_equal(whole.evaluations, pieces.evaluations)
    first = sample(oracle, process, 4, quiet(sampler=sampler, steps=24, seed=3))
    assert torch.allclose(first.x, whole.x[:4], rtol=0, atol=1e-12)


def test_evaluation_counts():
    oracle = paper_mixture(2, seed=3)
    process = from_spec("vp")
    assert np.all(sample(oracle, process, 3, quiet(sampler="sde", steps=10)).evaluations == 11)
    assert np.all(sample(oracle, process, 3, quiet(sampler="ode", steps=10)).evaluations == 21)
    assert np.all(sample(oracle, process, 3, quiet(sampler="ode", steps=10, denoise=False)).evaluations == 20)


def test_denoising_step_returns_posterior_mean(gaussian_params):
    mean, std = gaussian_params
    oracle = GaussianOracle(mean, std)
    process = from_spec("vp")
    raw = sample(oracle, process, 5, quiet(sampler="ode", steps=16, denoise=False))
    final = sample(oracle, process, 5, quiet(sampler="ode", steps=16, denoise=True))
    alpha = float(process.alpha(raw.t_min))
    sigma_tilde = float(process.sigma_tilde(raw.t_min))
    x_tilde = raw.x.numpy() / alpha
    # E[x_0 | x̃] for Gaussian data: μ + s²/(s² + σ̃²) (x̃ − μ).
    expected = mean + std**2 / (std**2 + sigma_tilde**2) * (x_tilde - mean)
    assert np.allclose(final.x.numpy(), expected, rtol=0, atol=1e-10)


def test_nodes_uniform_in_log_sigma_tilde():
    process = from_spec("vp")
    nodes = log_sigma_tilde_nodes(process, 1e-3, 1.0, 8)
    assert nodes[0] == 1.0
    assert nodes[-1] == 1e-3
    steps = np.diff(process.log_sigma_tilde(nodes))
    assert np.allclose(steps, steps[0], rtol=1e-9)
    assert np.all(steps < 0)


def test_ve_prior_needs_second_moment():
    oracle = paper_mixture(2, seed=3)
    with pytest.raises(DataError, match="second moment"):
        sample(oracle, from_spec("ve"), 2, quiet(sampler="ode", steps=4))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sampler": "euler"}, "unknown sampler"),
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch size"),
        ({"rtol": 0.0}, "tolerances"),
    ],
)
def test_invalid_settings_rejected(options, message):
    with pytest.raises(SpecError, match=message):
        sample(paper_mixture(2, seed=3), from_spec("vp"), 2, quiet(**options))


def test_labels_rejected_for_unconditional_model():
    with pytest.raises(SpecError, match="unconditional"):
        sample(paper_mixture(2, seed=3), from_spec("vp"), 2, quiet(steps=2), labels=[1])


def test_range_outside_model_rejected():
    oracle = paper_mixture(2, seed=3)
    oracle.sigma_min = 0.5
    with pytest.raises(SigmaRangeError, match="valid only"):
        sample(oracle, from_spec("vp"), 2, quiet(steps=2))


def test_dormand_prince_exact_on_linear_system():
    rates = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    y0 = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    result = dormand_prince(lambda y, s, index: -rates[index, None] * y, y0, 0.0, 2.0, rtol=1e-9, atol=1e-12)
    expected = y0.squeeze(1) * torch.exp(-2.0 * rates)
    assert torch.allclose(result.y.squeeze(1), expected, rtol=1e-7, atol=0)
    # Stiffer items need more steps; each item's count is its own.
    assert result.evaluations[0] < result.evaluations[2]
    alone = dormand_prince(lambda y, s, index: -rates[2] * y, y0[2:], 0.0, 2.0, rtol=1e-9, atol=1e-12)
    assert int(alone.evaluations[0]) == int(result.evaluations[2])


def test_dormand_prince_backwards_in_time():
    y0 = torch.zeros((2, 1), dtype=torch.float64)
    result = dormand_prince(lambda y, s, index: torch.cos(s)[:, None], y0, 3.0, -1.0, rtol=1e-10, atol=1e-12)
    assert torch.allclose(result.y, torch.full_like(y0, math.sin(-1.0) - math.sin(3.0)), atol=1e-8)


def test_dormand_prince_step_limit():
    y0 = torch.ones((1, 1), dtype=torch.float64)
    with pytest.raises(StepLimitError, match="more than 5 steps"):
        dormand_prince(lambda y, s, index: -1e4 * y, y0, 0.0, 1.0, max_steps=5)
