"""The catalog: entry files, resolution to local weights, the command and installed copies."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffusers_fixtures import DDPM_SCHEDULER, install_in_hub_cache, save_pipeline, tiny_unet, write_image_data
from entropy_probe import catalog
from entropy_probe.adapters import load_denoiser
from entropy_probe.catalog import CatalogError, get_entry, load_catalog, read_entry, resolve_catalog_name
from entropy_probe.errors import SpecError
from entropy_probe.formatting import format_estimate
from entropy_probe.processes import from_spec

REPO = Path(__file__).resolve().parents[1]
GOOGLE_DDPM = {
    "ddpm-cifar10-32": ("google/ddpm-cifar10-32", 32),
    "ddpm-celebahq-256": ("google/ddpm-celebahq-256", 256),
    "ddpm-church-256": ("google/ddpm-church-256", 256),
    "ddpm-bedroom-256": ("google/ddpm-bedroom-256", 256),
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv(catalog.ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_google_ddpm_entries():
    entries = load_catalog()
    for name, (hub_id, size) in GOOGLE_DDPM.items():
        fields = entries[name].fields
        assert fields["kind"] == "hub"
        assert fields["hub_id"] == hub_id
        assert fields["scheduler"] == {
            "class": "DDPMScheduler",
            "beta_schedule": "linear",
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "num_train_timesteps": 1000,
        }
        assert fields["prediction_type"] == "epsilon"
        assert fields["image"]["size"] == [size, size]
        assert fields["image"]["pixel_range"] == [-1.0, 1.0]
        assert fields["image"]["quantization_step"] == pytest.approx(2 / 255)
        assert any(hub_id in url for url in fields["sources"])
        process = from_spec(fields["process"])
        assert process.name == "ddpm"
        assert len(process.betas) == 1000
        np.testing.assert_allclose(process.betas[[0, -1]], [1e-4, 0.02])


def test_recipes_have_no_weights():
    recipes = {name: e for name, e in load_catalog().items() if e.kind == "recipe"}
    assert {"paper-gmm", "paper-mnist-unet", "paper-cifar10-unet-vp"} <= set(recipes)
    assert "sl:sigma0=0.1" in recipes["paper-gmm"].fields["recipe"]["processes"]
    with pytest.raises(CatalogError, match="recipe without weights; run it with 'entropy-probe reproduce paper-gmm"):
        resolve_catalog_name("paper-gmm")


def test_unknown_names():
    assert resolve_catalog_name("not-an-entry") is None
    with pytest.raises(SpecError, match="known entries: .*ddpm-cifar10-32"):
        get_entry("not-an-entry")


def test_hub_entry_not_cached_says_how_to_fetch():
    with pytest.raises(CatalogError, match="hf download google/ddpm-cifar10-32"):
        load_denoiser("ddpm-cifar10-32")


def _user_entry(folder: Path, name: str, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"schema_version": 1, "name": name, "title": f"test entry {name}", **fields}
    (folder / f"{name}.json").write_text(json.dumps(entry))
    return folder / f"{name}.json"


def test_hub_and_shipped_entries_resolve(tmp_path, monkeypatch):
    unet = tiny_unet(seed=2)
    pipeline = save_pipeline(unet, DDPM_SCHEDULER, tmp_path / "pipe")
    revision = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = install_in_hub_cache(pipeline, tmp_path / "hf_home", "tiny-org/tiny-ddpm", revision)
    user = tmp_path / "user_catalog"
    shutil.copytree(pipeline, user / "shipped" / "tiny")
    hub_fields = dict(
        kind="hub", hub_id="tiny-org/tiny-ddpm", revision="main", prediction_type="epsilon",
        process="ddpm:schedule=linear,beta_start=0.0001,beta_end=0.02,steps=1000",
        image={"channels": 1, "size": [8, 8], "pixel_range": [-1.0, 1.0], "quantization_step": 2 / 255},
        sources=["https://example.org/tiny"],
    )
    _user_entry(user, "tiny-hub", **hub_fields)
    _user_entry(user, "tiny-shipped", kind="shipped", path="shipped/tiny", process="ddpm")
    monkeypatch.setenv(catalog.ENVIRONMENT_VARIABLE, str(user))

    assert resolve_catalog_name("tiny-hub") == snapshot
    assert resolve_catalog_name("tiny-shipped") == user / "shipped" / "tiny"
    from_hub = load_denoiser("tiny-hub")
    shipped = load_denoiser("tiny-shipped")
    assert from_hub.provenance["hub_id"] == "tiny-org/tiny-ddpm"
    assert from_hub.provenance["commit"] == revision
    assert from_hub.fingerprint == shipped.fingerprint
    statuses = {e.name: catalog.entry_status(e) for e in load_catalog().values()}
    assert statuses["tiny-hub"] == "cached"
    assert statuses["tiny-shipped"] == "present"
    assert statuses["ddpm-cifar10-32"] == "not cached"


def test_measure_catalog_name(tmp_path, cli_run):
    pipeline = save_pipeline(tiny_unet(seed=2), DDPM_SCHEDULER, tmp_path / "pipe")
    install_in_hub_cache(pipeline, tmp_path / "hf_home", "tiny-org/tiny-ddpm")
    user = tmp_path / "user_catalog"
    _user_entry(
        user, "tiny-hub", kind="hub", hub_id="tiny-org/tiny-ddpm", revision="main", prediction_type="epsilon",
        process="ddpm", image={"pixel_range": [-1.0, 1.0]}, sources=["https://example.org/tiny"],
    )
    data = write_image_data(tmp_path / "images.npz")
    out = tmp_path / "r.nc"
    result = cli_run(
        "measure", "tiny-hub", "--data", f"npz:path={data}", "--samples", "4", "--nodes", "3", "--out", str(out), "--no-progress",
        env={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", catalog.ENVIRONMENT_VARIABLE: str(user)},
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"name": "other", "kind": "recipe", "recipe": {}}, "must equal the file name"),
        ({"kind": "weights"}, "unknown kind 'weights'"),
        ({"kind": "recipe", "recipe": {}, "process": "vp:beta_min=-1"}, "beta_min"),
        ({"kind": "shipped", "path": "../outside"}, "stay inside"),
        ({"kind": "hub", "hub_id": "no-slash", "revision": "main"}, "ORG/NAME"),
        ({"kind": "recipe", "recipe": {}, "sources": ["http://insecure.example"]}, "https://"),
        ({"kind": "recipe", "recipe": {}, "reproduce": {"scales": []}}, "reproduce.scales"),
    ],
)
def test_malformed_entries_rejected(tmp_path, fields, message):
    file = tmp_path / "entry.json"
    file.write_text(json.dumps({"schema_version": 1, "name": "entry", "title": "t", **fields}))
    with pytest.raises(CatalogError, match=message):
        read_entry(file)


def test_catalog_command(cli_run, tmp_path):
    listing = cli_run("catalog", "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split()[1] for line in listing.stdout.splitlines()[1:]}
    assert rows["ddpm-church-256"] == "hub"
    assert rows["paper-mnist-unet"] == "recipe"
    recipe = cli_run("catalog", "show", "paper-gmm")
    assert "entropy-probe reproduce paper-gmm --scale SCALE --out DIR  (scales: tiny, cpu, paper)" in recipe.stdout
    shown = cli_run("catalog", "show", "ddpm-church-256", "--json")
    assert json.loads(shown.stdout)["hub_id"] == "google/ddpm-church-256"
    columns = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert columns["ddpm-cifar10-32"][2:5] == ["not", "cached", "-"]
    assert columns["ddpm-cifar10-32"][5] == "ddpm:schedule=linear,..."
    assert columns["gmm3-mlp-vp"][2] == "present"
    assert columns["paper-gmm"][2:4] == ["no", "weights"]
    shipped = cli_run("catalog", "show", "gmm3-mlp-sl").stdout
    recorded = get_entry("gmm3-mlp-sl").fields["recorded"]
    # The value is rounded where its two-digit standard error ends.
    bound = format_estimate(recorded["ce_bound_bpd"], recorded["ce_bound_bpd_stderr"])
    assert f"recorded cross-entropy bound: {bound} bits/dim" in shipped
    assert "strata 64" in shipped
    assert "rule importance" not in shipped
    assert "nodes 64" not in shipped
    uncached = cli_run("catalog", "show", "ddpm-cifar10-32", env={"HF_HOME": str(tmp_path / "empty-hf")}).stdout
    assert "weights: not in the local cache; see 'entropy-probe measure ddpm-cifar10-32' for how to fetch them" in uncached
    missing = cli_run("catalog", "show", "nope")
    assert missing.returncode != 0
    assert missing.stderr.startswith("error: unknown catalog entry 'nope'")


def test_source_checkout_fallback(monkeypatch):
    import importlib.resources

    def missing(package):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(importlib.resources, "files", missing)
    assert catalog.builtin_directory() == REPO / "catalog"
    assert "ddpm-cifar10-32" in load_catalog()


def test_non_editable_install_carries_catalog(tmp_path):
    """pip install (not editable) of a copy of the source tree ships the catalog files."""
    # Building without isolation needs setuptools here; with isolation pip would download it.
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / item, source / item)
    for item in ("entropy_probe", "adapters", "catalog"):
        shutil.copytree(REPO / item, source / item, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "installed"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import entropy_probe, entropy_probe.catalog as c; print(entropy_probe.__file__); print(c.builtin_directory()); print(sorted(c.load_catalog()))"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, directory, names = probe.stdout.splitlines()
    assert module_file.startswith(str(target))
    assert Path(directory) == target / "entropy_probe" / "catalog_data"
    assert "ddpm-bedroom-256" in names
    # The shipped checkpoints travel as package data too.
    for name in ("mnist-unet-vp", "mnist-unet-sl", "gmm3-mlp-vp", "gmm3-mlp-sl"):
        assert name in names
        for file_name in ("config.json", "model.safetensors"):
            installed = target / "entropy_probe" / "catalog_data" / "shipped" / name / file_name
            assert installed.read_bytes() == (REPO / "catalog" / "shipped" / name / file_name).read_bytes()
