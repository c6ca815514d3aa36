"""Networks that output the excess score e_θ(x, t) of an entropy-matching diffusion model.

A network is a core (the mixture MLP below, or a diffusers `UNet2DModel`) inside
`ExcessScoreNetwork`, which applies the preconditioning recorded in the checkpoint:

- time input: the core sees the native time t of the training process times `time_scale`
  (1 for the MLP's Fourier features of t ∈ [0, 1]; 1000 for the U-Net's sinusoidal embedding,
  which is designed for DDPM's integer steps 0..999). The native time identifies the noise level
  uniquely for every process, including sl, where σ(t) flattens out near T.
- input scaling: "rms" divides x_t by sqrt(α² m + σ²), the RMS of x_t per dimension when the
  data have mean square m per dimension, so the core always sees inputs of order one; "none"
  feeds x_t unchanged.
- output scaling: "inverse_sigma" returns core/σ. For image data e_θ ≈ −ε̂/σ − k x grows like
  1/σ at small σ, so the core then only predicts a quantity of order one. "none" returns the
  core's output as e_θ, as the Neural Entropy code does for its mixture MLP, whose e_θ stays
  bounded because mixture data have a smooth score.

diffusers is imported only when a U-Net is built, because the import takes seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, SpecError
from ..processes import Process

ARCHITECTURES = ("mlp", "unet")

#: Defaults of the mixture MLP of the Neural Entropy paper: 256 random Fourier frequencies for x
#: and for t, hidden widths 512 and 256, LayerNorm and sigmoid activations. The paper states a
#: Fourier scale of 10, but its code (Flax) multiplies 10 with weights drawn by
#: `nn.initializers.normal()`, whose standard deviation is 0.01, so the frequencies have standard
#: deviation 0.1. With a standard deviation of 10, a 10-epoch run on a 2-D mixture learned
#: little more than the mean of e_θ, because the features of x oscillate too fast.
MLP_DEFAULTS: dict[str, Any] = {"widths": (512, 256), "fourier_features": 256, "fourier_scale": 0.1, "time_fourier_scale": 0.1}

#: U-Net sizes. "mnist": about 1.0 M parameters for 1 × 28 × 28 images, no attention.
#: "cifar": the shape of the Neural Entropy code's CIFAR-10 network, that is 256 channels at three
#: resolutions, two residual blocks per level, dropout 0.2 and single-head self-attention at
#: 16 × 16, at 8 × 8 and in the middle block. --class-conditional adds the class embedding.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "mnist": {"channels": (32, 64, 64), "layers_per_block": 1, "attention": (), "mid_attention": False, "dropout": 0.0},
    "cifar": {"channels": (256, 256, 256), "layers_per_block": 2, "attention": (16, 8), "mid_attention": True, "dropout": 0.2},
}

#: Time input, input scaling and output scaling used when the user chooses none.
DEFAULT_PRECONDITIONING = {
    "mlp": {"time_scale": 1.0, "input_scaling": "none", "output_scaling": "none"},
    "unet": {"time_scale": 1000.0, "input_scaling": "rms", "output_scaling": "inverse_sigma"},
}
INPUT_SCALINGS = ("none", "rms")
OUTPUT_SCALINGS = ("none", "inverse_sigma")


class FourierMLP(nn.Module):
    """The mixture network of the Neural Entropy paper (Premkumar, NeurIPS 2025).

    x and t each pass through fixed random Fourier features [sin 2πBv, cos 2πBv] with
    B ~ N(0, scale²), then a dense layer and a sigmoid. Each hidden layer adds a dense map of
    the time embedding to a dense map of the state, then applies LayerNorm and a sigmoid. The
    last layer is linear with `dim` outputs. Inputs of any item shape are flattened.
    """

    def __init__(
        self,
        dim: int,
        widths: Sequence[int] = (512, 256),
        fourier_features: int = 256,
        fourier_scale: float = 0.1,
        time_fourier_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.dim = int(dim)
        features = 2 * int(fourier_features)
        # Fixed frequencies: buffers, so they are saved with the weights but never trained.
        self.register_buffer("x_frequencies", torch.randn(fourier_features, self.dim) * fourier_scale)
        self.register_buffer("t_frequencies", torch.randn(fourier_features, 1) * time_fourier_scale)
        self.t_embed = nn.Linear(features, features)
        self.x_embed = nn.Linear(features, features)
        self.state_layers = nn.ModuleList()
        self.time_layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        width_in = features
        for width in widths:
            self.state_layers.append(nn.Linear(width_in, width))
            self.time_layers.append(nn.Linear(features, width))
            self.norms.append(nn.LayerNorm(width))
            width_in = width
        self.out = nn.Linear(width_in, self.dim)

    @staticmethod
    def _fourier(values: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
        projected = 2.0 * math.pi * values @ frequencies.T
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], -1)
        embed = torch.sigmoid(self.t_embed(self._fourier(t.reshape(-1, 1).to(flat.dtype), self.t_frequencies)))
        h = torch.sigmoid(self.x_embed(self._fourier(flat, self.x_frequencies)))
        for state_layer, time_layer, norm in zip(self.state_layers, self.time_layers, self.norms):
            h = torch.sigmoid(norm(state_layer(h) + time_layer(embed)))
        return self.out(h).reshape(shape)


# --- constructor arguments ---------------------------------------------------------------------

def mlp_arguments(data_shape: Sequence[int], options: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of `FourierMLP` for data of `data_shape`, from user options."""
    arguments = {"dim": int(np.prod(data_shape)), **MLP_DEFAULTS}
    for key in MLP_DEFAULTS:
        if options.get(key) is not None:
            arguments[key] = options[key]
    arguments["widths"] = [int(w) for w in arguments["widths"]]
    if not arguments["widths"] or min(arguments["widths"]) < 1:
        raise SpecError(f"invalid --widths {arguments['widths']}; give one or more positive layer widths, e.g. 512,256")
    if int(arguments["fourier_features"]) < 1:
        raise SpecError(f"invalid --fourier-features {arguments['fourier_features']}; it must be >= 1")
    return arguments


