"""Forward processes: derivatives, inversions, parameters and specifications."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entropy_probe.errors import SpecError
from entropy_probe.processes import PROCESSES, ddpm_betas, from_spec

SPECS = [
    "vp",
    "vp:beta_min=0.1,beta_max=20",
    "vpx:kappa=0.1",
    "sl:sigma0=0.1",
    "sl:sigma0=1",
    "vp-cosine",
    "subvp",
    "ve",
    "ve:sigma_min=0.002,sigma_max=80",
    "ddpm",
    "ddpm:schedule=scaled_linear,beta_start=0.00085,beta_end=0.012",
    "ddpm:schedule=squaredcos_cap_v2",
    "table",
]


def _process(spec, tmp_path):
    """The process of `spec`; "table" is a table of vp's α and σ written to a file first."""
    if spec != "table":
        return from_spec(spec)
    vp = from_spec("vp")
    t = np.linspace(1e-3, 1.0, 501)
    path = tmp_path / "schedule.npz"
    np.savez(path, t=t, alpha=vp.alpha(t), sigma=vp.sigma(t))
    return from_spec(f"table:file={path}")


def _times(process):
    if process.name in ("ddpm", "table"):
        # Inside the intervals of the table, away from the nodes where f and g² jump.
        nodes = process._t_nodes
        picks = np.linspace(0, nodes.size - 2, 9).astype(int)
        return 0.5 * (nodes[picks] + nodes[picks + 1])
    return np.geomspace(process.default_t_min, 0.98 * process.default_t_max, 11)


def _central(fn, t, h):
    return (fn(t + h) - fn(t - h)) / (2.0 * h)


