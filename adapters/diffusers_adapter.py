"""Adapter for diffusers image models: a `UNet2DModel` plus the scheduler config that trained it.

The scheduler config fixes the training process, the network's time input and the meaning of
its output:

- discrete DDPM-style schedulers (DDPMScheduler, DDIMScheduler and the other schedulers built
  on the same β table): the `ddpm` process of this package, whose step i sits at t = (i + 1)/N.
  A noise level σ̃ maps to the fractional timestep τ = N t(σ̃) − 1, which interpolates log σ̃
  linearly over the float64 table σ̃_i = sqrt((1 − ᾱ_i)/ᾱ_i). The network receives
  x_m = α_m x̃ with α_m = 1/sqrt(1 + σ̃²) and returns ε (epsilon), v = α_m ε − σ_m x_0
  (v_prediction) or x_0 (sample).
- ScoreSdeVeScheduler (score_sde's NCSN++ ports): the `ve` process; the network takes the
  noise level σ itself as its timestep and returns the score ∇ log p_σ.

Every conversion to the VE score ∇̃ log p̃(x̃) is done in float64 after the forward pass:
ε-prediction gives −ε̂/σ̃ directly, without the cancellation of (x̂_0 − x̃)/σ̃².

A folder may also hold `entropy_probe.json` (written by `entropy-probe export`), which replaces
the scheduler by a process of this package and declares what the network predicts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..checkpoint import sha256_file
from ..denoiser import Denoiser, expand_like
from ..errors import CheckpointError, DataError, SigmaRangeError, SpecError
from ..processes import DDPM, Process, from_spec
from . import Adapter, register

logger = logging.getLogger(__name__)

#: Name of the extra metadata file that `entropy-probe export` writes next to model_index.json.
METADATA_NAME = "entropy_probe.json"
METADATA_FORMAT = "entropy-probe-diffusers"
METADATA_VERSION = 1

#: Native outputs a scheduler config may declare, and the extra ones of entropy_probe.json.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
METADATA_PREDICTIONS = PREDICTION_TYPES + ("score", "excess_score")
#: Time inputs of the network: the fractional DDPM timestep, or functions of the process time.
TIME_INPUTS = ("timestep", "t", "sigma_tilde", "log_sigma_tilde")
#: Scalings of entropy_probe.json: the input x_m / sqrt(α² m + σ²) ("rms") and the output / σ.
INPUT_SCALINGS = ("none", "rms")
OUTPUT_SCALINGS = ("none", "inverse_sigma")

#: Schedulers that share the discrete β table of DDPM (num_train_timesteps, beta_start,
#: beta_end, beta_schedule, prediction_type), as defined in diffusers 0.30 to 0.42.
DISCRETE_SCHEDULERS = frozenset(
    {
        "DDPMScheduler",
        "DDIMScheduler",
        "DDIMInverseScheduler",
        "DDPMParallelScheduler",
        "DDIMParallelScheduler",
        "PNDMScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverMultistepInverseScheduler",
        "DPMSolverSinglestepScheduler",
        "DPMSolverSDEScheduler",
        "DEISMultistepScheduler",
        "UniPCMultistepScheduler",
        "SASolverScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "LMSDiscreteScheduler",
        "KDPM2DiscreteScheduler",
        "KDPM2AncestralDiscreteScheduler",
        "LCMScheduler",
        "TCDScheduler",
    }
)
VE_SCHEDULERS = frozenset({"ScoreSdeVeScheduler"})

#: 8-bit images in [−1, 1], the convention of diffusers' DDPM pipelines (they map the output
#: back with image / 2 + 0.5).
DEFAULT_PIXEL_RANGE = (-1.0, 1.0)
#: ScoreSdeVePipeline clamps its samples to [0, 1] (diffusers 0.42), so its models use [0, 1].
SCORE_SDE_VE_PIXEL_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class TrainingSchedule:
    """How a network was trained: its process, its time input and what it predicts.

    `process` maps σ̃ to the network's own time t and coefficients (α_m, σ_m). `time_input`
    names the network's timestep argument, and `prediction` names its output.
    The valid noise levels are [sigma_min, sigma_max].
    """

    process: Process
    prediction: str
    time_input: str
    sigma_min: float
    sigma_max: float
    #: Number of training steps N of a discrete schedule (τ = N t − 1), else None.
    steps: Optional[int] = None
    #: Plain description of the valid range for error messages, e.g. "timesteps 0 to 999".
    range_note: str = ""
    #: The network receives time_scale times the time input.
    time_scale: float = 1.0
    #: "rms": the network receives x_m / sqrt(α_m² m + σ_m²) with m = data_mean_square; "none": x_m.
    input_scaling: str = "none"
    data_mean_square: float = 1.0
    #: "inverse_sigma": the prediction is the network output divided by σ_m; "none": the output.
    output_scaling: str = "none"
    #: The scheduler or metadata fields used, for provenance.
    details: dict[str, Any] = field(default_factory=dict)


# --- schedules from configs ------------------------------------------------------------------

def discrete_schedule(scheduler: dict[str, Any], source: str) -> TrainingSchedule:
    """Build the TrainingSchedule of a DDPM-style scheduler config (fields as diffusers writes them)."""
    steps = scheduler.get("num_train_timesteps", scheduler.get("timesteps", 1000))
    beta_start = scheduler.get("beta_start", 1e-4)
    beta_end = scheduler.get("beta_end", 0.02)
    beta_schedule = scheduler.get("beta_schedule", "linear")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise CheckpointError(
            f"{source}: unknown prediction_type {prediction!r}; entropy-probe reads "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    _check_discrete_fields(scheduler, steps, beta_start, beta_end, source)
    spec = f"ddpm:schedule={beta_schedule},beta_start={float(beta_start)!r},beta_end={float(beta_end)!r},steps={steps}"
    try:
        process = from_spec(spec)
    except SpecError as error:
        raise CheckpointError(f"{source}: {error}") from None
    assert isinstance(process, DDPM)
    return TrainingSchedule(
        process=process,
        prediction=prediction,
        time_input="timestep",
        sigma_min=float(process.sigma_tilde(process.t_lower)),
        sigma_max=float(process.sigma_tilde(process.t_upper)),
        steps=steps,
        range_note=f"timesteps 0 to {steps - 1} of its {beta_schedule} β schedule",
        details={
            "scheduler": scheduler.get("_class_name"),
            "beta_schedule": beta_schedule,
            "beta_start": float(beta_start),
            "beta_end": float(beta_end),
            "num_train_timesteps": steps,
            "prediction_type": prediction,
        },
    )


def _check_discrete_fields(scheduler: dict[str, Any], steps: Any, beta_start: Any, beta_end: Any, source: str) -> None:
    """Reject scheduler fields this adapter cannot turn into a β table of the `ddpm` process."""
    if scheduler.get("trained_betas") is not None:
        raise CheckpointError(
            f"{source}: the scheduler lists trained_betas, an explicit β table, which this version "
            f"does not read; wrap the model with --adapter module:function (see docs/adapters.md)"
        )
    if scheduler.get("rescale_betas_zero_snr"):
        raise CheckpointError(
            f"{source}: rescale_betas_zero_snr=true makes the last step pure noise (σ/α infinite), "
            f"which this version does not support"
        )
    if scheduler.get("timestep_type", "discrete") != "discrete":
        raise CheckpointError(
            f"{source}: timestep_type={scheduler['timestep_type']!r} feeds the network log σ instead "
            f"of a timestep index; only timestep_type 'discrete' is supported"
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise CheckpointError(f"{source}: num_train_timesteps must be an integer >= 2, not {steps!r}")
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (0 < value < 1):
            raise CheckpointError(f"{source}: {name} must be a number in (0, 1), not {value!r}")


def ve_schedule(scheduler: dict[str, Any], source: str) -> TrainingSchedule:
    """Build the TrainingSchedule of a ScoreSdeVeScheduler config: σ in, score out."""
    sigma_min = scheduler.get("sigma_min", 0.01)
    sigma_max = scheduler.get("sigma_max", 1348.0)
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise CheckpointError(f"{source}: {name} must be a positive number, not {value!r}")
    try:
        process = from_spec(f"ve:sigma_min={float(sigma_min)!r},sigma_max={float(sigma_max)!r}")
    except SpecError as error:
        raise CheckpointError(f"{source}: {error}") from None
    return TrainingSchedule(
        process=process,
        prediction="score",
        time_input="sigma_tilde",
        sigma_min=float(sigma_min),
        sigma_max=float(sigma_max),
        range_note="the σ range of its ScoreSdeVeScheduler",
        details={"scheduler": "ScoreSdeVeScheduler", "sigma_min": float(sigma_min), "sigma_max": float(sigma_max)},
    )


def schedule_from_scheduler(scheduler: dict[str, Any], source: str) -> TrainingSchedule:
    """Build the TrainingSchedule of a diffusers scheduler config dict."""
    name = scheduler.get("_class_name")
    if name in VE_SCHEDULERS:
        return ve_schedule(scheduler, source)
    if name in DISCRETE_SCHEDULERS or (name is None and "beta_schedule" in scheduler):
        return discrete_schedule(scheduler, source)
    raise CheckpointError(
        f"{source}: scheduler {name!r} is not supported; entropy-probe reads DDPM-style schedulers "
        f"(DDPMScheduler, DDIMScheduler, ...) and ScoreSdeVeScheduler, or use --adapter module:function"
    )


def schedule_from_metadata(metadata: dict[str, Any], source: str) -> TrainingSchedule:
    """Build the TrainingSchedule of an entropy_probe.json written by `entropy-probe export`."""
    if metadata.get("format") != METADATA_FORMAT:
        raise CheckpointError(f"{source}: format must be {METADATA_FORMAT!r}, not {metadata.get('format')!r}")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > METADATA_VERSION:
        raise CheckpointError(
            f"{source}: format_version {version!r} is not one this entropy-probe reads "
            f"(up to {METADATA_VERSION}); upgrade entropy-probe"
        )
    prediction = metadata.get("prediction")
    if prediction not in METADATA_PREDICTIONS:
        raise CheckpointError(
            f"{source}: unknown prediction {prediction!r}; expected one of {', '.join(METADATA_PREDICTIONS)}"
        )
    time_input = metadata.get("time_input")
    if time_input not in TIME_INPUTS or time_input == "timestep":
        raise CheckpointError(
            f"{source}: unknown time_input {time_input!r}; expected t, sigma_tilde or log_sigma_tilde"
        )
    scalings = {
        "time_scale": _positive_number(metadata.get("time_scale", 1.0), "time_scale", source),
        "input_scaling": _choice(metadata.get("input_scaling", "none"), "input_scaling", INPUT_SCALINGS, source),
        "data_mean_square": _positive_number(metadata.get("data_mean_square", 1.0), "data_mean_square", source),
        "output_scaling": _choice(metadata.get("output_scaling", "none"), "output_scaling", OUTPUT_SCALINGS, source),
    }
    try:
        process = from_spec(str(metadata.get("process", "")))
    except SpecError as error:
        raise CheckpointError(f"{source}: {error}") from None
    sigma_range = metadata.get("sigma_tilde_range")
    if (
        not isinstance(sigma_range, list)
        or len(sigma_range) != 2
        or not all(isinstance(v, (int, float)) and v > 0 for v in sigma_range)
        or not sigma_range[0] < sigma_range[1]
    ):
        raise CheckpointError(f"{source}: sigma_tilde_range must be [low, high] with 0 < low < high, not {sigma_range!r}")
    return TrainingSchedule(
        process=process,
        prediction=prediction,
        time_input=time_input,
        sigma_min=float(sigma_range[0]),
        sigma_max=float(sigma_range[1]),
        range_note=f"the range it was trained on under {process.spec}",
        details={key: metadata[key] for key in ("process", "prediction", "time_input", "sigma_tilde_range") if key in metadata},
        **scalings,
    )


def _positive_number(value: Any, name: str, source: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise CheckpointError(f"{source}: {name} must be a positive number, not {value!r}")
    return float(value)


def _choice(value: Any, name: str, allowed: tuple[str, ...], source: str) -> str:
    if value not in allowed:
        raise CheckpointError(f"{source}: unknown {name} {value!r}; expected one of {', '.join(allowed)}")
    return value


# --- the denoiser ----------------------------------------------------------------------------

class DiffusersDenoiser(Denoiser):
    """A diffusers-style network (UNet2DModel or anything with its call signature) as a Denoiser.

    `network(sample, timestep, class_labels=...)` must return a tensor, a tuple whose first
    item is the output, or an object with a `.sample` tensor, as UNet2DModel does.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        schedule: TrainingSchedule,
        data_shape: tuple[int, ...],
        *,
        num_classes: Optional[int] = None,
        pixel_range: Optional[tuple[float, float]] = DEFAULT_PIXEL_RANGE,
        quantization_step: Optional[float] = None,
        fingerprint: str = "",
        provenance: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.schedule = schedule
        self.data_shape = tuple(int(n) for n in data_shape)
        self.num_classes = num_classes
        self.pixel_range = pixel_range
        if quantization_step is None and pixel_range is not None:
            # 8-bit images: 255 steps across the range.
            quantization_step = (pixel_range[1] - pixel_range[0]) / 255.0
        self.quantization_step = quantization_step
        self.sigma_min = schedule.sigma_min
        self.sigma_max = schedule.sigma_max
        self.native_process = schedule.process.spec
        self.fingerprint = fingerprint
        self.provenance = dict(provenance or {})
        self.provenance.setdefault("schedule", schedule.details)

    def to(self, device: torch.device | str) -> "DiffusersDenoiser":
        super().to(device)
        self.network.to(self.device)
        return self

    @property
    def network_dtype(self) -> torch.dtype:
        dtype = getattr(self.network, "dtype", None)
        if isinstance(dtype, torch.dtype):
            return dtype
        parameter = next(iter(self.network.parameters()), None)
        return parameter.dtype if parameter is not None else torch.float32

    @property
    def noise_range_note(self) -> str:
        """Where the noise range comes from, such as the scheduler's timesteps, for range errors."""
        return self.schedule.range_note

    def check_sigma_range(self, low: float, high: float, purpose: str = "the requested time range") -> None:
        slack = 1e-9
        if low < self.sigma_min * (1 - slack) or high > self.sigma_max * (1 + slack):
            raise SigmaRangeError(
                f"{purpose} needs noise levels σ/α from {low:.4g} to {high:.4g}, but the model covers "
                f"only {self.sigma_min:.4g} to {self.sigma_max:.4g} ({self.schedule.range_note}); "
                f"narrow --t-min/--t-max or choose a process whose range the model covers"
            )

    def time_argument(self, t: np.ndarray, log_sigma_tilde: np.ndarray) -> np.ndarray:
        """Compute the network's timestep argument at process times t (float64)."""
        kind = self.schedule.time_input
        if kind == "timestep":
            return self.schedule.steps * t - 1.0
        if kind == "t":
            return t
        if kind == "sigma_tilde":
            return np.exp(log_sigma_tilde)
        return log_sigma_tilde

    def ve_score(self, x_tilde: torch.Tensor, sigma_tilde: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        sigma_host = sigma_tilde.detach().cpu().numpy().astype(np.float64)
        self.check_sigma_range(float(sigma_host.min()), float(sigma_host.max()), "a model evaluation")
        if self.num_classes is not None and labels is None:
            raise DataError("the model is class-conditional, but the data has no labels; give labelled data")

        schedule = self.schedule
        process = schedule.process
        u = np.log(sigma_host)
        t = process.t_from_log_sigma_tilde(u)
        alpha_np, sigma_np = process.alpha(t), process.sigma(t)
        coefficients = {
            "alpha": alpha_np,
            "sigma": sigma_np,
            "k": process.equilibrium_score_coefficient(t),
            "time": schedule.time_scale * self.time_argument(t, u),
            "c_in": (
                1.0 / np.sqrt(alpha_np**2 * schedule.data_mean_square + sigma_np**2)
                if schedule.input_scaling == "rms"
                else np.ones_like(alpha_np)
            ),
        }
        device = x_tilde.device
        alpha, sigma, k, time_arg, c_in = (
            torch.as_tensor(coefficients[name], device=device) for name in ("alpha", "sigma", "k", "time", "c_in")
        )

        x_model = expand_like(alpha, x_tilde) * x_tilde
        output = self._forward(expand_like(c_in, x_model) * x_model, time_arg, labels).to(torch.float64)
        if schedule.output_scaling == "inverse_sigma":
            output = output / expand_like(sigma, output)
        return self._to_ve_score(output, x_tilde, x_model, sigma_tilde, alpha, sigma, k)

    def _forward(self, x_model: torch.Tensor, time_arg: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        dtype = self.network_dtype
        kwargs = {"class_labels": labels} if self.num_classes is not None else {}
        # Float timesteps: diffusers' positional embedding multiplies them by its frequencies,
        # so fractional steps are valid. Only float64 networks (test doubles) get float64 times.
        time_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        result = self.network(x_model.to(dtype), time_arg.to(time_dtype), **kwargs)
        self.evaluations += x_model.shape[0]
        output = getattr(result, "sample", result)
        if isinstance(output, (tuple, list)):
            output = output[0]
        channels = self.data_shape[0] if len(self.data_shape) > 1 else None
        if channels is not None and output.dim() == x_model.dim() and output.shape[1] == 2 * channels:
            # Networks with a learned variance return (prediction, variance) along the channels.
            output = output[:, :channels]
        if output.shape != x_model.shape:
            raise CheckpointError(
                f"the network returned shape {tuple(output.shape)} for input {tuple(x_model.shape)}; "
                f"its output channels do not match the data"
            )
        return output

    def _to_ve_score(self, output, x_tilde, x_model, sigma_tilde, alpha, sigma, k) -> torch.Tensor:
        """Convert a native output to ∇̃ log p̃(x̃), all in float64."""
        prediction = self.schedule.prediction
        st = expand_like(sigma_tilde, x_tilde)
        a = expand_like(alpha, x_tilde)
        s = expand_like(sigma, x_tilde)
        if prediction == "epsilon":
            return -output / st
        if prediction == "v_prediction":
            # v = α ε − σ x_0 and x = α x_0 + σ ε give ε = (α v + σ x)/(α² + σ²).
            epsilon = (a * output + s * x_model) / (a * a + s * s)
            return -epsilon / st
        if prediction == "sample":
            return (output - x_tilde) / (st * st)
        if prediction == "score":
            # ∇̃ log p̃(x̃) = α ∇ log p_t(α x̃).
            return a * output
        # excess_score: ∇ log p_t = k x + e.
        return a * (expand_like(k, x_tilde) * x_model + output)


# --- loading folders -------------------------------------------------------------------------

@dataclass
class FolderLayout:
    """Locations of the parts of a diffusers folder."""

    root: Path
    unet_dir: Path
    scheduler_file: Optional[Path]
    metadata_file: Optional[Path]


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {error}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {str(path)!r} must hold a JSON object, not {type(data).__name__}")
    return data


def _class_name(path: Path) -> Optional[str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data.get("_class_name") if isinstance(data, dict) else None


def detect(path: Path) -> bool:
    """Accept a folder with model_index.json, entropy_probe.json or a diffusers model config.json."""
    if not path.is_dir():
        return False
    if (path / "model_index.json").is_file() or (path / METADATA_NAME).is_file():
        return True
    return _class_name(path / "config.json") is not None


def find_layout(path: Path, scheduler_config: Optional[str] = None) -> FolderLayout:
    """Locate the U-Net folder, the scheduler config and the metadata of a diffusers folder.

    The U-Net is `unet/` of a pipeline folder, or the folder itself when its config.json is a
    model config (bare model folders and the flat layout of early google/ddpm-* repositories).
    The scheduler config is --scheduler-config, else `scheduler/scheduler_config.json`, else
    `scheduler_config.json` at the top.
    """
    index_file = path / "model_index.json"
    if index_file.is_file():
        index = _read_json(index_file, "pipeline index")
        unet_entry = index.get("unet")
        if isinstance(unet_entry, list) and len(unet_entry) == 2 and unet_entry[1] != "UNet2DModel":
            raise CheckpointError(
                f"{str(path)!r}: the pipeline's unet is a {unet_entry[1]}, but entropy-probe reads "
                f"UNet2DModel image models; use --adapter module:function for other model classes"
            )
    # A repository may keep folders of an early diffusers release next to current files, so a
    # candidate whose class is UNet2DModel wins over one that merely exists.
    model_dirs = [d for d in (path / "unet", path) if (d / "config.json").is_file()]
    if not model_dirs:
        raise CheckpointError(
            f"{str(path)!r} has neither unet/config.json nor config.json; is it a diffusers pipeline or model folder?"
        )
    unet_dir = next((d for d in model_dirs if _class_name(d / "config.json") == "UNet2DModel"), model_dirs[0])

    if scheduler_config:
        scheduler_file: Optional[Path] = Path(scheduler_config).expanduser()
        if not scheduler_file.is_file():
            raise CheckpointError(f"scheduler config {scheduler_config!r} not found; give an existing scheduler_config.json")
    else:
        scheduler_file = _own_scheduler(path)
    metadata_file = path / METADATA_NAME
    return FolderLayout(path, unet_dir, scheduler_file, metadata_file if metadata_file.is_file() else None)


def _own_scheduler(root: Path) -> Optional[Path]:
    """Find the folder's scheduler config, preferring one whose class this adapter reads."""
    candidates = [c for c in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json") if c.is_file()]
    known = DISCRETE_SCHEDULERS | VE_SCHEDULERS
    return next((c for c in candidates if _class_name(c) in known), candidates[0] if candidates else None)


def resolve_schedule(layout: FolderLayout, scheduler_override: bool) -> TrainingSchedule:
    """Build the training schedule from entropy_probe.json, else from the scheduler config."""
    if layout.metadata_file is not None and not scheduler_override:
        metadata = _read_json(layout.metadata_file, "metadata")
        return schedule_from_metadata(metadata, str(layout.metadata_file))
    if layout.scheduler_file is None:
        raise CheckpointError(
            f"{str(layout.root)!r} has no scheduler config (scheduler/scheduler_config.json); pass "
            f"--scheduler-config FILE with the scheduler the model was trained with"
        )
    scheduler = _read_json(layout.scheduler_file, "scheduler config")
    schedule = schedule_from_scheduler(scheduler, str(layout.scheduler_file))
    own = _own_scheduler(layout.root)
    if scheduler_override and own is not None and own.resolve() != layout.scheduler_file.resolve():
        _check_same_training(schedule, schedule_from_scheduler(_read_json(own, "scheduler config"), str(own)), layout, own)
    return schedule


def _check_same_training(given: TrainingSchedule, own: TrainingSchedule, layout: FolderLayout, own_file: Path) -> None:
    """Reject a --scheduler-config whose training fields contradict the folder's own."""
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "sigma_min", "sigma_max"):
        if given.details.get(key) != own.details.get(key):
            raise CheckpointError(
                f"--scheduler-config {str(layout.scheduler_file)!r} has {key}={given.details.get(key)!r}, "
                f"but the model's own {str(own_file)!r} has {key}={own.details.get(key)!r}; the training "
                f"schedule belongs to the trained model, so drop --scheduler-config or fix the file"
            )


def check_time_embedding(config: dict[str, Any], schedule: TrainingSchedule, source: str) -> None:
    """Raise CheckpointError when the U-Net's time embedding cannot take the schedule's time input."""
    embedding = config.get("time_embedding_type", "positional")
    if embedding == "learned":
        raise CheckpointError(
            f"{source}: time_embedding_type 'learned' takes only integer timesteps, but the probe "
            f"needs fractional ones between the training steps; this model type is not supported"
        )
    if embedding == "fourier" and schedule.time_input not in ("sigma_tilde", "t"):
        # UNet2DModel with a Fourier embedding feeds log(timestep) to the embedding and divides
        # its output by the timestep (diffusers 0.42 unet_2d.py): the timestep is a positive
        # noise level, and step index 0 would give log 0.
        given = "step indices" if schedule.time_input == "timestep" else schedule.time_input
        raise CheckpointError(
            f"{source}: time_embedding_type 'fourier' takes a positive noise level σ as its timestep "
            f"and divides its output by it, but the schedule feeds it {given} "
            f"({schedule.details.get('scheduler', 'entropy_probe.json')}); give the ScoreSdeVeScheduler "
            f"config the model was trained with via --scheduler-config"
        )
    if embedding == "positional" and schedule.time_input == "sigma_tilde" and schedule.prediction == "score":
        raise CheckpointError(
            f"{source}: a ScoreSdeVeScheduler feeds the noise level σ as timestep, but this model has a "
            f"positional timestep embedding; give the scheduler config it was trained with"
        )


def check_unet_config(config: dict[str, Any], schedule: TrainingSchedule, source: str) -> None:
    """Raise CheckpointError when the U-Net config cannot work with the training schedule."""
    name = config.get("_class_name")
    if name != "UNet2DModel":
        raise CheckpointError(
            f"{source}: model class {name!r} is not supported; entropy-probe reads UNet2DModel "
            f"image models (use --adapter module:function for others)"
        )
    check_time_embedding(config, schedule, source)
    expected_steps = config.get("num_train_timesteps")
    if expected_steps is not None and schedule.steps is not None and expected_steps != schedule.steps:
        raise CheckpointError(
            f"{source}: the model was built for num_train_timesteps={expected_steps}, but the scheduler "
            f"config has {schedule.steps}; give the scheduler config the model was trained with"
        )
    in_channels = config.get("in_channels", 3)
    out_channels = config.get("out_channels", 3)
    if out_channels not in (in_channels, 2 * in_channels):
        raise CheckpointError(
            f"{source}: out_channels={out_channels} does not match in_channels={in_channels}; "
            f"the model does not predict images of its input's shape"
        )
    class_embed = config.get("class_embed_type")
    if class_embed is not None:
        raise CheckpointError(
            f"{source}: class_embed_type {class_embed!r} takes embedding vectors, not class indices; "
            f"only models with num_class_embeds are supported"
        )


def data_shape_of(config: dict[str, Any], source: str) -> tuple[int, int, int]:
    size = config.get("sample_size")
    if isinstance(size, int):
        height = width = size
    elif isinstance(size, list) and len(size) == 2:
        height, width = size
    else:
        raise CheckpointError(f"{source}: sample_size must be an integer or [height, width], not {size!r}")
    return (int(config.get("in_channels", 3)), int(height), int(width))


def _weights_file(unet_dir: Path) -> Optional[Path]:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (unet_dir / name).is_file():
            return unet_dir / name
    return None


def parse_pixel_range(value: Any) -> tuple[float, float]:
    """Parse a pixel range from '01', 'pm1', a 'low,high' string or a pair of numbers."""
    if value in ("01", "0,1", "[0,1]"):
        return (0.0, 1.0)
    if value in ("pm1", "-1,1", "[-1,1]"):
        return (-1.0, 1.0)
    if isinstance(value, str):
        parts = value.strip("[]").split(",")
    else:
        parts = list(value) if isinstance(value, (list, tuple)) else []
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise SpecError(f"invalid pixel range {value!r}; use 01, pm1 or LOW,HIGH") from None
    if not low < high:
        raise SpecError(f"invalid pixel range {value!r}: the low end must be below the high end")
    return (low, high)


def load_folder(
    path: str | Path,
    *,
    scheduler_config: Optional[str] = None,
    pixel_range: Any = None,
    device: str = "cpu",
    provenance: Optional[dict[str, Any]] = None,
    **ignored: Any,
) -> DiffusersDenoiser:
    """Load a diffusers pipeline or model folder as a DiffusersDenoiser."""
    path = Path(path).expanduser()
    # The hub adapter resolves a revision to its snapshot folder before calling this function.
    revision = ignored.get("revision")
    if revision:
        raise SpecError(
            f"--revision {revision} applies only to hub ids (ORG/NAME), but {str(path)!r} is a local folder "
            f"with a single version; leave --revision out"
        )
    layout = find_layout(path, scheduler_config)
    schedule = resolve_schedule(layout, scheduler_override=bool(scheduler_config))
    config_file = layout.unet_dir / "config.json"
    config = _read_json(config_file, "model config")
    check_unet_config(config, schedule, str(config_file))
    data_shape = data_shape_of(config, str(config_file))

    metadata = _read_json(layout.metadata_file, "metadata") if layout.metadata_file and not scheduler_config else {}
    if pixel_range is not None:
        chosen_range = parse_pixel_range(pixel_range)
    elif metadata.get("pixel_range") is not None:
        chosen_range = parse_pixel_range(metadata["pixel_range"])
    elif schedule.details.get("scheduler") in VE_SCHEDULERS:
        chosen_range = SCORE_SDE_VE_PIXEL_RANGE
    else:
        chosen_range = DEFAULT_PIXEL_RANGE
    step = metadata.get("quantization_step") if pixel_range is None else None

    weights = _weights_file(layout.unet_dir)
    if weights is None:
        raise CheckpointError(
            f"{str(layout.unet_dir)!r} has no diffusion_pytorch_model.safetensors or .bin weights file"
        )
    network = _load_unet(layout.unet_dir)
    record = {
        "kind": "diffusers",
        "path": str(path.resolve()),
        "unet": str(layout.unet_dir.resolve()),
        "scheduler_config": str(layout.scheduler_file.resolve()) if layout.scheduler_file else None,
        "metadata": str(layout.metadata_file.resolve()) if metadata else None,
        "weights": weights.name,
        "weights_sha256": sha256_file(weights),
        "time_embedding_type": config.get("time_embedding_type", "positional"),
    }
    record.update(_hub_cache_origin(path))
    record.update(provenance or {})
    denoiser = DiffusersDenoiser(
        network,
        schedule,
        data_shape,
        num_classes=config.get("num_class_embeds"),
        pixel_range=chosen_range,
        quantization_step=step,
        fingerprint=record["weights_sha256"],
        provenance=record,
    )
    denoiser.default_data = metadata.get("default_data")
    return denoiser.to(device)


def _hub_cache_origin(path: Path) -> dict[str, str]:
    """Return hub_id and commit of a folder inside a hub cache (models--ORG--NAME/snapshots/COMMIT)."""
    resolved = path.resolve()
    repo = resolved.parent.parent.name
    if resolved.parent.name != "snapshots" or not repo.startswith("models--"):
        return {}
    return {"hub_id": repo[len("models--"):].replace("--", "/", 1), "commit": resolved.name}


def _load_unet(unet_dir: Path) -> torch.nn.Module:
    from diffusers import UNet2DModel

    try:
        # diffusers reads .bin files with torch.load(weights_only=True); nothing is fetched.
        network = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fix = "restore the folder's files"
        if not (unet_dir / "diffusion_pytorch_model.safetensors").is_file():
            fix = (
                "diffusion_pytorch_model.bin is read with torch.load(weights_only=True), which rejects "
                "pickles that contain objects other than tensors; save the weights as "
                "diffusion_pytorch_model.safetensors"
            )
        raise CheckpointError(f"cannot load the U-Net in {str(unet_dir)!r}: {first_line.rstrip('.')}; {fix}") from None
    return network.eval().requires_grad_(False)


register(Adapter("diffusers", detect, load_folder, "diffusers UNet2DModel folders (DDPM-style or ScoreSdeVe schedulers)"))


def make_denoiser(
    network: torch.nn.Module,
    scheduler: dict[str, Any],
    data_shape: tuple[int, ...],
    **kwargs: Any,
) -> DiffusersDenoiser:
    """Wrap an in-memory network and a scheduler config dict (for Python use and tests)."""
    return DiffusersDenoiser(network, schedule_from_scheduler(dict(scheduler), "scheduler config"), data_shape, **kwargs)


__all__: list[str] = [
    "DiffusersDenoiser",
    "TrainingSchedule",
    "detect",
    "load_folder",
    "make_denoiser",
    "schedule_from_scheduler",
    "schedule_from_metadata",
]
