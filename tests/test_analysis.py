"""Growth-law fits on synthetic data with known parameters, and the model comparison."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from entropy_probe.analysis import (
    choose_weighting,
    compare_growth_laws,
    fit_log_law,
    fit_power_law,
    growth_points,
    last_epoch,
    seed_mean,
    summarize_study,
)

N_TRAIN = np.array([10, 40, 100, 400, 1000, 4000, 10000, 40000, 60000], dtype=float)


def test_log_law_exact_data_ordinary():
    s_nn = 1200.0 + 130.0 * np.log(N_TRAIN)
    fit = fit_log_law(N_TRAIN, s_nn)
    assert fit.method.startswith("ordinary least squares")
    assert fit.value("a") == pytest.approx(1200.0, rel=1e-12)
    assert fit.value("b") == pytest.approx(130.0, rel=1e-12)
    assert fit.stderr("b") < 1e-9


def test_log_law_weighted_recovers_known_b():
    rng = np.random.default_rng(0)
    se = np.full(N_TRAIN.size, 20.0)
    s_nn = 1200.0 + 130.0 * np.log(N_TRAIN) + rng.normal(0.0, 20.0, N_TRAIN.size)
    fit = fit_log_law(N_TRAIN, s_nn, se)
    assert fit.method.startswith("weighted least squares")
    low, high = fit.interval("b")
    assert low < 130.0 < high
    # The covariance of the weighted fit is that of the known errors: se² (Xᵀ X)⁻¹.
    x = np.log(N_TRAIN)
    expected = 20.0 / np.sqrt(np.sum((x - x.mean()) ** 2))
    if fit.reduced_chi2 <= 1.0:
        assert fit.stderr("b") == pytest.approx(expected, rel=1e-9)
    else:
        assert fit.stderr("b") == pytest.approx(expected * np.sqrt(fit.reduced_chi2), rel=1e-9)


def test_log_law_interval_coverage():
    """About 95 % of the intervals from repeated noisy draws contain the true b."""
    rng = np.random.default_rng(1)
    se = np.full(N_TRAIN.size, 30.0)
    hits = 0
    trials = 400
    for _ in range(trials):
        s_nn = 800.0 + 90.0 * np.log(N_TRAIN) + rng.normal(0.0, 30.0, N_TRAIN.size)
        low, high = fit_log_law(N_TRAIN, s_nn, se).interval("b")
        hits += low < 90.0 < high
    assert 0.91 < hits / trials < 0.99


def test_excess_scatter_widens_interval():
    rng = np.random.default_rng(2)
    tiny = np.full(N_TRAIN.size, 50.0)
    s_nn = 1000.0 + 100.0 * np.log(N_TRAIN) + rng.normal(0.0, 150.0, N_TRAIN.size)
    fit = fit_log_law(N_TRAIN, s_nn, tiny)
    assert fit.covariance_from_residuals
    assert fit.reduced_chi2 > 1.0
    assert "scaled by χ²/dof" in fit.method


def test_negligible_stderr_uses_ordinary():
    rng = np.random.default_rng(3)
    s_nn = 1000.0 + 100.0 * np.log(N_TRAIN) + rng.normal(0.0, 40.0, N_TRAIN.size)
    weighting = choose_weighting(N_TRAIN, s_nn, np.full(N_TRAIN.size, 0.5))
    assert not weighting.weighted
    assert "below" in weighting.reason
    assert not choose_weighting(N_TRAIN, s_nn, None).weighted


def test_power_law_recovers_known_exponent():
    s_nn = 300.0 * N_TRAIN**0.25
    fit = fit_power_law(N_TRAIN, s_nn * (1 + 1e-4 * np.sin(N_TRAIN)))
    assert fit.value("c") == pytest.approx(300.0, rel=1e-3)
    assert fit.value("p") == pytest.approx(0.25, rel=1e-3)


def test_comparison_prefers_true_log_law():
    rng = np.random.default_rng(4)
    se = np.full(N_TRAIN.size, 10.0)
    s_nn = 1400.0 + 110.0 * np.log(N_TRAIN / 100.0) + rng.normal(0.0, 10.0, N_TRAIN.size)
    comparison = compare_growth_laws(N_TRAIN, s_nn, se)
    assert comparison.delta_aic > 2
    assert comparison.preferred == "log law"
    assert comparison.log.rss < comparison.power.rss


def test_comparison_prefers_true_power_law():
    rng = np.random.default_rng(5)
    se = np.full(N_TRAIN.size, 10.0)
    s_nn = 50.0 * N_TRAIN**0.45 + rng.normal(0.0, 10.0, N_TRAIN.size)
    comparison = compare_growth_laws(N_TRAIN, s_nn, se)
    assert comparison.delta_aic < -2
    assert comparison.preferred == "power law"
    assert comparison.power.value("p") == pytest.approx(0.45, abs=0.02)


def test_nan_points_are_dropped():
    s_nn = 500.0 + 50.0 * np.log(N_TRAIN)
    s_nn[3] = np.nan
    fit = fit_log_law(N_TRAIN, s_nn)
    assert fit.n == N_TRAIN.size - 1
    assert fit.value("b") == pytest.approx(50.0, rel=1e-12)


def test_one_size_rejected():
    with pytest.raises(ValueError, match="two or more distinct N"):
        fit_log_law([100.0, 100.0], [1.0, 2.0])


def _study(values: np.ndarray) -> xr.Dataset:
    """A training-size Dataset: s_nn(n_c, seed, epoch), the last epoch missing for n_c = 4."""
    dataset = xr.Dataset(
        {
            "s_nn": (("n_c", "seed", "epoch"), values),
            "s_nn_stderr": (("n_c", "seed", "epoch"), np.ones_like(values)),
        },
        coords={"n_c": [1, 4], "seed": [0, 1], "epoch": [5, 10]},
    )
    return dataset.assign_coords(n_train=("n_c", [10, 40]))


def test_last_epoch_per_item():
    values = np.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, np.nan], [7.0, np.nan]]])
    last = last_epoch(_study(values), "s_nn")
    np.testing.assert_array_equal(last.values, [[2.0, 4.0], [5.0, 7.0]])
    n_train, s_nn, _ = growth_points(_study(values))
    np.testing.assert_array_equal(n_train, [10, 10, 40, 40])
    np.testing.assert_array_equal(s_nn, [2.0, 4.0, 5.0, 7.0])


def test_seed_mean_and_stderr():
    values = np.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    mean, stderr = seed_mean(_study(values)["s_nn"])
    np.testing.assert_allclose(mean.values, [[2.0, 3.0], [6.0, 7.0]])
    np.testing.assert_allclose(stderr.values, np.full((2, 2), np.sqrt(2.0) / np.sqrt(2.0)))


def test_summary_names_each_last_epoch():
    """Processes trained for different numbers of epochs are reported at their own last epoch."""
    s_nn = np.array([[[1.0, 2.0, 3.0], [10.0, 20.0, np.nan]]])
    dataset = xr.Dataset(
        {
            "s_nn": (("dim", "process", "epoch"), s_nn),
            "s_tot": (("dim", "process"), np.array([[3.1, 30.0]])),
        },
        coords={"dim": [3], "process": ["vp", "sl"], "epoch": [5, 20, 25]},
        attrs={"analysis": "epochs"},
    )
    summary = summarize_study(dataset)
    assert "one seed" in summary
    assert "vp d=3: S_NN(epoch 25) = 3 " in summary
    assert "sl d=3: S_NN(epoch 20) = 20 " in summary
