"""Estimators against oracles: bias, calibrated standard errors, rounds, draws and proposals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropy_probe.data import oracle_source
from entropy_probe.draws import Draws
from entropy_probe.errors import SpecError
from entropy_probe.estimators import NodeSums, cut_batches, neyman_shares, next_counts, planned_counts, round_segments, take_units
from entropy_probe.oracles import GaussianOracle, paper_mixture
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.processes import from_spec
from entropy_probe.proposals import gaussian_proposal, gaussian_rate_per_u, log_snr_proposal, uniform_t_proposal
from test_probe_oracles import gaussian_s_tot


@pytest.fixture(scope="module")
def gaussian8():
    rng = np.random.default_rng(5)
    return GaussianOracle(rng.uniform(-1, 1, 8), rng.uniform(0.2, 1.5, 8))


@pytest.fixture(scope="module")
def mixture2():
    return paper_mixture(2, seed=3)


def _measure(oracle, spec="vp", **options):
    options.setdefault("progress", False)
    return measure(oracle, from_spec(spec), oracle_source(oracle, "oracle"), MeasureSettings(**options), reference=oracle)


def _exact(oracle, spec="vp"):
    process = from_spec(spec)
    return gaussian_s_tot(process, oracle.mu.numpy(), oracle.std.numpy(), process.default_t_min, process.default_t_max)


# --- bias against closed forms -------------------------------------------------------------------

DESIGNS = {
    "grid-simpson": dict(),
    "importance-gaussian": dict(estimator="importance", strata=32),
    "importance-pilot": dict(estimator="importance", proposal="pilot", strata=32),
    "importance-log-snr": dict(estimator="importance", proposal="log-snr", strata=32),
    "importance-antithetic": dict(estimator="importance", strata=32, antithetic=True),
    "uniform-t-monte-carlo": dict(estimator="importance", proposal="uniform-t", strata=1),
}


@pytest.mark.parametrize("design", list(DESIGNS))
@pytest.mark.parametrize("spec", ["vp", "sl:sigma0=0.1", "ve"])
def test_estimate_matches_gaussian_closed_form(gaussian8, design, spec):
    options = dict(DESIGNS[design], samples=256 if design != "uniform-t-monte-carlo" else 8192, seed=4)
    result = _measure(gaussian8, spec, **options)
    exact = _exact(gaussian8, spec)
    stderr = float(result["s_tot_stderr"])
    assert abs(float(result["s_tot"]) - exact) < 3 * stderr
    assert float(result["s_nn"]) == float(result["s_tot"])


def test_gaussian_rate_formula_matches_diagonal_closed_form(gaussian8):
    process = from_spec("vpx:kappa=0.1")
    t = np.geomspace(1e-3, 1.0, 7)
    per_u = gaussian_rate_per_u(process, t, gaussian8.mean(), gaussian8.covariance_eigenvalues())
    mean, std = gaussian8.mu.numpy(), gaussian8.std.numpy()
    alpha = process.alpha(t)[:, None]
    v = alpha**2 * std**2 + process.sigma2(t)[:, None]
    k = process.equilibrium_score_coefficient(t)[:, None]
    per_t = 0.5 * process.g2(t) * (1 / v + 2 * k + k * k * (v + (alpha * mean) ** 2)).sum(axis=1)
    np.testing.assert_allclose(per_u, per_t / process.dlog_sigma_tilde_dt(t), rtol=1e-12)


@pytest.mark.parametrize("spec", ["vp", "sl:sigma0=0.1"])
def test_importance_matches_grid_on_mixture(mixture2, spec):
    grid = _measure(mixture2, spec, samples=2048, nodes=33, rule="gauss", seed=1)
    importance = _measure(mixture2, spec, estimator="importance", proposal="pilot", samples=1024, strata=64, seed=2)
    difference = float(importance["s_tot"]) - float(grid["s_tot"])
    assert abs(difference) < 3 * math.hypot(float(importance["s_tot_stderr"]), float(grid["s_tot_stderr"]))
    assert float(importance["s_tot_stderr"]) < 0.01 * float(grid["s_tot"])


def test_importance_reports_grid_quantities(gaussian8):
    result = _measure(gaussian8, estimator="importance", samples=16, strata=8)
    for name in ("s_nn", "cross_term", "denoising_loss", "ce_bound", "s_tot", "score_error"):
        assert name in result, name
        assert name + "_stderr" in result, name
    assert result["s_nn_rate"].dims == ("t",)
    edges = np.concatenate([result["t_lower"].values, result["t_upper"].values[-1:]])
    assert edges[0] == pytest.approx(1e-3)
    assert edges[-1] == pytest.approx(1.0)
    assert np.all(np.diff(edges) > 0)
    assert np.all((result["t"].values > result["t_lower"].values) & (result["t"].values < result["t_upper"].values))
    # Σ width × binned rate is the estimate itself.
    total = float((result["quadrature_weight"] * result["s_nn_rate"]).sum())
    assert total == pytest.approx(float(result["s_nn"]), rel=1e-12)
    assert result.attrs["estimator"] == "importance"


# --- calibrated standard errors ------------------------------------------------------------------

CALIBRATED = {
    "grid": dict(samples=32, nodes=17),
    "grid-antithetic": dict(samples=32, nodes=17, antithetic=True),
    "importance-stratified": dict(estimator="importance", samples=16, strata=32),
    "importance-unstratified": dict(estimator="importance", samples=512, strata=1),
    "target-stderr": dict(samples=8, nodes=17, target_stderr=0.03),
}


@pytest.mark.parametrize("design", list(CALIBRATED))
def test_stderr_is_calibrated_over_seeds(mixture2, design):
    estimates, stderrs = [], []
    for seed in range(40):
        result = _measure(mixture2, "vp", seed=100 + seed, reference_samples=64, **CALIBRATED[design])
        estimates.append(float(result["s_nn"]))
        stderrs.append(float(result["s_nn_stderr"]))
    ratio = np.std(estimates, ddof=1) / np.mean(stderrs)
    assert 0.7 <= ratio <= 1.4, (ratio, np.mean(estimates), np.mean(stderrs))


# --- rounds towards a target -----------------------------------------------------------------------

def test_target_stderr_is_met_without_bias(gaussian8):
    exact = _exact(gaussian8)
    estimates = []
    for seed in range(30):
        result = _measure(gaussian8, target_stderr=0.01, samples=4, nodes=17, seed=seed, reference_samples=64)
        assert result.attrs["target_met"] is True
        assert float(result["s_nn_stderr"]) <= 0.01 * float(result["s_nn"])
        estimates.append(float(result["s_nn"]))
    # 30 estimates with 1 % errors: their mean is within 3 × 0.01/√30 ≈ 0.55 % of the exact value.
    assert abs(np.mean(estimates) / exact - 1) < 3 * np.std(estimates, ddof=1) / exact / math.sqrt(30)


def test_target_rounds_add_samples_where_variance_is(gaussian8):
    result = _measure(gaussian8, target_stderr=0.002, samples=8, nodes=17, seed=3)
    counts = result["samples_per_node"].values
    assert result.attrs["rounds"] > 1
    assert counts.min() >= 2
    assert counts.max() > 4 * counts.min()
    assert result.attrs["planning_evaluations"] == 17 * 8
    assert result.attrs["network_evaluations"] == 17 * 8 + counts.sum()
    assert int(result.attrs["samples_total"]) == counts.sum()


def test_short_round_is_followed_by_more(gaussian8, monkeypatch):
    from entropy_probe import runner

    # Planning for three times the target makes the estimating round fall short on purpose.
    monkeypatch.setattr(runner, "PLANNING_MARGIN", 3.0)
    result = _measure(gaussian8, target_stderr=0.005, samples=8, nodes=17, seed=5)
    assert result.attrs["rounds"] > 2
    assert result.attrs["target_met"] is True
    assert float(result["s_nn_stderr"]) <= 0.005 * float(result["s_nn"])
    assert abs(float(result["s_nn"]) - _exact(gaussian8)) < 4 * float(result["s_nn_stderr"])


def test_target_stops_at_evaluation_cap(gaussian8):
    result = _measure(gaussian8, target_stderr=1e-5, samples=8, nodes=17, max_evaluations=2000)
    assert result.attrs["target_met"] is False
    assert result.attrs["network_evaluations"] <= 2000
    assert result.attrs["network_evaluations"] > 17 * 8


def test_first_round_above_cap_is_an_error(gaussian8):
    with pytest.raises(SpecError, match="--max-evaluations 100"):
        _measure(gaussian8, samples=8, nodes=17, max_evaluations=100)


def test_next_counts_follow_neyman_allocation():
    sums = NodeSums.zeros(2, ("nn",))
    # Cell 0: values ±1 (variance 1); cell 1: values ±3 (variance 9); 10 samples each.
    for cell, scale in ((0, 1.0), (1, 3.0)):
        values = np.tile([scale, -scale], 5) + 10.0
        sums.add(np.full(10, cell), {"nn": values})
    shares = neyman_shares(sums, np.array([1.0, 1.0]), smooth=0)
    counts = planned_counts(shares, target_variance=1e-4)
    assert counts[1] / counts[0] == pytest.approx(3.0, rel=0.01)
    # The variance Σ share²/n of the planned counts is the target (up to rounding up).
    assert float(np.sum(shares**2 / counts)) == pytest.approx(1e-4, rel=0.01)
    # Averaged over neighbours (both cells here), the shares become equal.
    smoothed = neyman_shares(sums, np.array([1.0, 1.0]), smooth=1)
    assert smoothed[0] == pytest.approx(smoothed[1])
    grown = next_counts(sums, np.array([1.0, 1.0]), target_relative=0.01, affordable_units=10**9, growth=2.0)
    assert grown.sum() <= 3 * 20
    assert np.all(grown >= 10)


# --- invariances ------------------------------------------------------------------------------------

INVARIANT = {
    "grid": dict(samples=40, nodes=9),
    "importance-pilot": dict(estimator="importance", proposal="pilot", samples=24, strata=8, pilot_samples=3),
    "antithetic": dict(samples=40, nodes=9, antithetic=True),
    "target": dict(samples=8, nodes=9, target_stderr=0.01),
}


@pytest.mark.parametrize("design", list(INVARIANT))
def test_batch_size_does_not_change_estimate(mixture2, design):
    values = []
    for batch_size, prefetch in ((2, True), (37, False), (64, True), (5000, True)):
        result = _measure(mixture2, seed=9, batch_size=batch_size, prefetch=prefetch, reference_samples=64, **INVARIANT[design])
        values.append((float(result["s_nn"]), float(result["s_nn_stderr"]), int(result.attrs["samples_total"])))
    for value in values[1:]:
        assert value[0] == pytest.approx(values[0][0], rel=1e-12, abs=0)
        assert value[1] == pytest.approx(values[0][1], rel=1e-9, abs=0)
        assert value[2] == values[0][2]


def test_same_seed_gives_common_draws(mixture2):
    source = oracle_source(mixture2, "m")
    draws, again = Draws(source, 5), Draws(source, 5)
    whole = draws.noise(0, 3, 10, 200)
    pieces = torch.cat([again.noise(0, 3, 10, 75), again.noise(0, 3, 75, 200)])
    assert torch.equal(whole, pieces)
    assert torch.equal(draws.data(0, 3, 10, 200)[0], again.data(0, 3, 10, 200)[0])
    assert not torch.equal(Draws(source, 6).noise(0, 3, 10, 200), whole)


def test_common_draws_shrink_error_of_differences(gaussian8):
    """Differences between two models measured with one seed scatter far less than with two seeds."""
    other = GaussianOracle(gaussian8.mu.numpy() * 1.05, gaussian8.std.numpy() * 0.98)
    source = oracle_source(gaussian8, "g")
    process = from_spec("vp")

    def s_nn(model, seed):
        return float(measure(model, process, source, MeasureSettings(samples=32, nodes=17, seed=seed, progress=False))["s_nn"])

    common = [s_nn(other, seed) - s_nn(gaussian8, seed) for seed in range(8)]
    independent = [s_nn(other, seed + 100) - s_nn(gaussian8, seed) for seed in range(8)]
    assert np.std(common, ddof=1) < 0.2 * np.std(independent, ddof=1)


# --- building blocks --------------------------------------------------------------------------------

def test_batches_cover_every_unit_once():
    segments = round_segments(np.array([0, 5, 2]), np.array([3, 9, 2]))
    assert segments == [(0, 0, 3), (1, 5, 9)]
    assert take_units(segments, 2, 5) == [(0, 2, 3), (1, 5, 7)]
    batches = cut_batches(segments, 3)
    assert [sum(b - a for _, a, b in batch) for batch in batches] == [3, 3, 1]
    covered = [(cell, i) for batch in batches for cell, a, b in batch for i in range(a, b)]
    assert covered == [(0, 0), (0, 1), (0, 2), (1, 5), (1, 6), (1, 7), (1, 8)]


@pytest.mark.parametrize("make", ["gaussian", "log-snr", "uniform-t"])
def test_proposal_samples_its_density(gaussian8, make):
    process = from_spec("vp")
    if make == "gaussian":
        proposal = gaussian_proposal(process, 1e-3, 1.0, gaussian8.mean(), gaussian8.covariance_eigenvalues())
    elif make == "log-snr":
        proposal = log_snr_proposal(process, 1e-3, 1.0)
    else:
        proposal = uniform_t_proposal(process, 1e-3, 1.0)
    t, density = proposal.sample_t(np.random.default_rng(0).random(200_000))
    np.testing.assert_allclose(density, proposal.density_t(t), rtol=1e-9)
    # The density integrates to one, and the drawn times fall into intervals at its rates.
    u = np.linspace(float(process.log_sigma_tilde(1e-3)), float(process.log_sigma_tilde(1.0)), 200_001)
    grid_t = np.clip(process.t_from_log_sigma_tilde(u), 1e-3, 1.0)
    mass = proposal.density_t(grid_t) / process.dlog_sigma_tilde_dt(grid_t)
    assert np.trapezoid(mass, u) == pytest.approx(1.0, abs=2e-3)
    for lo, hi in ((1e-3, 1e-2), (1e-2, 0.1), (0.1, 0.5), (0.5, 1.0)):
        inside = (grid_t >= lo) & (grid_t <= hi)
        expected = np.trapezoid(mass[inside], u[inside])
        observed = np.mean((t >= lo) & (t <= hi))
        assert observed == pytest.approx(expected, abs=4 * math.sqrt(expected / 200_000) + 2e-3)


def test_unknown_estimator_options_are_rejected(gaussian8):
    with pytest.raises(SpecError, match="unknown proposal 'nope'"):
        _measure(gaussian8, estimator="importance", proposal="nope")
    with pytest.raises(SpecError, match="unknown estimator 'mc'"):
        _measure(gaussian8, estimator="mc")
    with pytest.raises(SpecError, match="target standard error 2"):
        _measure(gaussian8, target_stderr=2.0)
    with pytest.raises(SpecError, match="batch size 'big'"):
        _measure(gaussian8, batch_size="big")
