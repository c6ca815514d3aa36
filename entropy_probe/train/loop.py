"""The training loop of entropy-matching diffusion models (Premkumar, "Neural Entropy", NeurIPS 2025).

The network outputs the excess score e_θ(x, t), trained by denoising score matching against
the conditional target s_c = −ε/σ − k x_t with k = 2f/g² (E[s_c | x_t] is the exact excess
score). Two weightings over t uniform in [t_min, t_max]:

- "sigma2" (the default of the Neural Entropy paper and its code): E |σ e_θ + σ k x_t + ε|²;
- "likelihood": (t_max − t_min) · E (g²/2) |e_θ − s_c|², a Monte Carlo estimate of the
  integral ∫ (g²/2) E|e_θ − s_c|² dt, which equals the score error plus a constant.

Reproducibility: the data order comes from one torch.Generator and the times, noise and dropout
seeds from another, both on the CPU, so the run does not depend on the device's random number
generator.

Data parallelism: under torchrun every rank draws the same global batch (items, times and noise)
and evaluates its contiguous share. DistributedDataParallel averages the gradients, which are
scaled so that the step equals the single-process step on the whole batch up to float rounding.
Dropout masks differ, because each rank seeds its own. Rank 0 alone writes the run directory. The state at the end of every epoch is saved: weights, Adam moments, EMA, generator
states, epoch, step and loss history. On the CPU a resumed run therefore ends with the same
weights as an uninterrupted one. On a GPU they agree only to round-off, because kernels such as
the convolution backward pass are not deterministic. An interruption inside an epoch repeats that
epoch from its start.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .. import __version__
from .. import data as data_module
from .. import distributed
from ..draws import derived_seed
from ..errors import NonFiniteError, SpecError
from ..processes import from_spec as process_from_spec
from . import io
from .networks import (
    ARCHITECTURES,
    ExcessScoreNetwork,
    build_core,
    count_parameters,
    mlp_arguments,
    network_config,
    preconditioning_for,
    unet_arguments,
)

logger = logging.getLogger(__name__)

WEIGHTINGS = ("sigma2", "likelihood")

#: Noise draws per sample and step when none is given: 10 for the mixture MLP, as in the Neural
#: Entropy paper's mixture runs, and 1 for image U-Nets, whose items are already large.
DEFAULT_NOISE_DRAWS = {"mlp": 10, "unet": 1}

#: Smallest training time when none is given; the Neural Entropy code trains on [1e-5, T] too.
DEFAULT_TRAIN_T_MIN = 1e-5

# Tags that separate the seeds derived from --seed.
_TAG_INIT, _TAG_DATA, _TAG_NOISE = 101, 102, 103


@dataclass
class TrainSettings:
    """Options of one training run; defaults are those of `entropy-probe train`."""

    architecture: str = "auto"
    data: str = ""
    process: str = "vp"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    #: Epochs after which a checkpoint is kept; empty = 5, 10, 20, 50, 100, 200, 500, ...
    save_epochs: list[int] = field(default_factory=list)
    #: Noise draws (t, ε) per training item per step; None = DEFAULT_NOISE_DRAWS.
    noise_draws: Optional[int] = None
    weighting: str = "sigma2"
    #: Decay of the exponential moving average of the weights; 0 = no EMA.
    ema: float = 0.0
    seed: int = 0
    #: Training times; None = DEFAULT_TRAIN_T_MIN (or the process's start) and the process's T.
    t_min: Optional[float] = None
    t_max: Optional[float] = None
    #: Items per epoch for a data source without a fixed size (fresh draws of a law).
    epoch_size: int = 8192
    #: Network options: see networks.mlp_arguments and networks.unet_arguments, plus
    #: input_scaling and output_scaling.
    network: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    progress: bool = True

    #: Fields a resumed run may change; all others must match the saved run.
    RESUMABLE = ("epochs", "save_epochs", "device", "progress")

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES + ("auto",):
            raise SpecError(f"unknown --model {self.architecture!r}; choose auto, {', '.join(ARCHITECTURES)}")
        if not self.data:
            raise SpecError("missing training data; pass --data SPEC, for example --data mnist:n_c=10")
        if self.epochs < 1:
            raise SpecError(f"invalid --epochs {self.epochs}; it must be >= 1")
        if self.batch_size < 1:
            raise SpecError(f"invalid --batch-size {self.batch_size}; it must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SpecError(f"invalid --lr {self.lr}; it must be a positive number such as 1e-4")
        if self.noise_draws is not None and self.noise_draws < 1:
            raise SpecError(f"invalid --noise-draws {self.noise_draws}; it must be >= 1")
        if self.weighting not in WEIGHTINGS:
            raise SpecError(f"invalid --weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if not 0.0 <= self.ema < 1.0:
            raise SpecError(f"invalid --ema {self.ema}; give a decay in [0, 1), e.g. 0.999, or 0 for none")
        if self.epoch_size < 1:
            raise SpecError(f"invalid --epoch-size {self.epoch_size}; it must be >= 1")
        bad = [e for e in self.save_epochs if e < 1]
        if bad:
            raise SpecError(f"invalid --save-epochs {bad}; epochs count from 1")

    def resolved(self, process, data_shape: tuple[int, ...]) -> "TrainSettings":
        """Return a copy with every default filled in: architecture, noise draws, times, save epochs."""
        architecture = self.architecture
        if architecture == "auto":
            architecture = "unet" if len(data_shape) == 3 else "mlp"
        t_min = self.t_min if self.t_min is not None else max(DEFAULT_TRAIN_T_MIN, process.t_lower)
        t_max = self.t_max if self.t_max is not None else process.default_t_max
        process.check_time_range(t_min, t_max)
        return dataclasses.replace(
            self,
            architecture=architecture,
            noise_draws=self.noise_draws or DEFAULT_NOISE_DRAWS[architecture],
            t_min=float(t_min),
            t_max=float(t_max),
            save_epochs=sorted(set(self.save_epochs)),
            network=dict(self.network),
        )

    def checkpoint_epochs(self) -> set[int]:
        """Epochs after which a checkpoint is written; the last epoch always is."""
        if self.save_epochs:
            epochs = {e for e in self.save_epochs if e <= self.epochs}
        else:
            # 5, 10, 20, 50, 100, 200, 500, ...
            epochs = {m * 10**p for p in range(12) for m in (5, 10, 20) if m * 10**p <= self.epochs}
        return epochs | {self.epochs}

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainingData:
    """The training items in memory, as float32, with labels when the source has them."""

    x: torch.Tensor
    labels: Optional[torch.Tensor]
    source: Any
    #: Mean square per dimension of the items (the "rms" input scaling uses it).
    mean_square: float

    @classmethod
    def load(cls, spec: str, epoch_size: int) -> "TrainingData":
        source = data_module.from_spec(spec)
        if source.finite:
            x, labels = source.get(np.arange(len(source)))
            mean_square = float((x * x).mean())
            return cls(x.to(torch.float32), labels, source, mean_square)
        mean_square = source.second_moment() / source.dim
        return cls(torch.empty((0,) + tuple(source.shape)), None, source, float(mean_square))

    @property
    def finite(self) -> bool:
        return self.source.finite


def entropy_matching_loss(
    e: torch.Tensor, x_t: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, k: torch.Tensor, g2: torch.Tensor, weighting: str, span: float
) -> torch.Tensor:
    """Per-item loss (B,) for coefficients already shaped to broadcast against x_t."""
    dims = tuple(range(1, x_t.dim()))
    if weighting == "sigma2":
        return (sigma * e + sigma * k * x_t + noise).square().sum(dims)
    # e − s_c = e + ε/σ + k x_t
    return span * 0.5 * g2.reshape(-1) * (e + noise / sigma + k * x_t).square().sum(dims)


class Trainer:
    """One training run: network, optimizer, EMA, generators and the loss history."""

    def __init__(self, settings: TrainSettings, out: str | Path) -> None:
        settings.validate()
        self.process = process_from_spec(settings.process)
        self.data = TrainingData.load(settings.data, settings.epoch_size)
        source = self.data.source
        self.settings = settings.resolved(self.process, tuple(source.shape))
        self.out = Path(out)
        self.context = distributed.current(self.settings.device)
        self.device = torch.device(self.context.device)

        options = self.settings.network
        if self.settings.architecture == "mlp":
            if options.get("class_conditional"):
                raise SpecError("--class-conditional needs --model unet; the mixture MLP takes no labels")
            self.arguments = mlp_arguments(source.shape, options)
        else:
            self.arguments = unet_arguments(source.shape, options, source.num_classes)
        seed = self.settings.seed
        core = build_core(self.settings.architecture, self.arguments, seed=derived_seed(seed, _TAG_INIT))
        self.preconditioning = preconditioning_for(self.settings.architecture, options, self.data.mean_square)
        self.network = ExcessScoreNetwork(core, self.settings.architecture, self.process, self.preconditioning).to(self.device)
        # The module the steps run: the network itself, or its DistributedDataParallel wrapper.
        self.model = distributed.wrap_model(self.network, self.context)
        self.conditional = self.settings.architecture == "unet" and self.arguments.get("num_class_embeds") is not None
        # The multi-tensor (foreach) Adam updates all parameters in a few kernels; PyTorch uses it
        # by default on CUDA only, and on the CPU it saves a few per cent of a U-Net step.
        self.optimizer = torch.optim.Adam(self.network.core.parameters(), lr=self.settings.lr, foreach=True)
        # Detached views of the live weights (they share storage with the parameters).
        self._live = dict(self.network.core.state_dict())
        self.ema = (
            {name: value.detach().clone() for name, value in self._live.items() if value.is_floating_point()}
            if self.settings.ema > 0
            else None
        )
        self.data_generator = torch.Generator().manual_seed(derived_seed(seed, _TAG_DATA))
        self.noise_generator = torch.Generator().manual_seed(derived_seed(seed, _TAG_NOISE))
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []

    # --- sizes ---------------------------------------------------------------------------------
    @property
    def items_per_epoch(self) -> int:
        return len(self.data.source) if self.data.finite else self.settings.epoch_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.items_per_epoch / self.settings.batch_size)

    # --- one step ------------------------------------------------------------------------------
    def _epoch_items(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Draw the items of the next epoch, in training order."""
        if self.data.finite:
            order = torch.randperm(self.items_per_epoch, generator=self.data_generator)
            labels = None if self.data.labels is None else self.data.labels[order]
            return self.data.x[order], labels
        x, labels = self.data.source.sample(self.settings.epoch_size, self.data_generator)
        return x.to(torch.float32), labels

    def _coefficient(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape((-1,) + (1,) * (like.dim() - 1))

    def train_step(self, x0: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Take one Adam step on a batch; return the summed per-item loss (0-dim, on the device)."""
        s = self.settings
        draws = s.noise_draws
        x0 = x0.repeat_interleave(draws, dim=0)
        labels = None if labels is None or not self.conditional else labels.repeat_interleave(draws, dim=0).to(self.device)
        count = x0.shape[0]
        t = s.t_min + (s.t_max - s.t_min) * torch.rand(count, generator=self.noise_generator, dtype=torch.float64)
        noise = torch.randn(x0.shape, generator=self.noise_generator, dtype=torch.float32)
        dropout_seed = int(torch.randint(0, 2**62, (1,), generator=self.noise_generator))
        share = 1.0
        if self.context.distributed:
            # Every rank drew the whole batch; each keeps its own rows. A rank whose share is
            # empty (a last batch smaller than the number of ranks) evaluates one row with
            # weight 0, because every rank must take part in the gradient all-reduce.
            start, stop = distributed.shard_range(count, self.context)
            if stop == start:
                start, stop, share = 0, 1, 0.0
            x0, t, noise = x0[start:stop], t[start:stop], noise[start:stop]
            labels = None if labels is None else labels[start:stop]
            dropout_seed = derived_seed(dropout_seed, self.context.rank)

        x0 = x0.to(self.device)
        noise = noise.to(self.device)
        t64 = t.numpy()
        alpha = self._coefficient(self.process.alpha(t64), x0)
        sigma = self._coefficient(self.process.sigma(t64), x0)
        k = self._coefficient(self.process.equilibrium_score_coefficient(t64), x0)
        g2 = self._coefficient(self.process.g2(t64), x0)
        x_t = alpha * x0 + sigma * noise

        self.optimizer.zero_grad(set_to_none=True)
        with _seeded_global_rng(dropout_seed, self.device):
            e = self.model(x_t, t, labels)
            per_item = entropy_matching_loss(e, x_t, noise, sigma, k, g2, s.weighting, s.t_max - s.t_min)
            if self.context.distributed:
                # DDP averages gradients over ranks: scale each rank's sum so the average is the
                # gradient of the mean over the whole batch, even for unequal shares.
                loss = per_item.sum() * (share * self.context.world_size / count)
            else:
                loss = per_item.mean()
            loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            weight = 1.0 - s.ema
            for name, average in self.ema.items():
                average.lerp_(self._live[name], weight)
        self.step += 1
        return per_item.detach().sum() * share

    def run_epoch(self, on_step: Optional[Callable[[int, int], None]] = None, progress=None) -> dict[str, Any]:
        """Train one epoch; return its entry of the loss history."""
        started = time.perf_counter()
        self.network.train()
        x_all, labels_all = self._epoch_items()

        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        batch = self.settings.batch_size
        for index, start in enumerate(range(0, x_all.shape[0], batch)):
            x0 = x_all[start : start + batch]
            labels = None if labels_all is None else labels_all[start : start + batch]
            total += self.train_step(x0, labels).double()
            count += x0.shape[0] * self.settings.noise_draws
            if progress is not None:
                progress.update(1)
            if on_step is not None:
                on_step(self.epoch + 1, index + 1)

        self.network.eval()
        loss = float(distributed.all_reduce_sum(total)) / count
        if not math.isfinite(loss):
            raise NonFiniteError(
                f"training diverged in epoch {self.epoch + 1}: the loss is {loss}; nothing of this "
                f"epoch was saved. Lower --lr or use --weighting sigma2, then --resume"
            )

        self.epoch += 1
        entry = {
            "epoch": self.epoch,
            "step": self.step,
            "loss": loss,
            "weighting": self.settings.weighting,
            "seconds": round(time.perf_counter() - started, 3),
        }
        self.history.append(entry)
        return entry

    # --- checkpoints and resume state ------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """Return the checkpoint weights: the EMA when enabled, else the live weights."""
        state = {name: value.detach().clone() for name, value in self.network.core.state_dict().items()}
        if self.ema is not None:
            state.update({name: value.clone() for name, value in self.ema.items()})
        return state

    def checkpoint_config(self) -> dict[str, Any]:
        source = self.data.source
        s = self.settings
        return {
            "kind": "network",
            "architecture": s.architecture,
            "network": network_config(s.architecture, self.network.core, self.arguments),
            "parameters": count_parameters(self.network.core),
            "parametrisation": "excess_score",
            **self.preconditioning.describe(),
            "process": self.process.spec,
            "data": {
                "spec": source.spec,
                "shape": list(source.shape),
                "size": len(source) if source.finite else None,
                "pixel_range": list(source.pixel_range) if source.pixel_range else None,
                "quantization_step": source.quantization_step,
                "num_classes": source.num_classes,
                "heldout_spec": source.heldout_spec,
                "mixture": source.recipe,
            },
            "num_classes": self.arguments.get("num_class_embeds") if self.conditional else None,
            "training": s.record(),
            "train_time_range": [s.t_min, s.t_max],
            "weights": "ema" if self.ema is not None else "raw",
            "epoch": self.epoch,
            "step": self.step,
            "loss": self.history[-1]["loss"] if self.history else None,
            "seed": s.seed,
            "package_version": __version__,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"model.{name}": value.detach().clone() for name, value in self.network.core.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{name}": value.clone() for name, value in self.ema.items()})
        for index, entries in self.optimizer.state_dict()["state"].items():
            for key, value in entries.items():
                tensors[f"optimizer.{index}.{key}"] = value.detach().clone() if torch.is_tensor(value) else torch.tensor(value)
        tensors["rng.data"] = self.data_generator.get_state()
        tensors["rng.noise"] = self.noise_generator.get_state()
        return tensors

    def state_config(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "training": self.settings.record(),
            "package_version": __version__,
        }

    def restore(self, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Load a state saved by `state_tensors` / `state_config`."""
        model = {name[len("model.") :]: value for name, value in tensors.items() if name.startswith("model.")}
        self.network.core.load_state_dict(model, strict=True)
        if self.ema is not None:
            for name in self.ema:
                self.ema[name].copy_(tensors[f"ema.{name}"])
        optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                optimizer_state.setdefault(int(index), {})[key] = value
        self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        self.data_generator.set_state(tensors["rng.data"])
        self.noise_generator.set_state(tensors["rng.noise"])
        self.epoch = int(config["epoch"])
        self.step = int(config["step"])
        self.history = list(config["history"])

    def save(self, checkpoint: bool) -> Optional[Path]:
        """Save the resume state, the loss log and (when `checkpoint`) a network checkpoint.

        In a distributed run rank 0 writes and the other ranks wait for it.
        """
        saved = None
        with distributed.main_process_only() as main_process:
            if main_process:
                if checkpoint:
                    saved = io.save_network_checkpoint(self.out, self.epoch, self.checkpoint_config(), self.weights())
                io.save_state(self.out, self.state_config(), self.state_tensors())
                io.write_loss_log(self.out, self.history)
        return saved


class _seeded_global_rng:
    """Run a block with the global generators of the CPU and `device` seeded, then restore them.

    Dropout layers draw from the global generator and take no torch.Generator. Seeding it per step
    from the run's own generator makes dropout reproducible and resumable. Restoring it afterwards
    leaves the caller's random state untouched.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        self.device = device
        self.devices = []
        if device.type == "cuda":
            self.devices = [device.index if device.index is not None else torch.cuda.current_device()]

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.random.default_generator.manual_seed(self.seed)
        if self.device.type == "cuda":
            with torch.cuda.device(self.devices[0]):
                torch.cuda.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def check_resume_settings(saved: dict[str, Any], requested: TrainSettings, out: Path, explicit: Optional[set[str]] = None) -> TrainSettings:
    """Return the saved settings, updated with the resumable fields of `requested`.

    Only the fields named in `explicit` (all fields when it is None) are read from `requested`.
    A change to a field other than epochs, save_epochs, device and progress raises SpecError,
    because the resumed run would no longer match its first part.
    """
    saved_settings = TrainSettings(**saved)
    names = [item.name for item in dataclasses.fields(TrainSettings)]
    if explicit is not None:
        names = [name for name in names if name in explicit]
    changed = []
    for name in names:
        ours, theirs = getattr(requested, name), getattr(saved_settings, name)
        if name in TrainSettings.RESUMABLE or ours is None:
            continue
        if name == "network":
            changed += [
                f"{key}={value!r} (saved: {theirs.get(key)!r})"
                for key, value in ours.items()
                if value is not None and theirs.get(key) != value
            ]
        elif ours != theirs:
            changed.append(f"{name}={ours!r} (saved: {theirs!r})")
    if changed:
        raise SpecError(
            f"cannot resume {str(out)!r} with different settings: {', '.join(changed)}; --resume "
            f"continues the saved run and may change only --epochs, --save-epochs and --device"
        )
    updates = {name: getattr(requested, name) for name in TrainSettings.RESUMABLE if name in names}
    return dataclasses.replace(saved_settings, **updates)


def train(
    settings: TrainSettings,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    explicit: Optional[set[str]] = None,
    on_step: Optional[Callable[[int, int], None]] = None,
    on_epoch: Optional[Callable[[dict[str, Any]], None]] = None,
) -> Trainer:
    """Train a network into the run directory `out`; return the finished trainer.

    With `resume`, continue the run saved in `out`, or start one when `out` has no saved state
    yet. The saved settings win: only epochs, save_epochs, device and progress may change, and
    only the fields in `explicit` (all when None) are compared with the saved ones. `on_step(epoch, step_in_epoch)` runs after every optimizer
    step and `on_epoch(entry)` after every saved epoch.
    """
    out = Path(out)
    state_dir, replace = io.check_output(out, resume, overwrite)
    if state_dir is not None:
        state_config, state_tensors = io.load_state(state_dir)
        settings = check_resume_settings(state_config["training"], settings, out, explicit)
        trainer = Trainer(settings, out)
        trainer.restore(state_config, state_tensors)
        logger.info("resuming %s after epoch %d (step %d)", out, trainer.epoch, trainer.step)
        if trainer.epoch > trainer.settings.epochs:
            raise SpecError(
                f"{str(out)!r} is already trained for {trainer.epoch} epochs, more than --epochs "
                f"{trainer.settings.epochs}; give --epochs {trainer.epoch} or more"
            )
    else:
        if resume:
            logger.info("%s has no saved state yet; starting a new run", out)
        # Build everything first, so invalid settings or data leave no directory behind.
        trainer = Trainer(settings, out)
        with distributed.main_process_only() as main_process:
            if main_process:
                io.create_output(out, replace)

    s = trainer.settings
    checkpoint_epochs = s.checkpoint_epochs()
    logger.info(
        "training a %s (%d parameters) on %s (%d items) under %s for %d epochs of %d steps",
        s.architecture, count_parameters(trainer.network.core), s.data, trainer.items_per_epoch,
        trainer.process.spec, s.epochs, trainer.steps_per_epoch,
    )
    progress = None
    if s.progress and trainer.context.is_main:
        import sys

        from tqdm import tqdm

        progress = tqdm(
            total=s.epochs * trainer.steps_per_epoch,
            initial=trainer.epoch * trainer.steps_per_epoch,
            desc="train",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
    try:
        while trainer.epoch < s.epochs:
            entry = trainer.run_epoch(on_step=on_step, progress=progress)
            trainer.save(checkpoint=trainer.epoch in checkpoint_epochs)
            if progress is not None:
                progress.set_postfix(epoch=entry["epoch"], loss=f"{entry['loss']:.4g}")
            logger.debug("epoch %d: loss %.6g (%.1f s)", entry["epoch"], entry["loss"], entry["seconds"])
            if on_epoch is not None:
                on_epoch(entry)
        distributed.barrier()
        if not (out / io.epoch_dir_name(trainer.epoch)).is_dir():
            # A resumed run that had already finished: make sure its last epoch is kept.
            trainer.save(checkpoint=True)
    finally:
        if progress is not None:
            progress.close()
    return trainer
