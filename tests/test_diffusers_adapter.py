"""The diffusers adapter: exact conversions, every source form, and rejected inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffusers_fixtures import (
    DDPM_SCHEDULER,
    SDE_VE_SCHEDULER,
    OracleUNet,
    install_in_hub_cache,
    save_flat,
    save_pipeline,
    tiny_unet,
    write_image_data,
)
from entropy_probe.adapters import load_denoiser
from entropy_probe.adapters.diffusers_adapter import DiffusersDenoiser, make_denoiser
from entropy_probe.data import oracle_source
from entropy_probe.errors import CheckpointError, DataError, SigmaRangeError
from entropy_probe.oracles import paper_mixture
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.processes import ddpm_betas, from_spec

PREDICTIONS = ("epsilon", "v_prediction", "sample")


def oracle_adapter(oracle, prediction: str) -> DiffusersDenoiser:
    betas = ddpm_betas("linear", 1e-4, 0.02, 1000)
    scheduler = dict(DDPM_SCHEDULER, prediction_type=prediction)
    return make_denoiser(OracleUNet(oracle, betas, prediction), scheduler, oracle.data_shape, pixel_range=None)


@pytest.fixture(scope="module")
def mixture():
    return paper_mixture(2, seed=3)


# --- conversions ----------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ve_score_matches_oracle(mixture, prediction):
    adapter = oracle_adapter(mixture, prediction)
    generator = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn((257, 2), generator=generator, dtype=torch.float64)
    # Fractional timesteps everywhere in the range, plus both ends exactly.
    log_sigma = torch.empty(257, dtype=torch.float64).uniform_(
        math.log(adapter.sigma_min), math.log(adapter.sigma_max), generator=generator
    )
    sigma = torch.exp(log_sigma)
    sigma[0], sigma[1] = adapter.sigma_min, adapter.sigma_max
    expected = mixture.ve_score(x, sigma)
    got = adapter.ve_score(x, sigma)
    scale = expected.abs().max(dim=1, keepdim=True).values
    assert torch.all((got - expected).abs() <= 1e-9 * scale + 1e-12)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_s_nn_matches_oracle(mixture, prediction):
    adapter = oracle_adapter(mixture, prediction)
    data = oracle_source(mixture, "gmm2")
    # The sl range stops at T = 0.999, where σ/α = 100 is still inside the DDPM table (157).
    for spec, t_min, t_max in (("ddpm", None, None), ("vp", 1e-2, None), ("sl:sigma0=0.1", 0.1, 0.999)):
        process = from_spec(spec)
        settings = MeasureSettings(t_min=t_min, t_max=t_max, samples=64, nodes=9, progress=False)
        direct = measure(mixture, process, data, settings)
        through = measure(adapter, process, data, settings)
        assert float(through["s_nn"]) == pytest.approx(float(direct["s_nn"]), rel=1e-5), spec
        assert float(through["cross_term"]) == pytest.approx(float(direct["cross_term"]), rel=1e-5), spec


def test_integer_timesteps_hit_table(mixture):
    adapter = oracle_adapter(mixture, "epsilon")
    process = adapter.schedule.process
    u = process._u_nodes
    tau = adapter.time_argument(process.t_from_log_sigma_tilde(u), u)
    np.testing.assert_allclose(tau, np.arange(1000), rtol=0, atol=1e-9)


def test_table_matches_diffusers_scheduler(mixture):
    from diffusers import DDPMScheduler

    adapter = oracle_adapter(mixture, "epsilon")
    scheduler = DDPMScheduler(**{k: v for k, v in DDPM_SCHEDULER.items() if not k.startswith("_")})
    alpha_bar = scheduler.alphas_cumprod.double().numpy()
    ours = np.exp(adapter.schedule.process._u_nodes)
    # diffusers builds the table in float32; ours is float64.
    np.testing.assert_allclose(ours, np.sqrt(1.0 / alpha_bar - 1.0), rtol=2e-4)
    assert adapter.sigma_min == pytest.approx(ours[0], rel=1e-12)
    assert adapter.sigma_max == pytest.approx(ours[-1], rel=1e-12)


def test_request_outside_range_rejected(mixture):
    adapter = oracle_adapter(mixture, "epsilon")
    x = torch.zeros((1, 2), dtype=torch.float64)
    with pytest.raises(SigmaRangeError, match="timesteps 0 to 999"):
        adapter.ve_score(x, torch.tensor([adapter.sigma_min * 0.9], dtype=torch.float64))
    with pytest.raises(SigmaRangeError, match="covers only"):
        adapter.check_sigma_range(1e-4, 10.0)


# --- real UNet2DModel ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=1)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, unet):
    return save_pipeline(unet, DDPM_SCHEDULER, tmp_path_factory.mktemp("diffusers") / "pipe")


def probe_input(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((4, 1, 8, 8), generator=generator, dtype=torch.float64)
    return x


def test_epsilon_unet_conversion(pipeline_dir, unet):
    model = load_denoiser(str(pipeline_dir))
    assert model.data_shape == (1, 8, 8)
    assert model.native_process.startswith("ddpm:schedule=linear")
    assert model.pixel_range == (-1.0, 1.0)
    assert model.quantization_step == pytest.approx(2 / 255)
    table = np.exp(model.schedule.process._u_nodes)
    steps = [0, 10, 500, 999]
    sigma = torch.tensor(table[steps], dtype=torch.float64)
    x = probe_input()
    alpha = 1.0 / torch.sqrt(1.0 + sigma**2)
    with torch.no_grad():
        eps = unet((alpha[:, None, None, None] * x).float(), torch.tensor(steps, dtype=torch.float32)).sample.double()
    expected = -eps / sigma[:, None, None, None]
    torch.testing.assert_close(model.ve_score(x, sigma), expected, rtol=1e-5, atol=1e-6)


def test_v_prediction_unet_conversion(tmp_path, unet):
    folder = save_pipeline(unet, dict(DDPM_SCHEDULER, prediction_type="v_prediction"), tmp_path / "v")
    model = load_denoiser(str(folder))
    sigma = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=torch.float64)
    x_tilde = probe_input(2)
    alpha = (1.0 / torch.sqrt(1.0 + sigma**2))[:, None, None, None]
    sigma_m = sigma[:, None, None, None] * alpha
    tau = torch.as_tensor(model.time_argument(*_t_and_u(model, sigma)))
    with torch.no_grad():
        v = unet((alpha * x_tilde).float(), tau.float()).sample.double()
    x0 = alpha * (alpha * x_tilde) - sigma_m * v  # x̂_0 = α x − σ v̂ with x = α x̃
    torch.testing.assert_close(model.denoise(x_tilde, sigma), x0, rtol=1e-5, atol=1e-5)


def _t_and_u(model, sigma):
    u = np.log(sigma.numpy())
    return model.schedule.process.t_from_log_sigma_tilde(u), u


def test_sample_prediction_unet_conversion(tmp_path, unet):
    folder = save_pipeline(unet, dict(DDPM_SCHEDULER, prediction_type="sample"), tmp_path / "x0")
    model = load_denoiser(str(folder))
    sigma = torch.tensor([0.02, 0.3, 2.0, 100.0], dtype=torch.float64)
    x_tilde = probe_input(3)
    alpha = (1.0 / torch.sqrt(1.0 + sigma**2))[:, None, None, None]
    tau = torch.as_tensor(model.time_argument(*_t_and_u(model, sigma)))
    with torch.no_grad():
        x0 = unet((alpha * x_tilde).float(), tau.float()).sample.double()
    torch.testing.assert_close(model.denoise(x_tilde, sigma), x0, rtol=1e-5, atol=1e-5)


def test_fourier_score_sde_ve(tmp_path):
    unet = tiny_unet(seed=4, time_embedding_type="fourier")
    folder = save_pipeline(unet, SDE_VE_SCHEDULER, tmp_path / "ve")
    model = load_denoiser(str(folder))
    assert (model.sigma_min, model.sigma_max) == (0.01, 50.0)
    assert model.native_process.startswith("ve:")
    assert model.pixel_range == (0.0, 1.0)
    sigma = torch.tensor([0.01, 0.5, 7.0, 50.0], dtype=torch.float64)
    x = probe_input(4)
    with torch.no_grad():
        # The network takes σ itself and already divides its output by σ: it is the score.
        score = unet(x.float(), sigma.float()).sample.double()
    torch.testing.assert_close(model.ve_score(x, sigma), score, rtol=1e-5, atol=1e-6)


def test_fourier_with_ddpm_scheduler_rejected(tmp_path):
    folder = save_pipeline(tiny_unet(time_embedding_type="fourier"), DDPM_SCHEDULER, tmp_path / "bad")
    with pytest.raises(CheckpointError, match="fourier"):
        load_denoiser(str(folder))


def test_class_conditional_labels(tmp_path):
    unet = tiny_unet(seed=5, num_class_embeds=3)
    model = load_denoiser(str(save_pipeline(unet, DDPM_SCHEDULER, tmp_path / "cond")))
    assert model.num_classes == 3
    x = probe_input(5)
    sigma = torch.full((4,), 0.5, dtype=torch.float64)
    first = model.ve_score(x, sigma, torch.zeros(4, dtype=torch.int64))
    second = model.ve_score(x, sigma, torch.full((4,), 2, dtype=torch.int64))
    assert not torch.allclose(first, second)
    with pytest.raises(DataError, match="class-conditional"):
        model.ve_score(x, sigma)


def test_learned_variance_channels(tmp_path):
    unet = tiny_unet(seed=6, out_channels=2)
    model = load_denoiser(str(save_pipeline(unet, DDPM_SCHEDULER, tmp_path / "learned")))
    sigma = torch.tensor([0.1, 1.0, 5.0, 20.0], dtype=torch.float64)
    x = probe_input(6)
    tau = torch.as_tensor(model.time_argument(*_t_and_u(model, sigma)))
    alpha = (1.0 / torch.sqrt(1.0 + sigma**2))[:, None, None, None]
    with torch.no_grad():
        eps = unet((alpha * x).float(), tau.float()).sample.double()[:, :1]
    torch.testing.assert_close(model.ve_score(x, sigma), -eps / sigma[:, None, None, None], rtol=1e-5, atol=1e-6)


# --- source forms -------------------------------------------------------------------------

def test_every_source_form_loads_same_model(tmp_path, monkeypatch, unet, pipeline_dir):
    bare = tmp_path / "bare"
    unet.save_pretrained(bare)
    scheduler_file = tmp_path / "scheduler_config.json"
    scheduler_file.write_text(json.dumps(DDPM_SCHEDULER))
    flat = save_flat(unet, DDPM_SCHEDULER, tmp_path / "flat")
    hf_home = tmp_path / "hf_home"
    revision = "0123456789abcdef0123456789abcdef01234567"
    install_in_hub_cache(pipeline_dir, hf_home, "tiny-org/tiny-ddpm", revision)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    from diffusers import DDIMScheduler, DDPMPipeline

    saved_by_diffusers = tmp_path / "saved_by_diffusers"
    scheduler_fields = {k: v for k, v in DDPM_SCHEDULER.items() if not k.startswith("_") and k != "variance_type"}
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler(**scheduler_fields)).save_pretrained(str(saved_by_diffusers))

    models = {
        "pipeline": load_denoiser(str(pipeline_dir)),
        "DDPMPipeline.save_pretrained": load_denoiser(str(saved_by_diffusers)),
        "bare": load_denoiser(str(bare), scheduler_config=str(scheduler_file)),
        "flat": load_denoiser(str(flat)),
        "hub": load_denoiser("tiny-org/tiny-ddpm"),
        "hub at commit": load_denoiser("tiny-org/tiny-ddpm", revision=revision),
    }
    x = probe_input(7)
    sigma = torch.tensor([0.03, 0.3, 3.0, 30.0], dtype=torch.float64)
    reference = models["pipeline"].ve_score(x, sigma)
    for name, model in models.items():
        assert model.fingerprint == models["pipeline"].fingerprint, name
        torch.testing.assert_close(model.ve_score(x, sigma), reference, rtol=0, atol=0, msg=name)
    assert models["hub"].provenance["hub_id"] == "tiny-org/tiny-ddpm"
    assert models["hub"].provenance["commit"] == revision


def test_hub_id_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(CheckpointError, match="hf download some-org/not-here"):
        load_denoiser("some-org/not-here")


def test_bare_folder_needs_scheduler(tmp_path, unet):
    unet.save_pretrained(tmp_path / "bare")
    with pytest.raises(CheckpointError, match="--scheduler-config"):
        load_denoiser(str(tmp_path / "bare"))


def test_conflicting_scheduler_override(tmp_path, pipeline_dir):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(DDPM_SCHEDULER, num_train_timesteps=500)))
    with pytest.raises(CheckpointError, match="num_train_timesteps=500"):
        load_denoiser(str(pipeline_dir), scheduler_config=str(other))


def test_pixel_range_override(pipeline_dir):
    model = load_denoiser(str(pipeline_dir), pixel_range="01")
    assert model.pixel_range == (0.0, 1.0)
    assert model.quantization_step == pytest.approx(1 / 255)


# --- the real command line --------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, unet):
    root = tmp_path_factory.mktemp("cli")
    save_pipeline(unet, DDPM_SCHEDULER, root / "pipe")
    save_pipeline(unet, dict(DDPM_SCHEDULER, prediction_type="flow"), root / "unknown_prediction")
    save_pipeline(tiny_unet(seed=1, num_train_timesteps=500), DDPM_SCHEDULER, root / "steps_mismatch")
    write_image_data(root / "images.npz")
    return root


def test_cli_measure_pipeline(cli_setup, cli_run):
    out = cli_setup / "result.nc"
    result = cli_run(
        "measure", str(cli_setup / "pipe"), "--data", f"npz:path={cli_setup / 'images.npz'}",
        "--samples", "8", "--nodes", "5", "--out", str(out), "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    from entropy_probe.results import read_dataset

    dataset = read_dataset(out)
    assert math.isfinite(float(dataset["s_nn"]))
    assert dataset.attrs["process_name"] == "ddpm"


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("pipe", ["--process", "ve:sigma_min=0.001,sigma_max=10"], "valid only for t from"),
        ("unknown_prediction", [], "unknown prediction_type 'flow'"),
        ("steps_mismatch", [], "num_train_timesteps=500"),
        ("pipe", ["--data", "gaussian:dim=4"], "shape"),
        ("tiny-org/not-cached", [], "hf download tiny-org/not-cached"),
    ],
)
def test_cli_rejects_bad_input(cli_setup, cli_run, tmp_path, case, extra, message):
    source = str(cli_setup / case) if (cli_setup / case).exists() else case
    args = ["measure", source, "--out", str(tmp_path / "r.nc"), "--samples", "4", "--nodes", "3"]
    if "--data" not in extra:
        args += ["--data", f"npz:path={cli_setup / 'images.npz'}"]
    result = cli_run(*args, *extra, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert message in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r.nc").exists()


def test_missing_path_is_not_a_hub_id(tmp_path):
    for source in (str(tmp_path / "nothing"), "./a/b", "a/b/c"):
        with pytest.raises(CheckpointError, match="not found: it is neither an existing path"):
            load_denoiser(source)
