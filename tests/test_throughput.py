"""Throughput options: automatic batch size, layouts, CPU fallbacks and background preparation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from entropy_probe.data import ArraySource, oracle_source
from entropy_probe.denoiser import Denoiser, expand_like
from entropy_probe.evaluation import BATCH_QUANTUM, module_output_bytes, prefetched
from entropy_probe.oracles import paper_mixture
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.processes import from_spec


class TinyNoisePredictor(Denoiser):
    """A small random convolutional ε-prediction network on 1×8×8 images (float32 weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.data_shape = (1, 8, 8)
        generator = torch.Generator().manual_seed(0)
        self.network = torch.nn.Sequential(
            torch.nn.Conv2d(2, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 1, 3, padding=1)
        )
        with torch.no_grad():
            for parameter in self.network.parameters():
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))

    def to(self, device):
        super().to(device)
        self.network.to(device)
        return self

    def ve_score(self, x_tilde, sigma_tilde, labels=None):
        self.evaluations += x_tilde.shape[0]
        sigma = expand_like(sigma_tilde, x_tilde)
        scaled = x_tilde / torch.sqrt(1.0 + sigma**2)
        noise_level = torch.log(sigma).expand_as(x_tilde)
        inputs = torch.cat([scaled, noise_level], dim=1).to(torch.float32)
        epsilon = self.network(inputs).to(torch.float64)
        return -epsilon / sigma


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return ArraySource(rng.integers(0, 256, size=(200, 1, 8, 8)) / 255.0, spec="random-images", pixel_range=(0.0, 1.0), quantization_step=1 / 255)


def _s_nn(model, data, **options):
    settings = MeasureSettings(samples=32, nodes=9, seed=3, progress=False, **options)
    return measure(model, from_spec("vp"), data, settings)


def test_cuda_options_fall_back_on_cpu(images):
    plain = _s_nn(TinyNoisePredictor(), images)
    fallback = _s_nn(TinyNoisePredictor(), images, precision="bf16", compile=True, cuda_graphs=True)
    assert float(fallback["s_nn"]) == float(plain["s_nn"])
    assert fallback.attrs["precision"] == "fp32"
    notes = " ".join(fallback.attrs["throughput_notes"])
    for option in ("--precision bf16", "--compile", "--cuda-graphs"):
        assert option in notes


def test_channels_last_gives_same_numbers(images):
    plain = _s_nn(TinyNoisePredictor(), images)
    model = TinyNoisePredictor()
    channels_last = _s_nn(model, images, channels_last=True)
    assert model.network[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert float(channels_last["s_nn"]) == pytest.approx(float(plain["s_nn"]), rel=1e-5)


def test_auto_batch_size_on_cpu(images):
    fixed = _s_nn(TinyNoisePredictor(), images, batch_size=256)
    model = TinyNoisePredictor()
    auto = _s_nn(model, images, batch_size="auto")
    batch = auto.attrs["batch_size"]
    assert batch % BATCH_QUANTUM == 0
    assert batch >= BATCH_QUANTUM
    assert "module output" in auto.attrs["batch_size_choice"]["method"]
    assert float(auto["s_nn"]) == pytest.approx(float(fixed["s_nn"]), rel=1e-12)
    # The probe batches are not counted as evaluations of the measurement.
    assert model.evaluations == 9 * 32
    assert auto.attrs["network_evaluations"] == 9 * 32


def test_auto_batch_size_follows_memory_budget(images):
    small = _s_nn(TinyNoisePredictor(), images, batch_size="auto", memory_budget_gb=1e-4)
    large = _s_nn(TinyNoisePredictor(), images, batch_size="auto", memory_budget_gb=0.5)
    assert small.attrs["batch_size"] == BATCH_QUANTUM
    assert large.attrs["batch_size"] > small.attrs["batch_size"]
    per_item = large.attrs["batch_size_choice"]["bytes_per_item"]
    assert large.attrs["batch_size"] * per_item <= 0.5 * 2**30


def test_auto_batch_size_without_module():
    oracle = paper_mixture(2, seed=0)
    result = measure(oracle, from_spec("vp"), oracle_source(oracle, "m"), MeasureSettings(samples=8, nodes=5, batch_size="auto", progress=False))
    assert "no torch module" in result.attrs["batch_size_choice"]["method"]


def test_options_without_module_are_noted():
    oracle = paper_mixture(2, seed=0)
    notes = oracle.prepare(channels_last=True, compile=True)
    assert len(notes) == 1
    assert "no torch module" in notes[0]
    assert oracle.prepare() == []


def test_module_output_bytes_counts_activations():
    module = torch.nn.Sequential(torch.nn.Linear(4, 10), torch.nn.ReLU())
    size = module_output_bytes(module, lambda: module(torch.zeros(3, 4)))
    # Linear and ReLU outputs (3 × 10 float32 each) plus the Sequential's own output.
    assert size == 3 * 3 * 10 * 4


def test_prefetch_keeps_order_and_errors():
    def prepare(item):
        if item == 3:
            raise ValueError("bad item 3")
        return item * item

    seen = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in prefetched(range(6), prepare):
            seen.append(value)
    assert seen == [0, 1, 4]
    assert list(prefetched(range(5), lambda i: i + 1)) == [1, 2, 3, 4, 5]
    assert list(prefetched([], lambda i: i)) == []


def test_network_evaluations_count_pairs_and_pilot(images):
    result = _s_nn(TinyNoisePredictor(), images, antithetic=True)
    assert result.attrs["network_evaluations"] == 2 * 9 * 32
    assert int(result.attrs["samples_total"]) == 9 * 32
    pilot = measure(
        TinyNoisePredictor(), from_spec("vp"), images,
        MeasureSettings(estimator="importance", proposal="pilot", samples=4, strata=8, pilot_samples=2, progress=False),
    )
    assert pilot.attrs["pilot_evaluations"] == 33 * 2
    assert pilot.attrs["network_evaluations"] == 33 * 2 + 8 * 4
    assert math.isfinite(float(pilot["s_nn"]))


def test_diffusers_network_takes_options(tmp_path):
    from diffusers_fixtures import DDPM_SCHEDULER, save_pipeline, tiny_unet, write_image_data

    from entropy_probe import api, data

    folder = save_pipeline(tiny_unet(seed=2), DDPM_SCHEDULER, tmp_path / "pipe")
    images = data.from_spec(f"npz:path={write_image_data(tmp_path / 'images.npz')}")
    settings = dict(estimator="importance", samples=8, strata=8, seed=1, progress=False)
    model = api.load_model(str(folder))
    plain = measure(model, api.resolve_process(model, None), images, MeasureSettings(**settings))
    model = api.load_model(str(folder))
    fast = measure(model, api.resolve_process(model, None), images, MeasureSettings(channels_last=True, batch_size="auto", **settings))
    assert model.network.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert "module output" in fast.attrs["batch_size_choice"]["method"]
    assert float(fast["s_nn"]) == pytest.approx(float(plain["s_nn"]), rel=1e-5)
