"""Partial integrals ∫_{t_min}^{t_k} of grids and strata: exact cases and linear memory."""

from __future__ import annotations

import numpy as np
import pytest

from entropy_probe.processes import from_spec
from entropy_probe.proposals import log_snr_proposal
from entropy_probe.quadrature import make_grid

T_MIN, T_MAX = 1e-3, 1.0


@pytest.mark.parametrize("rule, nodes", [("simpson", 33), ("trapezoid", 20)])
def test_partial_integral_exact_for_constant_rate_in_u(rule, nodes):
    process = from_spec("vp")
    grid = make_grid(process, T_MIN, T_MAX, nodes, rule)
    # A rate of du/dt per unit time is 1 per unit u, so ∫ from t_min to t_k is u(t_k) - u(t_min).
    rate = process.dlog_sigma_tilde_dt(grid.t)
    expected = process.log_sigma_tilde(grid.t) - process.log_sigma_tilde(T_MIN)

    partial = grid.cumulative_integral(rate)

    np.testing.assert_allclose(partial, expected, rtol=1e-12, atol=1e-12)
    assert partial[-1] == pytest.approx(grid.integrate(rate), rel=1e-14)


def test_partial_integral_of_linear_rate_in_t():
    grid = make_grid(from_spec("vp"), T_MIN, T_MAX, 25, "trapezoid-t")
    partial = grid.cumulative_integral(2.0 * grid.t)
    # The trapezoid rule is exact for a linear integrand: ∫ 2t dt = t² - t_min².
    np.testing.assert_allclose(partial, grid.t**2 - T_MIN**2, rtol=1e-12, atol=1e-15)


def test_partial_integral_keeps_trailing_axes():
    grid = make_grid(from_spec("vp"), T_MIN, T_MAX, 17, "gauss")
    values = np.stack([np.ones(grid.size), 3.0 * np.ones(grid.size)], axis=1)
    partial = grid.cumulative_integral(values)
    assert partial.shape == (grid.size, 2)
    np.testing.assert_allclose(partial[:, 1], 3.0 * partial[:, 0], rtol=1e-14)


def test_strata_partial_integral_midpoint():
    grid = log_snr_proposal(from_spec("vp"), T_MIN, T_MAX).strata_grid(7)
    widths = grid.weights
    expected = np.concatenate([[0.0], np.cumsum(widths)[:-1]]) + 0.5 * widths
    np.testing.assert_allclose(grid.cumulative_integral(np.ones(7)), expected, rtol=1e-14)


def test_many_strata_need_linear_memory():
    # A matrix of partial-integral weights for this many strata would need 8 * 300_000² bytes (720 GB).
    strata = 300_000
    grid = log_snr_proposal(from_spec("vp"), T_MIN, T_MAX).strata_grid(strata)
    partial = grid.cumulative_integral(np.ones(strata))
    assert partial[-1] == pytest.approx(T_MAX - T_MIN - 0.5 * grid.weights[-1], rel=1e-9)
