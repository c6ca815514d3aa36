"""Adapter plugins: the entry-point group, --adapter module:function and the EDM example."""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from entropy_probe.adapters import ENTRY_POINT_GROUP, all_adapters, load_denoiser
from entropy_probe.data import oracle_source
from entropy_probe.errors import CheckpointError, SpecError
from entropy_probe.oracles import GaussianOracle
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.processes import from_spec

REPO = Path(__file__).resolve().parents[1]

PLUGIN_MODULE = '''
from pathlib import Path

from entropy_probe.adapters import Adapter
from entropy_probe.oracles import GaussianOracle


def detect(path: Path) -> bool:
    return path.suffix == ".gaussfmt"


def load(path, device="cpu", **options):
    mean, std = (float(v) for v in Path(path).read_text().split())
    oracle = GaussianOracle([mean, mean], [std, std])
    oracle.provenance = {"kind": "gaussfmt", "path": str(path)}
    return oracle.to(device)


ADAPTER = Adapter("gaussfmt", detect, load, "text files with a mean and a std")
NOT_AN_ADAPTER = 42
'''

LOADER_MODULE = '''
from entropy_probe.oracles import GaussianOracle


def load(source, device="cpu", scale=1.0, **options):
    oracle = GaussianOracle([0.0, 1.0], [scale, 2.0 * scale])
    oracle.provenance = {"kind": "user-function", "source": source}
    return oracle


def not_a_denoiser(source, **options):
    return "nothing"
'''


def write_distribution(root: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution: NAME-0.1.dist-info with METADATA and entry_points.txt."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    (tmp_path / "gaussfmt_plugin.py").write_text(PLUGIN_MODULE)
    write_distribution(
        tmp_path,
        "gaussfmt_plugin",
        f"""
        [{ENTRY_POINT_GROUP}]
        gaussfmt = gaussfmt_plugin:ADAPTER
        wrong_type = gaussfmt_plugin:NOT_AN_ADAPTER
        broken = gaussfmt_plugin_missing:ADAPTER
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("gaussfmt_plugin", None)


def test_entry_point_adapter_loads(plugin_path, caplog):
    source = plugin_path / "model.gaussfmt"
    source.write_text("0.5 2.0")
    with caplog.at_level(logging.WARNING, logger="entropy_probe.adapters"):
        names = [adapter.name for adapter in all_adapters()]
    assert "gaussfmt" in names
    assert "skipping adapter plugin wrong_type" in caplog.text
    assert "skipping adapter plugin broken" in caplog.text

    model = load_denoiser(str(source))
    assert isinstance(model, GaussianOracle)
    assert model.provenance["kind"] == "gaussfmt"
    np.testing.assert_allclose(model.mean(), [0.5, 0.5])


def test_adapter_function_option(tmp_path, monkeypatch):
    (tmp_path / "user_loader.py").write_text(LOADER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_denoiser("anything at all", adapter="user_loader:load", scale=0.5)
    assert model.provenance == {"kind": "user-function", "source": "anything at all"}
    np.testing.assert_allclose(model.covariance_eigenvalues(), [0.25, 1.0])

    with pytest.raises(CheckpointError, match="not a Denoiser"):
        load_denoiser("x", adapter="user_loader:not_a_denoiser")
    with pytest.raises(SpecError, match="module:function"):
        load_denoiser("x", adapter="user_loader")
    with pytest.raises(SpecError, match="cannot import adapter module"):
        load_denoiser("x", adapter="no_such_module_here:load")
    with pytest.raises(SpecError, match="has no function"):
        load_denoiser("x", adapter="user_loader:missing")


def test_adapter_option_on_command_line(tmp_path, cli_run):
    (tmp_path / "user_loader.py").write_text(LOADER_MODULE)
    out = tmp_path / "r.nc"
    result = cli_run(
        "measure", "my-model", "--adapter", "user_loader:load", "--data", "gaussian:dim=2",
        "--samples", "16", "--nodes", "5", "--out", str(out), "--no-progress",
        env={"PYTHONPATH": f"{tmp_path}:{REPO}"},
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()

    bad = cli_run("measure", "m", "--adapter", "user_loader", "--out", str(tmp_path / "bad.nc"), env={"PYTHONPATH": str(tmp_path)})
    assert bad.returncode != 0
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == [
        "error: invalid --adapter 'user_loader'; write it as module:function, for example mymodels:load"
    ]


def _load_edm_example():
    spec = importlib.util.spec_from_file_location("edm_adapter", REPO / "docs" / "examples" / "edm_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_edm_example_reproduces_gaussian_oracle():
    """An EDM network that outputs the ideal F for Gaussian data gives the oracle's S_NN."""
    edm = _load_edm_example()
    oracle = GaussianOracle([0.3, -0.2, 0.1], [0.8, 0.5, 1.2])
    sigma_data = 0.5

    def ideal_network(scaled_x, c_noise, labels=None):
        # Undo the preconditioning, then F = (D − c_skip x)/c_out with the exact denoiser D.
        sigma = torch.exp(4.0 * c_noise)[:, None]
        total = sigma**2 + sigma_data**2
        x = scaled_x * torch.sqrt(total)
        exact = oracle.denoise(x, sigma[:, 0])
        c_skip = sigma_data**2 / total
        c_out = sigma * sigma_data / torch.sqrt(total)
        return (exact - c_skip * x) / c_out

    model = edm.EDMDenoiser(ideal_network, (3,), sigma_data=sigma_data, sigma_min=1e-3, sigma_max=100.0, dtype=torch.float64)
    x = torch.randn((64, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.logspace(-3, 2, 64, dtype=torch.float64)
    torch.testing.assert_close(model.ve_score(x, sigma), oracle.ve_score(x, sigma), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.denoise(x, sigma), oracle.denoise(x, sigma), rtol=1e-9, atol=1e-9)

    data = oracle_source(oracle, "gaussian3")
    settings = MeasureSettings(t_min=1e-3, samples=64, nodes=9, progress=False)
    process = from_spec("vp")
    direct = float(measure(oracle, process, data, settings)["s_nn"])
    through = float(measure(model, process, data, settings)["s_nn"])
    assert math.isclose(through, direct, rel_tol=1e-7)
