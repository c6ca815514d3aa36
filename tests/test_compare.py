"""compare: one model under several processes, against closed forms for Gaussian data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from entropy_probe.checkpoint import save_oracle
from entropy_probe.compare import compare_processes, format_comparison
from entropy_probe.data import oracle_source
from entropy_probe.errors import SigmaRangeError, SpecError
from entropy_probe.oracles import GaussianOracle
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.processes import from_spec
from entropy_probe.quadrature import integrate_smooth
from entropy_probe.results import read_dataset, write_dataset

SPECS = ["vp", "vpx:kappa=0.1", "sl:sigma0=0.1", "ve"]
T_MIN = 1e-3


def gaussian_s_tot(process, mean, std, t_min, t_max):
    """∫ (g²/2) Σ_i [1/v + 2k + k²(v + m²)] dt with v = α²s_i² + σ², m = αμ_i, k = 2f/g²."""

    def per_unit_log_sigma(t):
        t = np.atleast_1d(t)
        alpha, sigma2, g2 = process.alpha(t), process.sigma2(t), process.g2(t)
        k = process.equilibrium_score_coefficient(t)[:, None]
        v = alpha[:, None] ** 2 * std[None, :] ** 2 + sigma2[:, None]
        m = alpha[:, None] * mean[None, :]
        rate = 0.5 * g2 * np.sum(1.0 / v + 2.0 * k + k**2 * (v + m**2), axis=1)
        return rate / process.dlog_sigma_tilde_dt(t)

    return integrate_smooth(process, t_min, t_max, per_unit_log_sigma)


@pytest.fixture(scope="module")
def gaussian():
    rng = np.random.default_rng(1)
    dim = 8
    return rng.uniform(-1.0, 1.0, dim), rng.uniform(0.3, 1.5, dim)


@pytest.fixture(scope="module")
def comparison(gaussian):
    oracle = GaussianOracle(*gaussian)
    settings = MeasureSettings(t_min=T_MIN, samples=4096, nodes=33, progress=False)
    return compare_processes(oracle, SPECS, oracle_source(oracle, "gaussian8"), settings, reference=oracle)


def test_s_tot_matches_closed_form(comparison, gaussian):
    mean, std = gaussian
    for index, spec in enumerate(comparison["process"].values):
        process = from_spec(str(spec))
        exact = gaussian_s_tot(process, mean, std, T_MIN, process.default_t_max)
        estimate = float(comparison["s_tot"].values[index])
        stderr = float(comparison["s_tot_stderr"].values[index])
        assert abs(estimate - exact) <= 4.0 * stderr + 1e-3 * exact, spec
        # An exact oracle's network term is its total entropy production.
        assert float(comparison["s_nn"].values[index]) == estimate


def test_shared_equilibrium_same_s_tot(comparison, gaussian):
    mean, std = gaussian
    vpx, sl = from_spec("vpx:kappa=0.1"), from_spec("sl:sigma0=0.1")
    exact_vpx = gaussian_s_tot(vpx, mean, std, T_MIN, vpx.default_t_max)
    exact_sl = gaussian_s_tot(sl, mean, std, T_MIN, sl.default_t_max)
    assert abs(exact_vpx - exact_sl) <= 0.01 * exact_sl
    estimates = {str(spec): float(value) for spec, value in zip(comparison["process"].values, comparison["s_tot"].values)}
    assert abs(estimates[vpx.spec] - estimates[sl.spec]) <= 0.01 * estimates[sl.spec]
    # vp has another equilibrium (N(0, I)) and needs far less information.
    assert estimates["vp:beta_min=0.1,beta_max=16.0"] < 0.05 * estimates[sl.spec]


def test_each_process_equals_single_measure(gaussian):
    oracle = GaussianOracle(*gaussian)
    data = oracle_source(oracle, "gaussian8")
    settings = MeasureSettings(t_min=T_MIN, samples=64, nodes=9, progress=False)
    combined = compare_processes(oracle, ["vp", "sl:sigma0=0.1"], data, settings)
    for index, spec in enumerate(["vp", "sl:sigma0=0.1"]):
        single = measure(oracle, from_spec(spec), data, settings)
        np.testing.assert_array_equal(combined["t"].values[index], single["t"].values)
        np.testing.assert_array_equal(combined["s_nn_rate"].values[index], single["s_nn_rate"].values)
        assert float(combined["s_nn"].values[index]) == float(single["s_nn"])


def test_round_trip_netcdf(comparison, tmp_path):
    path = write_dataset(comparison, tmp_path / "compare.nc")
    loaded = read_dataset(path)
    assert loaded.sizes == {"process": 4, "node": 33}
    assert loaded["t"].dims == ("process", "node")
    assert [str(p) for p in loaded["process"].values] == [from_spec(s).spec for s in SPECS]
    np.testing.assert_array_equal(loaded["t"].values, comparison["t"].values)
    np.testing.assert_array_equal(loaded["s_nn"].values, comparison["s_nn"].values)
    for name in loaded.variables:
        assert "units" in loaded[name].attrs, name
    assert loaded["s_nn"].attrs["units"] == "nats"
    t_max = json.loads(loaded.attrs["t_max"])
    assert t_max["sl:sigma0=0.1"] == pytest.approx(1 - 1e-5)
    priors = json.loads(loaded["ce_prior_term"].attrs["prior_variance"])
    assert priors["vpx:beta_min=0.1,beta_max=16.0,kappa=0.1"] == pytest.approx(0.01)
    assert json.loads(loaded.attrs["processes"]) == [str(p) for p in loaded["process"].values]


def test_table_lists_every_process(comparison):
    table = format_comparison(comparison)
    lines = table.splitlines()
    assert len(lines) == 2 + len(SPECS)
    assert "S_tot [nats]" in lines[0]
    assert "CE bound [bits/dim]" in lines[0]
    for spec in comparison["process"].values:
        assert any(line.startswith(str(spec)) for line in lines[2:])


def test_rejects_duplicates_and_ranges(gaussian):
    oracle = GaussianOracle(*gaussian)
    data = oracle_source(oracle, "gaussian8")
    settings = MeasureSettings(samples=8, nodes=3, progress=False)
    with pytest.raises(SpecError, match="given twice"):
        compare_processes(oracle, ["vp", "vp:beta_min=0.1"], data, settings)
    with pytest.raises(SpecError, match="at least one"):
        compare_processes(oracle, [], data, settings)
    oracle.sigma_max = 100.0  # covers vp (σ/α up to 56) but not sl (up to 1e4)
    with pytest.raises(SigmaRangeError, match="process 'sl:sigma0=0.1'"):
        compare_processes(oracle, ["vp", "sl:sigma0=0.1"], data, settings)


def test_command_line(tmp_path, gaussian, cli_run):
    checkpoint = tmp_path / "gauss"
    save_oracle(GaussianOracle(*gaussian), checkpoint)
    out, plot = tmp_path / "c.nc", tmp_path / "c.png"
    result = cli_run(
        "compare", str(checkpoint), "--process", "vp", "--process", "sl:sigma0=0.1",
        "--samples", "32", "--nodes", "9", "--out", str(out), "--plot", str(plot), "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()
    assert plot.stat().st_size > 0
    assert "sl:sigma0=0.1" in result.stdout
    assert "S_tot [nats]" in result.stdout
    options = json.loads((tmp_path / "c.options.json").read_text())
    assert options["options"]["processes"] == ["vp:beta_min=0.1,beta_max=16.0", "sl:sigma0=0.1"]

    again = cli_run("compare", str(checkpoint), "--process", "vp", "--process", "vp", "--out", str(tmp_path / "d.nc"))
    assert again.returncode != 0
    assert [line for line in again.stderr.splitlines() if line.startswith("error:")] == [
        "error: process 'vp' is given twice (also as 'vp'); give each process once"
    ]
    assert not (tmp_path / "d.nc").exists()


def test_command_line_estimator_like_measure(tmp_path, gaussian, cli_run):
    from entropy_probe.results import read_dataset

    checkpoint = tmp_path / "gauss"
    save_oracle(GaussianOracle(*gaussian), checkpoint)
    common = ("--samples", "8", "--strata", "4", "--no-progress")
    compared = cli_run("compare", str(checkpoint), "--process", "vp", "--process", "sl:sigma0=0.1", *common, "--out", str(tmp_path / "c.nc"))
    assert compared.returncode == 0, compared.stderr
    measured = cli_run("measure", str(checkpoint), "--process", "vp", *common, "--out", str(tmp_path / "m.nc"))
    assert measured.returncode == 0, measured.stderr

    comparison, single = read_dataset(tmp_path / "c.nc"), read_dataset(tmp_path / "m.nc")
    assert comparison.attrs["estimator"] == "importance"
    assert comparison.attrs["strata"] == 4
    assert "4 strata of the gaussian proposal" in compared.stdout
    assert "uniform number" in comparison.attrs["common_random_numbers"]
    # Without --estimator both commands sample by importance, and equal options give equal numbers.
    vp = comparison.sel(process="vp:beta_min=0.1,beta_max=16.0")
    assert float(vp["s_nn"]) == float(single["s_nn"])
    assert float(vp["s_nn_stderr"]) == float(single["s_nn_stderr"])
