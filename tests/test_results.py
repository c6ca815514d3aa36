"""Result files: NetCDF round trip with units, refusal to overwrite, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from entropy_probe.data import oracle_source
from entropy_probe.errors import OutputError
from entropy_probe.oracles import GaussianOracle
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.processes import from_spec
from entropy_probe.results import read_dataset, write_dataset


@pytest.fixture(scope="module")
def small_result():
    oracle = GaussianOracle(np.array([0.5, -0.2]), np.array([0.8, 1.2]))
    return measure(oracle, from_spec("vp"), oracle_source(oracle, "g"), MeasureSettings(samples=64, nodes=9, progress=False), reference=oracle)


REQUIRED = [
    "s_nn", "s_nn_stderr", "s_nn_rate", "s_nn_rate_stderr", "cross_term", "ce_bound", "ce_bound_bpd",
    "thermo_length", "speed_limit_bound", "s_tot", "s_tot_rate", "score_error", "kl_bound",
]


def test_required_variables_have_units(small_result):
    for name in REQUIRED:
        assert name in small_result, name
    for name, variable in small_result.variables.items():
        assert "units" in variable.attrs, name
    assert small_result["s_nn_rate"].dims == ("t",)


def test_provenance_attributes(small_result):
    attrs = small_result.attrs
    for key in ("process", "process_params", "t_min", "t_max", "samples_per_node", "nodes", "network_evaluations",
                "seed", "package_version", "model_fingerprint"):
        assert key in attrs, key
    assert attrs["process"] == "vp:beta_min=0.1,beta_max=16.0"
    assert attrs["network_evaluations"] == 9 * 64


def test_netcdf_round_trip_keeps_variables_and_units(small_result, tmp_path):
    path = write_dataset(small_result, tmp_path / "r.nc")
    loaded = read_dataset(path)
    assert set(loaded.variables) == set(small_result.variables)
    for name in small_result.variables:
        assert loaded[name].attrs["units"] == small_result[name].attrs["units"], name
        np.testing.assert_array_equal(loaded[name].values, small_result[name].values)
    assert loaded.attrs["process"] == small_result.attrs["process"]
    assert loaded.attrs["t_min"] == small_result.attrs["t_min"]


def test_existing_output_is_refused_without_overwrite(small_result, tmp_path):
    path = tmp_path / "r.nc"
    path.write_text("keep me")
    with pytest.raises(OutputError) as info:
        write_dataset(small_result, path)
    assert "--overwrite" in str(info.value)
    assert path.read_text() == "keep me"
    write_dataset(small_result, path, overwrite=True)
    assert float(read_dataset(path)["s_nn"]) == float(small_result["s_nn"])


def test_interrupted_write_leaves_no_file(small_result, tmp_path, monkeypatch):
    import xarray as xr

    def fail(self, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", fail)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(small_result, tmp_path / "r.nc")
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder_is_a_clear_error(small_result, tmp_path):
    with pytest.raises(OutputError) as info:
        write_dataset(small_result, tmp_path / "missing" / "r.nc")
    assert "does not exist" in str(info.value)