@pytest.mark.parametrize("spec", SPECS)
def test_derivatives_match_finite_differences(spec, tmp_path):
    process = _process(spec, tmp_path)
    t = _times(process)
    h = 1e-4 * np.minimum(t, 1.0 - t)
    if process.name in ("ddpm", "table"):
        h = np.full_like(t, 1e-4 * np.min(np.diff(process._t_nodes)))
    f_fd = _central(lambda s: process.log_alpha(s), t, h)
    sigma2_fd = _central(lambda s: process.sigma2(s), t, h)
    g2_fd = sigma2_fd - 2.0 * process.f(t) * process.sigma2(t)
    if process.name == "ve":
        assert np.all(process.f(t) == 0.0)
    else:
        np.testing.assert_allclose(process.f(t), f_fd, rtol=1e-6)
    np.testing.assert_allclose(process.g2(t), g2_fd, rtol=1e-6)
    alpha_fd = _central(lambda s: process.alpha(s), t, h)
    np.testing.assert_allclose(process.f(t) * process.alpha(t), alpha_fd, rtol=1e-6, atol=1e-12)
    # g² = −σ² dλ/dt, the log-SNR form of the same relation.
    log_snr_fd = _central(lambda s: process.log_snr(s), t, h)
    np.testing.assert_allclose(process.g2(t), -process.sigma2(t) * log_snr_fd, rtol=1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_time_sigma_tilde_round_trip(spec, tmp_path):
    process = _process(spec, tmp_path)
    t = _times(process)
    sigma_tilde = process.sigma_tilde(t)
    np.testing.assert_allclose(process.t_from_sigma_tilde(sigma_tilde), t, rtol=1e-10)
    np.testing.assert_allclose(process.t_from_log_snr(process.log_snr(t)), t, rtol=1e-10)
    np.testing.assert_allclose(sigma_tilde, process.sigma(t) / process.alpha(t), rtol=1e-12)
    assert np.all(np.diff(process.log_snr(np.sort(t))) < 0)


@pytest.mark.parametrize("spec", SPECS)
def test_spec_round_trip(spec, tmp_path):
    process = _process(spec, tmp_path)
    assert from_spec(process.spec) == process


def test_vp_closed_form_values():
    process = from_spec("vp:beta_min=0.1,beta_max=20")
    t = 0.3
    integral = 0.1 * t + 0.5 * 19.9 * t * t
    assert process.alpha(t) == pytest.approx(math.exp(-0.5 * integral), rel=1e-14)
    assert process.sigma2(t) == pytest.approx(1.0 - math.exp(-integral), rel=1e-13)
    assert process.g2(t) == pytest.approx(0.1 + 19.9 * t, rel=1e-14)


def test_small_time_accuracy_float64():
    # σ² = 1 − α² must not round to 0 at small t (it would in a naive 1 − exp(−B)).
    process = from_spec("vp")
    t = 1e-9
    assert process.sigma2(t) == pytest.approx(0.1 * t, rel=1e-6)
    cosine = from_spec("vp-cosine")
    assert cosine.sigma2(1e-9) > 0
    assert cosine.t_from_sigma_tilde(cosine.sigma_tilde(1e-7)) == pytest.approx(1e-7, rel=1e-8)


@pytest.mark.parametrize(
    "spec, equilibrium",
    [("vp", 1.0), ("vpx:kappa=0.1", 0.01), ("sl:sigma0=0.1", 0.01), ("vp-cosine", 1.0), ("ddpm", 1.0)],
)
def test_fixed_equilibrium_variance(spec, equilibrium):
    process = from_spec(spec)
    t = _times(process)
    np.testing.assert_allclose(process.equilibrium_variance(t), equilibrium, rtol=1e-9)
    assert process.has_fixed_equilibrium


def test_equilibrium_of_ve_and_subvp():
    assert np.all(np.isinf(from_spec("ve").equilibrium_variance([0.1, 0.5])))
    assert not from_spec("ve").has_fixed_equilibrium
    subvp = from_spec("subvp")
    t = np.array([0.1, 0.5])
    np.testing.assert_allclose(subvp.equilibrium_variance(t), 1.0 - subvp.alpha(t) ** 4, rtol=1e-12)
    assert not subvp.has_fixed_equilibrium


def test_ddpm_table_matches_cumulative_product():
    process = from_spec("ddpm")
    betas = ddpm_betas("linear", 1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1.0 - betas)
    t_nodes = np.arange(1, 1001) / 1000
    np.testing.assert_allclose(process.alpha(t_nodes) ** 2, alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(process.sigma_tilde(t_nodes), np.sqrt((1 - alphas_cumprod) / alphas_cumprod), rtol=1e-9)


def test_table_process_from_npz(tmp_path):
    vp = from_spec("vp")
    t = np.linspace(1e-3, 1.0, 2001)
    path = tmp_path / "schedule.npz"
    np.savez(path, t=t, alpha=vp.alpha(t), sigma=vp.sigma(t))
    table = from_spec(f"table:file={path}")
    # Midpoints of table intervals, where the chord slopes are second-order accurate.
    index = np.array([18, 400, 1400])
    probe = 0.5 * (t[index] + t[index + 1])
    np.testing.assert_allclose(table.sigma_tilde(probe), vp.sigma_tilde(probe), rtol=1e-3)
    np.testing.assert_allclose(table.g2(probe), vp.g2(probe), rtol=1e-3)
    assert table.t_upper == 1.0


def test_table_process_from_csv(tmp_path):
    path = tmp_path / "schedule.csv"
    path.write_text("t,alpha,sigma\n0.1,0.99,0.1\n0.5,0.8,0.6\n1.0,0.1,0.99\n")
    table = from_spec(f"table:file={path}")
    assert table.t_lower == 0.1
    assert table.sigma_tilde(0.5) == pytest.approx(0.6 / 0.8)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("nope", "unknown process 'nope'"),
        ("vp:beta_min=1,beta_max=0.5", "beta_max=0.5 is smaller than beta_min=1.0"),
        ("vp:beta_min=-1", "beta_min=-1.0"),
        ("vp:beta_max=abc", "invalid value 'abc' for beta_max"),
        ("vp:gamma=1", "unknown parameter 'gamma'"),
        ("vp:beta_min", "is not key=value"),
        ("sl:sigma0=0", "sigma0=0.0"),
        ("ve:sigma_min=10,sigma_max=1", "sigma_max=1.0 must be larger"),
        ("vpx:kappa=-0.1", "kappa=-0.1"),
        ("ddpm:schedule=cubic", "unknown DDPM beta schedule 'cubic'"),
        ("table", "needs a file"),
        ("table:file=/nonexistent.npz", "not found"),
        ("", "empty process specification"),
    ],
)
def test_invalid_specs_name_the_value(spec, fragment):
    with pytest.raises(SpecError) as info:
        from_spec(spec)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "t_min, t_max, fragment",
    [
        (0.0, 1.0, "t_min=0.0"),
        (-1e-3, 1.0, "t_min=-0.001"),
        (0.5, 0.5, "must be smaller than T=0.5"),
        (0.9, 0.1, "must be smaller"),
        (1e-3, 1.5, "T=1.5"),
    ],
)
def test_invalid_time_ranges(t_min, t_max, fragment):
    with pytest.raises(SpecError) as info:
        from_spec("vp").check_time_range(t_min, t_max)
    assert fragment in str(info.value)


def test_straight_line_rejects_t_equal_one():
    with pytest.raises(SpecError) as info:
        from_spec("sl").check_time_range(1e-3, 1.0)
    assert "T=1.0" in str(info.value)


def test_every_registered_process_has_defaults_in_range():
    for name in PROCESSES:
        if name == "table":
            continue
        process = from_spec(name)
        process.check_time_range(process.default_t_min, process.default_t_max)
