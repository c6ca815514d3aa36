"""Estimates printed to the precision their standard error supports, in aligned columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from entropy_probe.formatting import format_estimate, format_rows, format_step


@pytest.mark.parametrize(
    "value, stderr, expected",
    [
        (143.4172, 0.83, "143.42 ± 0.83"),
        (2644.3668, 210.0, "2640 ± 210"),
        (-1823.04, 1.7, "-1823.0 ± 1.7"),
        (4.64013, 0.0031, "4.6401 ± 0.0031"),
        (28.59, 0.045, "28.590 ± 0.045"),
        (0.0996, 0.0996, "0.10 ± 0.10"),
        (12345678.0, 4000.0, "(1.23457 ± 0.00040)e+07"),
        (3e-6, 1e-7, "(3.00 ± 0.10)e-06"),
        (169.94, None, "169.9"),
        (5.0, 0.0, "5 ± 0"),
        (math.nan, 1.0, "nan"),
    ],
)
def test_format_estimate(value, stderr, expected):
    assert format_estimate(value, stderr) == expected


def test_format_rows_aligns_columns():
    lines = format_rows([["S_NN", "1.0 ± 0.1", "nats"], ["thermodynamic length", "28.590 ± 0.045", "data units"]])
    assert lines[0].index("1.0") == lines[1].index("28.590")
    assert lines[0].index("nats") == lines[1].index("data units")


def test_format_step_as_fraction():
    assert format_step(1 / 255) == "1/255"
    assert format_step(2 / 255) == "2/255"
    assert format_step(0.3) == "0.3"


def test_measure_summary_units_and_columns():
    from entropy_probe.data import oracle_source
    from entropy_probe.oracles import GaussianOracle
    from entropy_probe.probe import MeasureSettings, measure, summarize
    from entropy_probe.processes import from_spec

    oracle = GaussianOracle(np.array([0.5, -0.2]), np.array([0.8, 1.2]))
    result = measure(oracle, from_spec("vp"), oracle_source(oracle, "g"), MeasureSettings(samples=16, nodes=9, progress=False), reference=oracle)
    lines = summarize(result).splitlines()
    rows = {line.strip().split("  ")[0]: line for line in lines[lines.index("") + 1:]}

    assert "data units" in rows["thermodynamic length"]
    assert "nats (speed limit" in rows["S_tot lower bound"]
    assert "bits/dim (continuous data)" in rows["cross-entropy bound"]
    assert "nats under the continuous density" in rows["as a density"]
    s_tot = format_estimate(float(result["s_tot"]), float(result["s_tot_stderr"]))
    s_nn = format_estimate(float(result["s_nn"]), float(result["s_nn_stderr"]))
    assert rows["S_tot (exact law)"].index(s_tot) == rows["S_NN"].index(s_nn)


def _scalars(**values):
    import xarray as xr

    return xr.Dataset({name: ((), value) for name, value in values.items()})


def test_error_note_when_s_nn_exceeds_cross_term():
    from entropy_probe.probe import error_note

    note = error_note(_scalars(s_nn=80.4, s_nn_stderr=0.3, cross_term=62.7, cross_term_stderr=0.5))
    assert "S_NN exceeds the cross term C by 17.7 nats (22 %)" in note[1]
    assert "score error" in note[2]


@pytest.mark.parametrize(
    "s_nn, cross, stderr",
    [
        (2418.3, 2503.0, 2.0),  # C above S_NN: an under-trained network, no error signal
        (100.0, 97.0, 0.1),  # 3 % above: within the allowed fraction
        (100.0, 90.0, 4.0),  # 10 % above, but within 3 standard errors
    ],
)
def test_no_error_note_within_limits(s_nn, cross, stderr):
    from entropy_probe.probe import error_note

    assert error_note(_scalars(s_nn=s_nn, s_nn_stderr=stderr, cross_term=cross, cross_term_stderr=stderr)) == []


def test_quadrature_note_on_coarse_grid():
    from entropy_probe.probe import quadrature_note

    dataset = _scalars(s_nn=252.6, s_nn_quadrature_check=-40.0)
    dataset["s_nn_quadrature_check"].attrs["stderr"] = 2.0
    dataset.attrs["nodes"] = 9
    note = quadrature_note(dataset)
    assert "by -40 nats (-15.8 %), so 9 nodes are too few" in note[1]
    assert "--nodes" in note[3]


@pytest.mark.parametrize("check, stderr", [(-2.0, 0.1), (-40.0, 20.0)])
def test_no_quadrature_note_within_limits(check, stderr):
    from entropy_probe.probe import quadrature_note

    dataset = _scalars(s_nn=252.6, s_nn_quadrature_check=check)
    dataset["s_nn_quadrature_check"].attrs["stderr"] = stderr
    dataset.attrs["nodes"] = 9
    assert quadrature_note(dataset) == []
    assert quadrature_note(_scalars(s_nn=252.6)) == []
