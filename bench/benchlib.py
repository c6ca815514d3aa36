"""Shared parts of the benchmark scripts: models to measure, timing and output.

A benchmark model is named by `--model`:

- a checkpoint path, catalog name or cached hub id (anything `entropy-probe measure` loads),
  measured on its own default data and process;
- `gaussian-mnist`: Gaussian data with the per-pixel mean and standard deviation of the bundled
  MNIST digits (pixels that never vary get the standard deviation of uniform dequantisation
  noise, 1/(255 √12)). Its exact score is known, so S_NN equals S_tot in closed form, and its rate
  is as sharply peaked near t = 0 as an image model's;
- `random-unet`: a diffusers UNet2DModel with random weights read as an ε-prediction network
  (score = −ε̂/σ̃), measured on the held-out MNIST digits. It costs what a small trained
  U-Net costs per evaluation; its numbers mean nothing else.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from entropy_probe import api
from entropy_probe import data as data_module
from entropy_probe.data import DataSource, oracle_source
from entropy_probe.denoiser import Denoiser, expand_like
from entropy_probe.oracles import GaussianOracle
from entropy_probe.processes import Process, from_spec
from entropy_probe.quadrature import integrate_smooth

#: The t grid of the Neural Entropy reference code: linspace(1e-5, 1, 500), trapezoid from the
#: second node on, so 499 nodes on [t_2, 1].
PAPER_NODES = 500
PAPER_T_FIRST = 1e-5


def paper_t_min() -> float:
    return float(np.linspace(PAPER_T_FIRST, 1.0, PAPER_NODES)[1])


@dataclass
class BenchModel:
    name: str
    model: Denoiser
    data: DataSource
    process: Process
    #: Closed-form S_NN on [t_min, t_max], when the model is a Gaussian oracle.
    exact: Optional[Callable[[float, float], float]] = None
    #: Closed-form rate (nats per unit time) at times t, when known.
    exact_rate: Optional[Callable[[np.ndarray], np.ndarray]] = None


class RandomUNet(Denoiser):
    """A randomly initialised diffusers UNet2DModel read as an ε-prediction network on 1×28×28."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 32), seed: int = 0) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.network = UNet2DModel(
                sample_size=28, in_channels=1, out_channels=1, block_out_channels=channels,
                down_block_types=("DownBlock2D",) * len(channels), up_block_types=("UpBlock2D",) * len(channels),
                layers_per_block=1, norm_num_groups=8,
            ).eval()
        self.data_shape = (1, 28, 28)
        self.pixel_range = (0.0, 1.0)
        self.quantization_step = 1 / 255
        self.native_process = "vp"
        self.fingerprint = f"random-unet-{'-'.join(map(str, channels))}-seed{seed}"
        self.provenance = {"kind": "random-unet", "channels": list(channels), "seed": seed}

    def to(self, device):
        super().to(device)
        self.network.to(self.device)
        return self

    def ve_score(self, x_tilde, sigma_tilde, labels=None):
        self.evaluations += x_tilde.shape[0]
        sigma = expand_like(sigma_tilde, x_tilde)
        inputs = (x_tilde / torch.sqrt(1.0 + sigma**2)).to(torch.float32)
        noise_level = (0.25 * torch.log(sigma_tilde)).to(torch.float32)
        epsilon = self.network(inputs, noise_level).sample.to(torch.float64)
        return -epsilon / sigma


def mnist_gaussian() -> GaussianOracle:
    heldout = data_module.from_spec("mnist:split=heldout")
    flat = heldout.data.reshape(len(heldout), -1).astype(np.float64)
    std = np.maximum(flat.std(axis=0), 1.0 / (255.0 * math.sqrt(12.0)))
    oracle = GaussianOracle(flat.mean(axis=0), std, data_shape=(1, 28, 28))
    oracle.pixel_range = (0.0, 1.0)
    return oracle


def load(name: str, process_spec: Optional[str] = None, data_spec: Optional[str] = None) -> BenchModel:
    """Resolve `--model` (see the module docstring) into a model, its data and a process."""
    if name == "gaussian-mnist":
        oracle = mnist_gaussian()
        process = from_spec(process_spec or "vp")
        mean, std = oracle.mu.numpy(), oracle.std.numpy()

        def rate(t):
            t = np.atleast_1d(np.asarray(t, dtype=np.float64))
            alpha = process.alpha(t)[:, None]
            v = alpha**2 * std**2 + process.sigma2(t)[:, None]
            k = process.equilibrium_score_coefficient(t)[:, None]
            return 0.5 * process.g2(t) * (1 / v + 2 * k + k * k * (v + (alpha * mean) ** 2)).sum(axis=1)

        def exact(t_min, t_max):
            return integrate_smooth(process, t_min, t_max, lambda t: rate(t) / process.dlog_sigma_tilde_dt(t), panels=1024)

        return BenchModel(name, oracle, oracle_source(oracle, "gaussian-mnist"), process, exact, rate)
    if name == "random-unet":
        model = RandomUNet()
        data = data_module.from_spec(data_spec or "mnist:split=heldout")
        return BenchModel(name, model, data, from_spec(process_spec or "vp"))
    model = api.load_model(name)
    return BenchModel(name, model, api.resolve_data(model, data_spec), api.resolve_process(model, process_spec))


def machine() -> str:
    """Describe in one line the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return (
        f"{cpu}, {cores} logical cores, load average {load:.2f} at start; torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; {device}; Python {platform.python_version()}"
    )


def timed(function: Callable[[], object]) -> tuple[float, object]:
    """Wall-clock seconds of `function()` and its value."""
    seconds, _, value = clocked(function)
    return seconds, value


def clocked(function: Callable[[], object]) -> tuple[float, float, object]:
    """Wall-clock and CPU seconds (all threads of this process) of `function()`, and its value.

    On a machine shared with other work the CPU time is the steadier measure of the work done.
    The wall-clock time is what a user waits for.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def apply_threads(count: Optional[int]) -> None:
    if count is not None:
        torch.set_num_threads(count)


def summary(values: list[float]) -> str:
    """Median and range of repeated measurements."""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.median(values):.4g} (range {min(values):.4g} to {max(values):.4g}, {len(values)} repeats)"


def header(title: str, argv: Optional[list[str]] = None) -> None:
    print(f"# {title}")
    print(f"command: python {' '.join(argv or sys.argv)}")
    print(f"machine: {machine()}")
    sys.stdout.flush()


