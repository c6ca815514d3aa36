"""The built-in trainer: learning a mixture, checkpoint round trips, resuming, the adapter."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from entropy_probe import api
from entropy_probe.adapters import load_denoiser
from entropy_probe.errors import CheckpointError, OutputError, SpecError
from entropy_probe.probe import MeasureSettings
from entropy_probe.processes import from_spec as process_from_spec
from entropy_probe.train import TrainSettings, load_network, read_loss_log, train
from entropy_probe.train.networks import build_core, count_parameters, unet_arguments


pytestmark = pytest.mark.usefixtures("one_thread")


MIXTURE = "gmm:dim=2,components=5,seed=3,n=2048"


def _mlp_settings(**changes) -> TrainSettings:
    values = dict(
        architecture="mlp",
        data=MIXTURE,
        process="vp",
        epochs=10,
        save_epochs=[1],
        lr=1e-3,
        network={"widths": [128, 128], "fourier_features": 64},
        progress=False,
    )
    values.update(changes)
    return TrainSettings(**values)


def _small_unet_settings(**changes) -> TrainSettings:
    values = dict(
        architecture="unet",
        data="digits:n_c=2",
        process="vp",
        epochs=2,
        batch_size=8,
        network={"channels": [8, 16], "dropout": 0.3},
        progress=False,
    )
    values.update(changes)
    return TrainSettings(**values)


def _tensors_equal(path_a, path_b) -> bool:
    a, b = load_file(str(path_a)), load_file(str(path_b))
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


# --- the mixture MLP learns the exact score ------------------------------------------------

@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "gmm2"
    train(_mlp_settings(), out)
    settings = MeasureSettings(samples=1024, nodes=33, seed=0, progress=False)
    early = api.measure_checkpoint(str(out / "epoch-0001"), settings=settings)
    final = api.measure_checkpoint(str(out), settings=settings)
    return out, early, final


def test_mixture_mlp_reaches_s_tot(mixture_run):
    _, _, final = mixture_run
    s_tot = float(final["s_tot"])
    assert s_tot > 0.5
    assert abs(float(final["s_nn"]) - s_tot) < 0.1 * s_tot


def test_mixture_score_error_decreases(mixture_run):
    _, early, final = mixture_run
    error_early, error_final = float(early["score_error"]), float(final["score_error"])
    margin = 3 * math.hypot(float(early["score_error_stderr"]), float(final["score_error_stderr"]))
    assert error_final < error_early - margin


def test_mixture_run_measures_on_mixture_law(mixture_run):
    out, _, final = mixture_run
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["heldout_spec"] == "gmm:dim=2,components=5,seed=3"
    assert config["data"]["mixture"]["components"] == 5
    assert final.attrs["data"] == "gmm:dim=2,components=5,seed=3"
    assert final.attrs["process"] == process_from_spec("vp").spec


def test_mixture_run_files(mixture_run):
    out, _, _ = mixture_run
    assert (out / "epoch-0001" / "model.safetensors").is_file()
    assert (out / "epoch-0010" / "model.safetensors").is_file()
    assert _tensors_equal(out / "model.safetensors", out / "epoch-0010" / "model.safetensors")
    log = read_loss_log(out)
    assert [entry["epoch"] for entry in log] == list(range(1, 11))
    assert all(math.isfinite(entry["loss"]) for entry in log)
    assert log[-1]["loss"] < log[0]["loss"]


# --- checkpoints --------------------------------------------------------------------------

def test_checkpoint_config_keys(mixture_run):
    out, _, _ = mixture_run
    config = json.loads((out / "config.json").read_text())
    for key in ("kind", "architecture", "network", "parametrisation", "time_input", "output_scaling", "process", "data", "training", "epoch", "seed", "package_version", "train_time_range"):
        assert key in config, key
    assert config["kind"] == "network"
    assert config["parametrisation"] == "excess_score"
    assert config["epoch"] == 10
    assert config["train_time_range"] == [1e-5, 1.0]


@pytest.mark.parametrize("settings", [_mlp_settings(epochs=1, data="gmm:dim=3,n=64"), _small_unet_settings(epochs=1, network={"channels": [8, 16], "dropout": 0.3, "class_conditional": True})], ids=["mlp", "unet-conditional"])
def test_checkpoint_round_trip_exact(tmp_path, settings):
    trainer = train(settings, tmp_path / "run")
    loaded, config, digest = load_network(tmp_path / "run")
    shape = (6,) + tuple(config["data"]["shape"])
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=generator)
    t = torch.rand(6, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    labels = torch.arange(6) % 10
    trainer.network.eval()
    with torch.inference_mode():
        expected = trainer.network(x, t, labels)
        actual = loaded(x, t, labels)
    assert torch.equal(expected, actual)
    assert len(digest) == 64


def test_unet_state_dict_keys_unchanged(tmp_path):
    from diffusers import UNet2DModel

    train(_small_unet_settings(epochs=1), tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    unet = UNet2DModel.from_config(config["network"])
    unet.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")), strict=True)
    assert config["network"]["block_out_channels"] == [8, 16]


def test_mnist_preset_about_one_million():
    core = build_core("unet", unet_arguments((1, 28, 28), {}, None), seed=0)
    assert 0.8e6 < count_parameters(core) < 1.3e6


def test_weights_mismatch_detected(tmp_path):
    train(_mlp_settings(epochs=1, data="gmm:dim=2,n=32"), tmp_path / "run")
    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    config["weights_sha256"] = "0" * 64
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_network(tmp_path / "run")


# --- resuming ----------------------------------------------------------------------------

class _Interrupt(Exception):
    pass


def test_resume_matches_uninterrupted(tmp_path):
    base = dict(data="gmm:dim=2,n=256", epochs=4, ema=0.9, network={"widths": [32, 32], "fourier_features": 16})
    train(_mlp_settings(**base), tmp_path / "straight")
    train(_mlp_settings(**{**base, "epochs": 2}), tmp_path / "resumed")
    train(_mlp_settings(**base), tmp_path / "resumed", resume=True)
    assert _tensors_equal(tmp_path / "straight" / "model.safetensors", tmp_path / "resumed" / "model.safetensors")
    assert _tensors_equal(tmp_path / "straight" / "train-state" / "model.safetensors", tmp_path / "resumed" / "train-state" / "model.safetensors")
    losses = [entry["loss"] for entry in read_loss_log(tmp_path / "straight")]
    assert losses == [entry["loss"] for entry in read_loss_log(tmp_path / "resumed")]


def test_resume_after_mid_epoch_interruption(tmp_path):
    base = dict(data="gmm:dim=2,n=256", epochs=4, network={"widths": [32, 32], "fourier_features": 16})
    train(_mlp_settings(**base), tmp_path / "straight")

    def interrupt(epoch, step):
        if epoch == 3 and step == 4:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(_mlp_settings(**base), tmp_path / "interrupted", on_step=interrupt)
    assert [entry["epoch"] for entry in read_loss_log(tmp_path / "interrupted")] == [1, 2]
    train(_mlp_settings(**base), tmp_path / "interrupted", resume=True)
    assert _tensors_equal(tmp_path / "straight" / "model.safetensors", tmp_path / "interrupted" / "model.safetensors")


def test_resume_with_dropout_unet(tmp_path):
    state_before = torch.get_rng_state()
    train(_small_unet_settings(), tmp_path / "straight")
    assert torch.equal(torch.get_rng_state(), state_before)
    train(_small_unet_settings(epochs=1), tmp_path / "resumed")
    train(_small_unet_settings(), tmp_path / "resumed", resume=True)
    assert _tensors_equal(tmp_path / "straight" / "model.safetensors", tmp_path / "resumed" / "model.safetensors")


def test_resume_rejects_changed_settings(tmp_path):
    train(_mlp_settings(epochs=1, data="gmm:dim=2,n=32"), tmp_path / "run")
    with pytest.raises(SpecError, match="lr=0.01"):
        train(_mlp_settings(epochs=2, data="gmm:dim=2,n=32", lr=1e-2), tmp_path / "run", resume=True)


def test_existing_output_rejected(tmp_path):
    train(_mlp_settings(epochs=1, data="gmm:dim=2,n=32"), tmp_path / "run")
    with pytest.raises(OutputError, match="exists already"):
        train(_mlp_settings(epochs=1, data="gmm:dim=2,n=32"), tmp_path / "run")


def test_overwrite_spares_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not the output"):
        train(_mlp_settings(epochs=1, data="gmm:dim=2,n=32"), tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# --- the adapter --------------------------------------------------------------------------

def test_adapter_ve_score_formula(tmp_path):
    train(_mlp_settings(epochs=1, data="gmm:dim=2,n=64"), tmp_path / "run")
    model = load_denoiser(str(tmp_path / "run"))
    network, _, _ = load_network(tmp_path / "run")
    process = process_from_spec("vp")
    sigma_tilde = torch.tensor([0.05, 0.5, 3.0], dtype=torch.float64)
    x_tilde = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = process.t_from_sigma_tilde(sigma_tilde.numpy())
    alpha = torch.from_numpy(process.alpha(t))[:, None]
    k = torch.from_numpy(process.equilibrium_score_coefficient(t))[:, None]
    with torch.inference_mode():
        e = network(alpha * x_tilde, torch.from_numpy(t)).double()
        score = model.ve_score(x_tilde, sigma_tilde)
    torch.testing.assert_close(score, alpha * (k * alpha * x_tilde + e), rtol=1e-12, atol=0)
    assert score.dtype == torch.float64
    assert model.evaluations == 3


def test_adapter_declares_model(tmp_path):
    train(_mlp_settings(epochs=1, data="gmm:dim=2,n=64", t_min=1e-3), tmp_path / "run")
    model = load_denoiser(str(tmp_path / "run"))
    process = process_from_spec("vp")
    assert model.sigma_min == pytest.approx(float(process.sigma_tilde(1e-3)))
    assert model.sigma_max == pytest.approx(float(process.sigma_tilde(1.0)))
    assert model.native_process == process.spec
    assert model.default_data == "gmm:dim=2"
    assert model.data_shape == (2,)
    assert model.num_classes is None
    assert model.fingerprint == json.loads((tmp_path / "run" / "config.json").read_text())["weights_sha256"]


def test_adapter_conditional_needs_labels(tmp_path):
    from entropy_probe.errors import DataError

    train(_small_unet_settings(epochs=1, network={"channels": [8, 16], "class_conditional": True}), tmp_path / "run")
    model = load_denoiser(str(tmp_path / "run"))
    assert model.num_classes == 10
    x = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    sigma = torch.full((2,), 0.5, dtype=torch.float64)
    with pytest.raises(DataError, match="class-conditional"):
        model.ve_score(x, sigma)
    with torch.inference_mode():
        assert model.ve_score(x, sigma, torch.tensor([1, 2])).shape == x.shape


def test_sl_training_measures(tmp_path):
    """A U-Net trained under sl measures under sl with its held-out split and finite numbers."""
    train(_small_unet_settings(epochs=1, process="sl:sigma0=0.1", network={"channels": [8, 16]}), tmp_path / "run")
    result = api.measure_checkpoint(str(tmp_path / "run"), settings=MeasureSettings(samples=8, nodes=5, progress=False))
    assert result.attrs["process"].startswith("sl:")
    assert result.attrs["data"] == "digits:split=heldout"
    assert np.isfinite(float(result["s_nn"]))


# --- the loss -----------------------------------------------------------------------------

def test_loss_weightings_match_definitions():
    from entropy_probe.train.loop import entropy_matching_loss

    generator = torch.Generator().manual_seed(2)
    process = process_from_spec("sl:sigma0=0.1")
    t = np.array([0.01, 0.3, 0.9])
    x_t = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    e = torch.randn(3, 4, generator=generator, dtype=torch.float64)
    sigma = torch.from_numpy(process.sigma(t))[:, None]
    k = torch.from_numpy(process.equilibrium_score_coefficient(t))[:, None]
    g2 = torch.from_numpy(process.g2(t))[:, None]
    conditional_target = -noise / sigma - k * x_t
    squared_error = ((e - conditional_target) ** 2).sum(1)

    sigma2 = entropy_matching_loss(e, x_t, noise, sigma, k, g2, "sigma2", span=0.5)
    likelihood = entropy_matching_loss(e, x_t, noise, sigma, k, g2, "likelihood", span=0.5)
    torch.testing.assert_close(sigma2, sigma[:, 0] ** 2 * squared_error, rtol=1e-12, atol=0)
    torch.testing.assert_close(likelihood, 0.5 * g2[:, 0] / 2 * squared_error, rtol=1e-12, atol=0)


def test_likelihood_weighting_trains(tmp_path):
    trainer = train(_mlp_settings(epochs=3, data="gmm:dim=2,n=256", weighting="likelihood"), tmp_path / "run")
    losses = [entry["loss"] for entry in trainer.history]
    assert all(math.isfinite(value) for value in losses)
    assert trainer.settings.weighting == "likelihood"