def _norm_groups(channels: Sequence[int]) -> int:
    """Largest group count ≤ 32 that divides every channel count and leaves ≥ 4 channels per group."""
    for groups in (32, 16, 8, 4, 2, 1):
        if all(c % groups == 0 for c in channels) and channels[0] // groups >= 4:
            return groups
    return 1


def unet_arguments(data_shape: Sequence[int], options: dict[str, Any], num_classes: Optional[int]) -> dict[str, Any]:
    """`UNet2DModel` constructor arguments for images of `data_shape` (C, H, W), from user options.

    `options` may hold preset, channels, layers_per_block, attention (resolutions in pixels),
    mid_attention, dropout, norm_groups and class_conditional; unset values come from the preset.
    """
    if len(data_shape) != 3:
        raise SpecError(f"the U-Net needs image data of shape (channels, height, width), not {tuple(data_shape)}; use --model mlp")
    preset_name = options.get("preset") or "mnist"
    if preset_name not in UNET_PRESETS:
        raise SpecError(f"unknown --preset {preset_name!r}; choose one of {', '.join(UNET_PRESETS)}")
    settings = dict(UNET_PRESETS[preset_name])
    for key in settings:
        if options.get(key) is not None:
            settings[key] = options[key]
    channels = [int(c) for c in settings["channels"]]
    if not channels or min(channels) < 1:
        raise SpecError(f"invalid --channels {channels}; give positive channel counts per level, e.g. 32,64,64")
    layers = int(settings["layers_per_block"])
    if layers < 1:
        raise SpecError(f"invalid --layers-per-block {layers}; it must be >= 1")
    dropout = float(settings["dropout"])
    if not 0.0 <= dropout < 1.0:
        raise SpecError(f"invalid --dropout {dropout}; it must be in [0, 1)")

    in_channels, height, width = (int(v) for v in data_shape)
    factor = 2 ** (len(channels) - 1)
    if height % factor or width % factor:
        raise SpecError(
            f"a U-Net with {len(channels)} levels halves the image {len(channels) - 1} times, so "
            f"height and width must be multiples of {factor}, but the images are {height} × {width}; "
            f"give fewer --channels"
        )
    resolutions = [height // 2**level for level in range(len(channels))]
    attention = sorted({int(r) for r in settings["attention"]}, reverse=True)
    unknown = [r for r in attention if r not in resolutions]
    if unknown and options.get("attention") is None:
        usable = ",".join(str(r) for r in attention if r in resolutions) or "none"
        raise SpecError(
            f"the --preset {preset_name} U-Net puts self-attention at {sorted(unknown, reverse=True)} pixels, but on "
            f"{height} × {width} images its resolutions are {resolutions}; give --attention with some of these, "
            f"for example --attention {usable}"
        )
    if unknown:
        raise SpecError(
            f"invalid --attention {unknown}: attention resolutions must be among the U-Net's "
            f"resolutions {resolutions} (in pixels) for {height} × {width} images; give some of these, or none"
        )
    down = ["AttnDownBlock2D" if r in attention else "DownBlock2D" for r in resolutions]
    up = ["AttnUpBlock2D" if r in attention else "UpBlock2D" for r in reversed(resolutions)]
    groups = options.get("norm_groups") or _norm_groups(channels)
    if any(c % groups for c in channels):
        raise SpecError(f"invalid --norm-groups {groups}: it must divide every channel count {channels}")

    conditional = bool(options.get("class_conditional"))
    if conditional and not num_classes:
        raise SpecError("--class-conditional needs labelled data (mnist, digits, mnist-idx or cifar10)")
    return {
        "sample_size": [height, width],
        "in_channels": in_channels,
        "out_channels": in_channels,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": up,
        "add_attention": bool(settings["mid_attention"]),
        # None means one attention head spanning all channels, as in the paper's CIFAR-10 net.
        "attention_head_dim": None,
        "dropout": dropout,
        "norm_num_groups": int(groups),
        "time_embedding_type": "positional",
        "num_class_embeds": int(num_classes) if conditional else None,
    }


def build_core(architecture: str, arguments: dict[str, Any], seed: Optional[int] = None) -> nn.Module:
    """Construct the core network; with `seed`, its initial weights depend on the seed alone.

    PyTorch layers draw their initial weights from the global generator, so construction runs
    inside `torch.random.fork_rng`, which restores the caller's generator state afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.random.default_generator.manual_seed(int(seed))
        if architecture == "mlp":
            return FourierMLP(**arguments)
        if architecture == "unet":
            from diffusers import UNet2DModel

            # from_config accepts both our constructor arguments and a stored UNet2DModel config.
            return UNet2DModel.from_config(dict(arguments))
    raise SpecError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- preconditioning -------------------------------------------------------------------------

@dataclass(frozen=True)
class Preconditioning:
    """Input, time and output transformations around the core (see the module docstring)."""

    time_scale: float
    input_scaling: str
    output_scaling: str
    #: Mean square per dimension of the training data, m in the "rms" input scaling.
    data_mean_square: float = 1.0

    def __post_init__(self) -> None:
        if self.input_scaling not in INPUT_SCALINGS:
            raise SpecError(f"invalid input scaling {self.input_scaling!r}; choose one of {', '.join(INPUT_SCALINGS)}")
        if self.output_scaling not in OUTPUT_SCALINGS:
            raise SpecError(f"invalid output scaling {self.output_scaling!r}; choose one of {', '.join(OUTPUT_SCALINGS)}")

    def describe(self) -> dict[str, Any]:
        """Return the config.json entries `time_input`, `input_scaling` and `output_scaling`."""
        return {
            "time_input": {
                "variable": "native time t of the training process",
                "scale": self.time_scale,
                "embedding": "random Fourier features" if self.time_scale == 1.0 else "sinusoidal positional (diffusers)",
            },
            "input_scaling": {
                "kind": self.input_scaling,
                "data_mean_square": self.data_mean_square,
                "formula": "x_t / sqrt(alpha^2 m + sigma^2)" if self.input_scaling == "rms" else "x_t",
            },
            "output_scaling": self.output_scaling,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], directory: str) -> "Preconditioning":
        try:
            return cls(
                time_scale=float(config["time_input"]["scale"]),
                input_scaling=str(config["input_scaling"]["kind"]),
                output_scaling=str(config["output_scaling"]),
                data_mean_square=float(config["input_scaling"]["data_mean_square"]),
            )
        except (KeyError, TypeError, ValueError, SpecError) as error:
            raise CheckpointError(f"{directory!r}: config.json has no valid time_input/input_scaling/output_scaling ({error})") from None


class ExcessScoreNetwork(nn.Module):
    """e_θ(x_t, t) = preconditioned core output, for one forward process."""

    def __init__(self, core: nn.Module, architecture: str, process: Process, preconditioning: Preconditioning) -> None:
        super().__init__()
        self.core = core
        self.architecture = architecture
        self.process = process
        self.preconditioning = preconditioning

    @property
    def dtype(self) -> torch.dtype:
        return next(self.core.parameters()).dtype

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """e_θ at x_t (B, *shape) and native times t (B,), in the core's dtype.

        The coefficients α(t), σ(t) are computed in float64 and x_t is scaled before the cast to
        the core's dtype, so a float64 caller loses no precision before the network.
        """
        t64 = t.detach().to("cpu", torch.float64).numpy()
        device = x_t.device
        pre = self.preconditioning
        shape = (-1,) + (1,) * (x_t.dim() - 1)
        if pre.input_scaling == "rms":
            alpha = self.process.alpha(t64)
            c_in = 1.0 / np.sqrt(alpha * alpha * pre.data_mean_square + self.process.sigma2(t64))
            x_in = x_t * torch.as_tensor(c_in, dtype=x_t.dtype, device=device).reshape(shape)
        else:
            x_in = x_t
        x_in = x_in.to(self.dtype)
        time = torch.as_tensor(pre.time_scale * t64, dtype=self.dtype, device=device)
        out = self._core_forward(x_in, time, labels)
        if pre.output_scaling == "inverse_sigma":
            sigma = torch.as_tensor(self.process.sigma(t64), dtype=out.dtype, device=device).reshape(shape)
            out = out / sigma
        return out

    def _core_forward(self, x: torch.Tensor, time: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        if self.architecture == "mlp":
            return self.core(x, time)
        conditional = self.core.config.num_class_embeds is not None
        return self.core(x, time, class_labels=labels if conditional else None).sample


def network_config(architecture: str, core: nn.Module, arguments: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments as stored in config.json: for a U-Net, its full UNet2DModel config."""
    if architecture == "unet":
        return {key: value for key, value in dict(core.config).items() if not key.startswith("_")}
    return dict(arguments)


def preconditioning_for(architecture: str, options: dict[str, Any], data_mean_square: float) -> Preconditioning:
    defaults = DEFAULT_PRECONDITIONING[architecture]
    return Preconditioning(
        time_scale=defaults["time_scale"],
        input_scaling=options.get("input_scaling") or defaults["input_scaling"],
        output_scaling=options.get("output_scaling") or defaults["output_scaling"],
        data_mean_square=float(data_mean_square),
    )

