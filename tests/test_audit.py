"""Memorisation audit: a perfect memoriser is flagged, the population law is not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropy_probe.audit import (
    AuditSettings,
    AuditThresholds,
    Signal,
    build_signals,
    format_verdict,
    nearest_two,
    overall_verdict,
    run_audit,
)
from entropy_probe.data import ArraySource, from_spec
from entropy_probe.errors import DataError, OutputError, SpecError
from entropy_probe.oracles import EmpiricalOracle
from entropy_probe.processes import from_spec as process_from_spec
from entropy_probe.results import read_dataset, write_dataset

TRAIN = "gmm:dim=5,n=50,sample_seed=1"
HELDOUT = "gmm:dim=5,n=400,sample_seed=2"


pytestmark = pytest.mark.usefixtures("one_thread")


def small_settings(**options) -> AuditSettings:
    values = dict(samples=128, nodes=17, items=200, likelihood_items=0, generate=300, steps=96, progress=False)
    values.update(options)
    return AuditSettings(**values)


@pytest.fixture(scope="module")
def splits():
    return from_spec(TRAIN), from_spec(HELDOUT)


@pytest.fixture(scope="module")
def memoriser_audit(splits):
    train, heldout = splits
    points, _ = train.get(np.arange(len(train)))
    return run_audit(EmpiricalOracle(points), process_from_spec("vp"), train, heldout, small_settings())


@pytest.fixture(scope="module")
def population_audit(splits):
    train, heldout = splits
    return run_audit(train.reference, process_from_spec("vp"), train, heldout, small_settings(likelihood_items=24))


def test_memoriser_samples_are_copies(memoriser_audit):
    ratio = memoriser_audit["nn_ratio"].values
    assert np.mean(ratio < 1 / 3) > 0.9
    assert float(memoriser_audit["copy_excess"]) > 0.8
    # Each suspicious sample sits on its nearest training item.
    assert np.median(memoriser_audit["nn_distance"].values) < 1e-3


def test_memoriser_codes_training_items_far_better(memoriser_audit):
    gap = float(memoriser_audit["ce_gap_bpd"])
    stderr = float(memoriser_audit["ce_gap_bpd_stderr"])
    assert gap > 10 * stderr
    assert gap > 10.0  # bits/dim


def test_memoriser_entropy_equals_ceiling(memoriser_audit):
    ceiling = float(memoriser_audit["memorisation_ceiling"])
    assert float(memoriser_audit["memoriser_s_nn"]) == pytest.approx(ceiling, rel=1e-12)
    # The memoriser as the audited model: same draws, so S_NN equals the ceiling.
    assert float(memoriser_audit["s_nn_train"]) == pytest.approx(ceiling, rel=1e-12)
    assert float(memoriser_audit["ceiling_fraction"]) == pytest.approx(1.0, rel=1e-12)


def test_memoriser_verdict(memoriser_audit):
    flagged = dict(zip(memoriser_audit["signal"].values, memoriser_audit["signal_flagged"].values))
    assert flagged == {"ceiling_fraction": 1, "ce_gap_bpd": 1, "copy_excess": 1}
    assert memoriser_audit.attrs["verdict"] == "memorises training items"


def test_population_makes_no_copies(population_audit):
    assert float(population_audit["copy_fraction"]) < 0.05
    assert abs(float(population_audit["copy_excess"])) < 3 * float(population_audit["copy_excess_stderr"]) + 0.02


def test_population_gap_within_noise(population_audit):
    for prefix in ("ce", "nll"):
        gap = float(population_audit[f"{prefix}_gap_bpd"])
        stderr = float(population_audit[f"{prefix}_gap_bpd_stderr"])
        assert abs(gap) < 3 * stderr, (prefix, gap, stderr)


def test_population_far_below_ceiling(population_audit):
    fraction = float(population_audit["ceiling_fraction"])
    assert 0 < fraction < 0.5
    assert float(population_audit["s_nn_heldout"]) == pytest.approx(float(population_audit["s_nn_train"]), rel=0.1)


def test_population_verdict(population_audit):
    assert int(population_audit["signal_flagged"].sum()) == 0
    assert population_audit.attrs["verdict"] == "no sign of memorisation"
    assert "nll_gap_bpd" in list(population_audit["signal"].values)
    text = format_verdict(population_audit)
    assert "verdict: no sign of memorisation" in text
    assert "copy_excess" in text


def test_audit_file_round_trip(population_audit, tmp_path):
    path = write_dataset(population_audit, tmp_path / "audit.nc")
    loaded = read_dataset(path)
    missing = [name for name in loaded.variables if "units" not in loaded[name].attrs]
    assert missing == []
    assert loaded.attrs["verdict"] == "no sign of memorisation"
    assert float(loaded["ce_bound_bpd_train"]) == pytest.approx(float(population_audit["ce_bound_bpd_train"]))
    assert list(loaded["signal"].values) == list(population_audit["signal"].values)
    with pytest.raises(OutputError, match="exists already"):
        write_dataset(population_audit, path)


def test_nearest_two_matches_brute_force():
    rng = np.random.default_rng(0)
    train_points = rng.normal(size=(37, 4))
    queries = torch.as_tensor(rng.normal(size=(11, 4)))
    source = ArraySource(train_points, spec="test points")
    found = nearest_two(queries, source, chunk=5)
    distances = np.linalg.norm(queries.numpy()[:, None, :] - train_points[None], axis=2)
    order = np.argsort(distances, axis=1)
    assert np.array_equal(found.nearest_index, order[:, 0])
    assert np.array_equal(found.second_index, order[:, 1])
    assert np.allclose(found.nearest, distances[np.arange(11), order[:, 0]], rtol=0, atol=1e-12)
    assert np.allclose(found.second, distances[np.arange(11), order[:, 1]], rtol=0, atol=1e-12)
    same = nearest_two(queries, source, chunk=1)
    assert np.array_equal(same.nearest_index, found.nearest_index)


def test_nearest_ratio_of_exact_copies():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    source = ArraySource(points, spec="duplicates")
    found = nearest_two(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]], dtype=torch.float64), source)
    assert found.ratio[0] == 0.0  # a copy of a unique item
    assert found.ratio[1] == 0.0  # a copy of a duplicated item: both distances are 0
    assert found.ratio[2] == pytest.approx(1.0)


def test_verdict_rules():
    def signal(name, flagged):
        return Signal(name, 0.0, 0.0, flagged, "1", "")

    assert overall_verdict([signal("ceiling_fraction", False), signal("copy_excess", False)]) == "no sign of memorisation"
    assert overall_verdict([signal("ce_gap_bpd", True), signal("copy_excess", True)]) == "memorises training items"
    assert overall_verdict([signal("ce_gap_bpd", True), signal("nll_gap_bpd", True), signal("copy_excess", False)]).startswith("overfits")
    assert overall_verdict([signal("copy_excess", True), signal("ce_gap_bpd", False)]).startswith("inconclusive")


def test_thresholds_in_table():
    values = {"ceiling_fraction": 0.95, "ce_gap_bpd": 0.2, "ce_gap_bpd_stderr": 0.1, "copy_excess": 0.04, "copy_excess_stderr": 0.001}
    signals = {s.name: s for s in build_signals(values, AuditThresholds())}
    assert signals["ceiling_fraction"].flagged
    assert signals["ceiling_fraction"].threshold == 0.9
    assert not signals["ce_gap_bpd"].flagged
    assert signals["ce_gap_bpd"].threshold == pytest.approx(0.3)
    assert not signals["copy_excess"].flagged
    assert signals["copy_excess"].threshold == pytest.approx(0.05)


def test_distribution_training_data_rejected(splits):
    _, heldout = splits
    with pytest.raises(DataError, match="finite training set"):
        run_audit(heldout.reference, process_from_spec("vp"), from_spec("gmm:dim=5"), heldout, small_settings())


def test_shape_mismatch_rejected(splits):
    train, _ = splits
    with pytest.raises(DataError, match="shape"):
        run_audit(train.reference, process_from_spec("vp"), train, from_spec("gmm:dim=3,n=20"), small_settings())


@pytest.mark.parametrize(
    "options, message",
    [({"items": 1}, "at least 2"), ({"likelihood_items": 1}, "likelihood items"), ({"thresholds": AuditThresholds(copy_ratio=1.5)}, "copy ratio")],
)
def test_invalid_settings_rejected(splits, options, message):
    train, heldout = splits
    with pytest.raises(SpecError, match=message):
        run_audit(train.reference, process_from_spec("vp"), train, heldout, small_settings(**options))


def test_chance_level_of_near_copies_in_two_dimensions():
    """In 2-D a real held-out item has ratio < 1/3 by chance often (about 1/9 for uniform points)."""
    train = from_spec("gmm:dim=2,n=200,sample_seed=1")
    heldout = from_spec("gmm:dim=2,n=400,sample_seed=2")
    x, _ = heldout.get(np.arange(len(heldout)))
    fraction = float(np.mean(nearest_two(x, train).ratio < 1 / 3))
    assert 0.03 < fraction < 0.25
    assert math.isfinite(fraction)
