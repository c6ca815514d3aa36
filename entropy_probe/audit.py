"""Memorisation audit: does a checkpoint compress its training set or copy it?

Four signals, each compared with a stated threshold:

1. Neural entropy against the memorisation ceiling. The empirical law of the N training
   points is the perfect memoriser. Its total entropy production S_tot (same process, same
   t_min, same draws) is the most information a model can hold about this training set.
   A network whose S_NN on the training data reaches the ceiling stores the items themselves.
   Flagged when S_NN(train) / ceiling ≥ `ceiling_fraction`.
2. Cross-entropy bound on training items against held-out items (bits/dim): a memoriser codes
   its training items far better than new ones. The bound is estimated per item (every item
   gets one noise draw per time node), so its standard error covers the spread over items,
   and the prior π is the one of the training data for both splits. Flagged when the
   held-out minus training gap exceeds `z_score` standard errors.
3. The same comparison with the exact ODE likelihood (see `likelihood`), when
   `likelihood_items` > 0.
4. Near-copies among generated samples (Carlini et al. 2023, "Extracting training data from
   diffusion models"): for each sample, the Euclidean distances to its nearest and
   second-nearest training items; a sample whose ratio nearest/second-nearest is below
   `copy_ratio` sits on one training item. By chance alone real held-out items also fall
   below the ratio (for uniform points in d dimensions about copy_ratio^d of them), so the
   signal is the excess of the sample fraction over the held-out fraction. Flagged when the
   excess exceeds max(`copy_excess`, `z_score` standard errors).

Verdict: no flagged signal gives "no sign of memorisation"; two or more flagged signals that
include the ceiling or the copy signal give "memorises training items"; flagged likelihood
gaps alone give "overfits"; anything else is "inconclusive".
"""

from __future__ import annotations

import datetime
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
import xarray as xr

from . import __version__
from .data import DataSource
from .denoiser import Denoiser
from .draws import derived_seed
from .errors import DataError, SpecError
from .estimators import sample_rates
from .field import Coefficients, EntropyMatchingField
from .likelihood import LikelihoodSettings, log_likelihood
from .oracles import EmpiricalOracle
from .probe import MeasureSettings, measure, resolve_time_range
from .processes import Process
from .quadrature import make_grid
from .quantities import ce_constant_term, prior_for
from .results import NATS
from .sampling import SamplerSettings, sample, sample_generator

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)
BITS_PER_DIM = "bits/dim"

#: Random streams of the audit, separate from those of the samplers and the likelihood.
TAG_ITEMS_TRAIN = 21
TAG_ITEMS_HELDOUT = 22
TAG_BOUND_TRAIN = 23
TAG_BOUND_HELDOUT = 24


@dataclass
class AuditThresholds:
    """Thresholds above which each signal of the audit counts as flagged."""

    #: S_NN on the training data as a fraction of the memorisation ceiling.
    ceiling_fraction: float = 0.9
    #: Standard errors a held-out minus training gap, or a copy excess, must exceed.
    z_score: float = 3.0
    #: A sample is a near-copy when nearest / second-nearest training distance < copy_ratio.
    copy_ratio: float = 1.0 / 3.0
    #: Smallest excess of the near-copy fraction over the held-out fraction that counts.
    copy_excess: float = 0.05

    def validate(self) -> None:
        if not 0 < self.ceiling_fraction <= 1:
            raise SpecError(f"invalid ceiling fraction {self.ceiling_fraction}; it must be in (0, 1]")
        if self.z_score <= 0:
            raise SpecError(f"invalid z-score threshold {self.z_score}; it must be > 0")
        if not 0 < self.copy_ratio < 1:
            raise SpecError(f"invalid copy ratio {self.copy_ratio}; it must be in (0, 1), for example 0.333")
        if not 0 <= self.copy_excess < 1:
            raise SpecError(f"invalid copy excess {self.copy_excess}; it must be in [0, 1)")


@dataclass
class AuditSettings:
    """Options of one audit; defaults are those of `entropy-probe audit`."""

    t_min: Optional[float] = None
    t_max: Optional[float] = None
    #: Monte Carlo samples per time node of the S_NN and ceiling estimates.
    samples: int = 256
    nodes: int = 33
    rule: str = "simpson"
    #: Items per split for the per-item cross-entropy bounds.
    items: int = 256
    #: Items per split for the ODE likelihood (0 skips it).
    # NOTE: for a memorising model the ODE of a held-out item is stiff near t_min, and the
    # adaptive solver may need thousands of steps per item (seen with empirical-law oracles).
    likelihood_items: int = 32
    probes: int = 1
    probe: str = "rademacher"
    #: Samples generated for the near-copy search (also the number of held-out baseline items).
    generate: int = 256
    sampler: str = "sde"
    steps: int = 256
    seed: int = 0
    batch_size: int = 256
    #: Training items compared at once in the nearest-neighbour search (bounds its memory).
    neighbour_chunk: int = 4096
    #: Pairs of suspicious samples and training items kept for the report figure.
    pairs: int = 8
    device: str = "cpu"
    progress: bool = True
    thresholds: AuditThresholds = field(default_factory=AuditThresholds)

    def validate(self) -> None:
        for name in ("samples", "nodes", "items", "generate", "steps", "batch_size", "neighbour_chunk", "probes"):
            value = getattr(self, name)
            if value < 1:
                raise SpecError(f"invalid {name.replace('_', ' ')} {value}; it must be >= 1")
        if self.items < 2 or self.generate < 2:
            raise SpecError(f"the audit needs at least 2 items and 2 generated samples (got {self.items} and {self.generate})")
        if self.likelihood_items < 0 or self.likelihood_items == 1:
            raise SpecError(f"invalid likelihood items {self.likelihood_items}; use 0 (skip) or at least 2")
        if self.pairs < 0:
            raise SpecError(f"invalid number of pairs {self.pairs}; it must be >= 0")
        self.thresholds.validate()

    def measure_settings(self) -> MeasureSettings:
        return MeasureSettings(
            t_min=self.t_min,
            t_max=self.t_max,
            samples=self.samples,
            nodes=self.nodes,
            seed=self.seed,
            rule=self.rule,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
        )


# --- nearest neighbours --------------------------------------------------------------------

@dataclass
class Neighbours:
    """Distances from each query to its two nearest training items, and their indices."""

    nearest: np.ndarray
    second: np.ndarray
    nearest_index: np.ndarray
    second_index: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        """nearest / second; 0 where both are 0 (an exact copy of a duplicated item)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.second > 0, self.nearest / np.where(self.second > 0, self.second, 1.0), 0.0)


def nearest_two(queries: torch.Tensor, train: DataSource, chunk: int = 4096, device: str = "cpu") -> Neighbours:
    """Two nearest training items of every query by Euclidean distance, in bounded memory.

    The training set is read `chunk` items at a time and a running top 2 is kept, so memory
    grows with len(queries) × chunk, not with the size of the training set. The two distances
    are recomputed exactly from the chosen items at the end.
    """
    if not train.finite:
        raise DataError(f"training data {train.spec!r} is a distribution; the audit needs a finite training set")
    size = len(train)
    if size < 2:
        raise DataError(f"training data {train.spec!r} has {size} item; the nearest-neighbour ratio needs at least 2")
    q = queries.reshape(queries.shape[0], -1).to(device=device, dtype=torch.float64)
    n = q.shape[0]
    best_d2 = torch.full((n, 2), math.inf, dtype=torch.float64, device=device)
    best_index = torch.zeros((n, 2), dtype=torch.int64, device=device)
    q_sq = (q * q).sum(1, keepdim=True)
    for start in range(0, size, chunk):
        stop = min(size, start + chunk)
        items, _ = train.get(np.arange(start, stop))
        items = items.reshape(stop - start, -1).to(device=device, dtype=torch.float64)
        d2 = (q_sq - 2.0 * q @ items.T + (items * items).sum(1)[None, :]).clamp_min(0.0)
        take = min(2, stop - start)
        values, positions = torch.topk(d2, take, dim=1, largest=False)
        merged_d2 = torch.cat([best_d2, values], dim=1)
        merged_index = torch.cat([best_index, positions + start], dim=1)
        order = torch.topk(merged_d2, 2, dim=1, largest=False).indices
        best_d2 = torch.gather(merged_d2, 1, order)
        best_index = torch.gather(merged_index, 1, order)
    index = best_index.cpu().numpy()
    exact = []
    for column in range(2):
        items, _ = train.get(index[:, column])
        diff = q.cpu() - items.reshape(n, -1).to(torch.float64)
        exact.append(torch.sqrt((diff * diff).sum(1)).numpy())
    nearest, second = exact
    # The exact recomputation may swap near-ties; keep nearest <= second.
    swap = nearest > second
    nearest_index, second_index = index[:, 0].copy(), index[:, 1].copy()
    nearest[swap], second[swap] = second[swap], nearest[swap].copy()
    nearest_index[swap], second_index[swap] = index[swap, 1], index[swap, 0]
    return Neighbours(nearest, second, nearest_index, second_index)


# --- items of a split ----------------------------------------------------------------------

def choose_items(source: DataSource, count: int, seed: int, tag: int) -> tuple[torch.Tensor, Optional[torch.Tensor], np.ndarray]:
    """`count` items of a source (all of a smaller finite source), with their ids.

    A finite source gives a seeded random subset in index order, with the indices as ids;
    a distribution gives fresh seeded draws with ids 0..count−1.
    """
    if source.finite:
        size = len(source)
        if count >= size:
            ids = np.arange(size)
        else:
            rng = np.random.default_rng(derived_seed(seed, tag))
            ids = np.sort(rng.choice(size, size=count, replace=False))
        x, labels = source.get(ids)
        return x.to(torch.float64), labels, ids
    generator = torch.Generator().manual_seed(derived_seed(seed, tag))
    x, labels = source.sample(count, generator)
    return x.to(torch.float64), labels, np.arange(count)


def item_bounds(
    model: Denoiser,
    process: Process,
    x0: torch.Tensor,
    labels: Optional[torch.Tensor],
    item_ids: np.ndarray,
    t_min: float,
    t_max: float,
    second_moment: float,
    settings: AuditSettings,
    tag: int,
) -> np.ndarray:
    """Cross-entropy bound of every item (nats): prior term + constant + denoising loss.

    With π fixed by `second_moment`, E[−log π(x_T) | x_0] is exact per item, and the loss
    ∫ (g²/2) E|e_θ − s_c|² dt is estimated with one noise draw per node of the audit's grid,
    drawn from the item's own generator.
    """
    grid = make_grid(process, t_min, t_max, settings.nodes, settings.rule)
    dim = model.dim
    prior = prior_for(process, t_max, dim, second_moment)
    alpha_t, sigma2_t = float(process.alpha(t_max)), float(process.sigma2(t_max))
    flat = x0.reshape(x0.shape[0], -1)
    mean_square_t = alpha_t**2 * (flat * flat).sum(1).numpy() + sigma2_t * dim
    prior_terms = 0.5 * dim * math.log(2.0 * math.pi * prior.variance) + mean_square_t / (2.0 * prior.variance)
    constant = ce_constant_term(process, t_min, t_max, dim)

    field_ = EntropyMatchingField(model, process)
    nodes = grid.size
    per_batch = max(1, settings.batch_size // nodes)
    losses = []
    for start in range(0, x0.shape[0], per_batch):
        stop = min(x0.shape[0], start + per_batch)
        count = stop - start
        noise = torch.cat(
            [torch.randn((nodes,) + tuple(x0.shape[1:]), generator=sample_generator(settings.seed, tag, int(i)), dtype=torch.float64) for i in item_ids[start:stop]]
        )
        x_rep = x0[start:stop].repeat_interleave(nodes, dim=0)
        t = np.tile(grid.t, count)
        coeffs = Coefficients.at(process, t, settings.device)
        batch_labels = None if labels is None else labels[start:stop].repeat_interleave(nodes).to(settings.device)
        with torch.inference_mode():
            rates = sample_rates(field_, None, x_rep.to(settings.device), noise.to(settings.device), coeffs, batch_labels)
        loss = rates["loss"].cpu().numpy().reshape(count, nodes)
        losses.append(loss @ grid.weights)
    return prior_terms + constant + np.concatenate(losses)


# --- statistics ----------------------------------------------------------------------------

def _mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(values.size))


def _fraction_se(flags: np.ndarray) -> tuple[float, float]:
    p = float(np.mean(flags))
    # Standard error of a proportion, floored at one count so that 0 % and 100 % are not exact.
    q = min(max(p, 0.5 / flags.size), 1 - 0.5 / flags.size)
    return p, math.sqrt(q * (1 - q) / flags.size)


@dataclass
class Signal:
    """One row of the verdict table."""

    name: str
    value: float
    threshold: float
    flagged: bool
    units: str
    rule: str


def build_signals(values: dict[str, float], thresholds: AuditThresholds) -> list[Signal]:
    """Build the verdict table from the audit's scalars."""
    z = thresholds.z_score
    signals = [
        Signal(
            "ceiling_fraction",
            values["ceiling_fraction"],
            thresholds.ceiling_fraction,
            values["ceiling_fraction"] >= thresholds.ceiling_fraction,
            "1",
            f"S_NN on the training data / memorisation ceiling >= {thresholds.ceiling_fraction:g}",
        ),
        Signal(
            "ce_gap_bpd",
            values["ce_gap_bpd"],
            z * values["ce_gap_bpd_stderr"],
            values["ce_gap_bpd"] > z * values["ce_gap_bpd_stderr"],
            BITS_PER_DIM,
            f"held-out minus training cross-entropy bound > {z:g} standard errors",
        ),
    ]
    if "nll_gap_bpd" in values:
        signals.append(
            Signal(
                "nll_gap_bpd",
                values["nll_gap_bpd"],
                z * values["nll_gap_bpd_stderr"],
                values["nll_gap_bpd"] > z * values["nll_gap_bpd_stderr"],
                BITS_PER_DIM,
                f"held-out minus training ODE negative log-likelihood > {z:g} standard errors",
            )
        )
    copy_threshold = max(thresholds.copy_excess, z * values["copy_excess_stderr"])
    signals.append(
        Signal(
            "copy_excess",
            values["copy_excess"],
            copy_threshold,
            values["copy_excess"] > copy_threshold,
            "1",
            f"fraction of samples with nearest/second-nearest training distance < {thresholds.copy_ratio:.3g}, "
            f"minus that fraction for held-out items, > max({thresholds.copy_excess:g}, {z:g} standard errors)",
        )
    )
    return signals


def overall_verdict(signals: list[Signal]) -> str:
    flagged = {s.name for s in signals if s.flagged}
    if not flagged:
        return "no sign of memorisation"
    if len(flagged) >= 2 and flagged & {"ceiling_fraction", "copy_excess"}:
        return "memorises training items"
    if flagged <= {"ce_gap_bpd", "nll_gap_bpd"}:
        return "overfits: codes training items better than held-out items, but generates no copies"
    return "inconclusive: one signal flagged"


# --- the audit -----------------------------------------------------------------------------

def check_audit_data(model: Denoiser, train: DataSource, heldout: DataSource) -> None:
    if not train.finite:
        raise DataError(f"training data {train.spec!r} is a distribution; give the finite training set (for gmm add n=N)")
    if len(train) < 2:
        raise DataError(f"training data {train.spec!r} has {len(train)} item; the audit needs at least 2")
    for name, source in (("training", train), ("held-out", heldout)):
        if tuple(source.shape) != tuple(model.data_shape):
            raise DataError(
                f"{name} data {source.spec!r} has items of shape {tuple(source.shape)}, but the model "
                f"expects {tuple(model.data_shape)}"
            )
    if model.num_classes is not None and (train.num_classes is None or heldout.num_classes is None):
        raise DataError("the model is class-conditional, so both --train and --heldout need labels")


def run_audit(
    model: Denoiser,
    process: Process,
    train: DataSource,
    heldout: DataSource,
    settings: AuditSettings,
    provenance: Optional[dict[str, Any]] = None,
    progress_factory: Optional[Callable] = None,
) -> xr.Dataset:
    """Run the four signals of the audit and return the result Dataset (see module docstring)."""
    settings.validate()
    check_audit_data(model, train, heldout)
    measure_settings = settings.measure_settings()
    t_min, t_max = resolve_time_range(process, measure_settings)
    step = train.quantization_step
    if (heldout.quantization_step or None) != (step or None):
        logger.warning(
            "training and held-out data have different quantisation steps (%s and %s); bits/dim use %s",
            step, heldout.quantization_step, step,
        )
    m2 = train.second_moment()
    variables: dict[str, xr.DataArray] = {}
    values: dict[str, float] = {}

    # (a) neural entropy, the held-out estimate and the memorisation ceiling (common draws).
    logger.info("measuring S_NN on the training and held-out data")
    on_train = measure(model, process, train, measure_settings, progress_factory=progress_factory)
    on_heldout = measure(model, process, heldout, measure_settings, progress_factory=progress_factory)
    logger.info("measuring the memorisation ceiling (empirical law of %d training items)", len(train))
    points, _ = train.get(np.arange(len(train)))
    memoriser = EmpiricalOracle(points, tuple(train.shape))
    # The memoriser is also the reference, so its S_NN and S_tot coincide; this evaluates it
    # twice per draw, which costs N·d per evaluation for N training items of dimension d.
    ceiling_run = measure(memoriser, process, train, measure_settings, reference=memoriser, progress_factory=progress_factory)
    _add_entropy_signal(variables, values, on_train, on_heldout, ceiling_run)

    # (b) per-item cross-entropy bounds.
    logger.info("estimating per-item cross-entropy bounds")
    train_x, train_labels, train_ids = choose_items(train, settings.items, settings.seed, TAG_ITEMS_TRAIN)
    held_x, held_labels, held_ids = choose_items(heldout, settings.items, settings.seed, TAG_ITEMS_HELDOUT)
    bound_train = item_bounds(model, process, train_x, train_labels, train_ids, t_min, t_max, m2, settings, TAG_BOUND_TRAIN)
    bound_held = item_bounds(model, process, held_x, held_labels, held_ids, t_min, t_max, m2, settings, TAG_BOUND_HELDOUT)
    _add_gap(variables, values, "ce", "cross-entropy bound", bound_train, bound_held, train_ids, held_ids, model.dim, step)

    # (b') exact ODE likelihood on fewer items.
    if settings.likelihood_items:
        logger.info("integrating the ODE likelihood of %d items per split", settings.likelihood_items)
        lik_settings = LikelihoodSettings(
            t_min=t_min, t_max=t_max, probes=settings.probes, probe=settings.probe, seed=settings.seed,
            batch_size=settings.batch_size, device=settings.device, progress=settings.progress,
        )
        nll = {}
        for split, (x, labels, ids) in {"train": (train_x, train_labels, train_ids), "heldout": (held_x, held_labels, held_ids)}.items():
            count = min(settings.likelihood_items, x.shape[0])
            result = log_likelihood(
                model, process, x[:count], lik_settings, labels=None if labels is None else labels[:count],
                second_moment=m2, quantization_step=step, item_ids=ids[:count], progress_factory=progress_factory,
            )
            nll[split] = (result.nll, ids[:count], float(result.evaluations.mean()))
        _add_gap(variables, values, "nll", "ODE negative log-likelihood", nll["train"][0], nll["heldout"][0], nll["train"][1], nll["heldout"][1], model.dim, step)
        variables["nll_evaluations_mean"] = _scalar(
            0.5 * (nll["train"][2] + nll["heldout"][2]), "1", "mean denoiser evaluations per item of the ODE likelihood"
        )

    # (c) near-copies among generated samples, against a held-out baseline.
    logger.info("generating %d samples and searching their nearest training items", settings.generate)
    generated = sample(
        model,
        process,
        settings.generate,
        SamplerSettings(
            sampler=settings.sampler, steps=settings.steps, seed=settings.seed, t_min=t_min, t_max=t_max,
            batch_size=settings.batch_size, device=settings.device, progress=settings.progress,
        ),
        second_moment=m2,
        progress_factory=progress_factory,
    )
    sample_nn = nearest_two(generated.x, train, settings.neighbour_chunk, settings.device)
    base_x, _, base_ids = choose_items(heldout, settings.generate, settings.seed, TAG_ITEMS_HELDOUT)
    base_nn = nearest_two(base_x, train, settings.neighbour_chunk, settings.device)
    if np.any(base_nn.nearest == 0):
        logger.warning(
            "%d held-out items are exact copies of training items; the held-out data overlaps the training data",
            int(np.sum(base_nn.nearest == 0)),
        )
    _add_copy_signal(variables, values, generated, sample_nn, base_nn, base_ids, settings)

    signals = build_signals(values, settings.thresholds)
    verdict = overall_verdict(signals)
    _add_table(variables, signals)
    dataset = xr.Dataset(variables)
    dataset.attrs.update(
        _audit_attrs(process, train, heldout, model, settings, t_min, t_max, step, signals, verdict, generated, provenance or {})
    )
    return dataset


def _scalar(value: float, units: str, long_name: str, **attrs: Any) -> xr.DataArray:
    return xr.DataArray(float(value), attrs={"units": units, "long_name": long_name, **attrs})


def _add_entropy_signal(variables, values, on_train, on_heldout, ceiling_run) -> None:
    s_train, s_train_se = float(on_train["s_nn"]), float(on_train["s_nn_stderr"])
    ceiling, ceiling_se = float(ceiling_run["s_tot"]), float(ceiling_run["s_tot_stderr"])
    variables["s_nn_train"] = _scalar(s_train, NATS, "neural entropy S_NN measured on the training data")
    variables["s_nn_train_stderr"] = _scalar(s_train_se, NATS, "Monte Carlo standard error of s_nn_train")
    variables["s_nn_heldout"] = _scalar(float(on_heldout["s_nn"]), NATS, "neural entropy S_NN measured on the held-out data")
    variables["s_nn_heldout_stderr"] = _scalar(float(on_heldout["s_nn_stderr"]), NATS, "Monte Carlo standard error of s_nn_heldout")
    variables["memorisation_ceiling"] = _scalar(
        ceiling, NATS, "S_tot of the empirical law of the training set (the perfect memoriser), same process, t_min and draws"
    )
    variables["memorisation_ceiling_stderr"] = _scalar(ceiling_se, NATS, "Monte Carlo standard error of memorisation_ceiling")
    variables["memoriser_s_nn"] = _scalar(
        float(ceiling_run["s_nn"]), NATS, "S_NN of the empirical-law oracle as a model (equals the ceiling)"
    )
    fraction = s_train / ceiling if ceiling > 0 else math.inf
    variables["ceiling_fraction"] = _scalar(fraction, "1", "s_nn_train / memorisation_ceiling")
    values["ceiling_fraction"] = fraction
    variables["ce_bound_bpd_train_measured"] = _scalar(
        float(on_train["ce_bound_bpd"]), BITS_PER_DIM, "cross-entropy bound of the S_NN measurement on the training data"
    )
    variables["ce_bound_bpd_heldout_measured"] = _scalar(
        float(on_heldout["ce_bound_bpd"]), BITS_PER_DIM, "cross-entropy bound of the S_NN measurement on the held-out data"
    )


def _add_gap(variables, values, prefix, what, train_nats, held_nats, train_ids, held_ids, dim, step) -> None:
    # NOTE: the offset −log2(Δ) assumes the model density is nearly constant within a bin of
    # width Δ. A memoriser concentrates its mass far inside one bin, so its training items
    # can get negative bits/dim.
    offset = -math.log2(step) if step else 0.0
    to_bpd = 1.0 / (dim * LN2)
    train_bpd = train_nats * to_bpd + offset
    held_bpd = held_nats * to_bpd + offset
    mean_train, se_train = _mean_se(train_bpd)
    mean_held, se_held = _mean_se(held_bpd)
    gap, gap_se = mean_held - mean_train, math.hypot(se_train, se_held)
    quantisation = {
        "quantization_step": step or 0.0,
        "quantization_convention": (
            f"bits/dim of the discrete data = continuous bits/dim − log2(Δ) with Δ = {step:g}" if step else "continuous data: no offset"
        ),
    }
    item_train, item_held = f"{prefix}_train_item", f"{prefix}_heldout_item"
    variables[f"{prefix}_train_items"] = xr.DataArray(train_nats, dims=(item_train,), attrs={"units": NATS, "long_name": f"{what} of each training item"})
    variables[f"{prefix}_heldout_items"] = xr.DataArray(held_nats, dims=(item_held,), attrs={"units": NATS, "long_name": f"{what} of each held-out item"})
    variables[f"{prefix}_train_item_index"] = xr.DataArray(train_ids, dims=(item_train,), attrs={"units": "1", "long_name": "index of the item in the training data"})
    variables[f"{prefix}_heldout_item_index"] = xr.DataArray(held_ids, dims=(item_held,), attrs={"units": "1", "long_name": "index of the item in the held-out data (draw number for a distribution)"})
    name = "ce_bound" if prefix == "ce" else prefix
    variables[f"{name}_bpd_train"] = _scalar(mean_train, BITS_PER_DIM, f"mean {what} of training items", **quantisation)
    variables[f"{name}_bpd_train_stderr"] = _scalar(se_train, BITS_PER_DIM, f"standard error over items of {name}_bpd_train")
    variables[f"{name}_bpd_heldout"] = _scalar(mean_held, BITS_PER_DIM, f"mean {what} of held-out items", **quantisation)
    variables[f"{name}_bpd_heldout_stderr"] = _scalar(se_held, BITS_PER_DIM, f"standard error over items of {name}_bpd_heldout")
    variables[f"{prefix}_gap_bpd"] = _scalar(gap, BITS_PER_DIM, f"held-out minus training {what}")
    variables[f"{prefix}_gap_bpd_stderr"] = _scalar(gap_se, BITS_PER_DIM, f"standard error of {prefix}_gap_bpd")
    values[f"{prefix}_gap_bpd"] = gap
    values[f"{prefix}_gap_bpd_stderr"] = gap_se


def _add_copy_signal(variables, values, generated, sample_nn: Neighbours, base_nn: Neighbours, base_ids, settings: AuditSettings) -> None:
    ratio_limit = settings.thresholds.copy_ratio
    sample_ratio = sample_nn.ratio
    base_ratio = base_nn.ratio
    fraction, fraction_se = _fraction_se(sample_ratio < ratio_limit)
    base_fraction, base_se = _fraction_se(base_ratio < ratio_limit)
    excess, excess_se = fraction - base_fraction, math.hypot(fraction_se, base_se)
    flat = generated.x.reshape(generated.x.shape[0], -1).numpy()
    variables["samples"] = xr.DataArray(flat, dims=("sample", "feature"), attrs={"units": "data units", "long_name": "generated samples, flattened"})
    variables["nn_distance"] = xr.DataArray(sample_nn.nearest, dims=("sample",), attrs={"units": "data units", "long_name": "Euclidean distance to the nearest training item"})
    variables["second_nn_distance"] = xr.DataArray(sample_nn.second, dims=("sample",), attrs={"units": "data units", "long_name": "Euclidean distance to the second-nearest training item"})
    variables["nn_ratio"] = xr.DataArray(sample_ratio, dims=("sample",), attrs={"units": "1", "long_name": "nn_distance / second_nn_distance"})
    variables["nn_index"] = xr.DataArray(sample_nn.nearest_index, dims=("sample",), attrs={"units": "1", "long_name": "index of the nearest training item"})
    variables["heldout_nn_ratio"] = xr.DataArray(base_ratio, dims=("baseline_item",), attrs={"units": "1", "long_name": "nearest / second-nearest training distance of held-out items"})
    variables["heldout_nn_distance"] = xr.DataArray(base_nn.nearest, dims=("baseline_item",), attrs={"units": "data units", "long_name": "distance of held-out items to their nearest training item"})
    variables["baseline_item_index"] = xr.DataArray(base_ids, dims=("baseline_item",), attrs={"units": "1", "long_name": "index of the baseline item in the held-out data"})
    variables["copy_fraction"] = _scalar(fraction, "1", f"fraction of samples with nn_ratio < {ratio_limit:.4g}", copy_ratio=ratio_limit)
    variables["copy_fraction_stderr"] = _scalar(fraction_se, "1", "binomial standard error of copy_fraction")
    variables["heldout_copy_fraction"] = _scalar(base_fraction, "1", f"fraction of held-out items with ratio < {ratio_limit:.4g} (chance level)")
    variables["heldout_copy_fraction_stderr"] = _scalar(base_se, "1", "binomial standard error of heldout_copy_fraction")
    variables["copy_excess"] = _scalar(excess, "1", "copy_fraction − heldout_copy_fraction")
    variables["copy_excess_stderr"] = _scalar(excess_se, "1", "standard error of copy_excess")
    order = np.argsort(sample_ratio, kind="stable")[: settings.pairs]
    variables["suspicious_sample"] = xr.DataArray(order, dims=("pair",), attrs={"units": "1", "long_name": "samples with the smallest nn_ratio, most suspicious first"})
    values["copy_excess"] = excess
    values["copy_excess_stderr"] = excess_se


def _add_table(variables, signals: list[Signal]) -> None:
    names = [s.name for s in signals]
    coords = {"signal": ("signal", names, {"units": "text", "long_name": "name of the audit signal"})}

    def table(values, units, long_name, dtype=None):
        return xr.DataArray(np.asarray(values, dtype=dtype), dims=("signal",), coords=coords, attrs={"units": units, "long_name": long_name})

    variables["signal_value"] = table([s.value for s in signals], "as in signal_units", "value of each audit signal", np.float64)
    variables["signal_threshold"] = table([s.threshold for s in signals], "as in signal_units", "threshold of each audit signal", np.float64)
    variables["signal_flagged"] = table([int(s.flagged) for s in signals], "1", "1 when the signal passes its threshold", np.int8)
    variables["signal_units"] = table([s.units for s in signals], "text", "units of signal_value and signal_threshold")
    variables["signal_rule"] = table([s.rule for s in signals], "text", "when the signal counts as flagged")


def _audit_attrs(process, train, heldout, model, settings, t_min, t_max, step, signals, verdict, generated, extra) -> dict[str, Any]:
    attrs = {
        "title": "entropy-probe memorisation audit",
        "package": "entropy-probe",
        "package_version": __version__,
        "torch_version": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "verdict": verdict,
        "verdict_rule": (
            "no flagged signal: no sign of memorisation; two or more flagged including ceiling_fraction or "
            "copy_excess: memorises training items; only likelihood gaps flagged: overfits; otherwise inconclusive"
        ),
        "signals": [asdict(s) for s in signals],
        "thresholds": asdict(settings.thresholds),
        "process": process.spec,
        "t_min": t_min,
        "t_max": t_max,
        "time_convention": "t = 0 is data, t = T is noise; entropies in nats",
        "train_data": train.spec,
        "train_size": len(train),
        "heldout_data": heldout.spec,
        "data_dim": model.dim,
        "quantization_step": step or 0.0,
        "prior_for_bounds": "prior π of the training data's second moment, for both splits",
        "sampler": generated.metadata(),
        "settings": asdict(settings),
        "model_fingerprint": model.fingerprint,
        "model_provenance": model.provenance,
    }
    attrs.update(extra)
    return attrs


def format_verdict(dataset: xr.Dataset) -> str:
    """Format the main numbers and the verdict table as text."""
    from .formatting import format_estimate, format_rows

    def value(name: str) -> str:
        return format_estimate(float(dataset[name]), float(dataset[name + "_stderr"]))

    step = float(dataset.attrs.get("quantization_step", 0.0) or 0.0)
    bpd = "bits/dim of the quantised data" if step else "bits/dim (continuous data)"
    rows = [
        ["S_NN on training data", value("s_nn_train"), "nats"],
        ["S_NN on held-out data", value("s_nn_heldout"), "nats"],
        ["memorisation ceiling", value("memorisation_ceiling"), "nats"],
        ["bound, training items", value("ce_bound_bpd_train"), bpd],
        ["bound, held-out items", value("ce_bound_bpd_heldout"), bpd],
    ]
    if "nll_bpd_train" in dataset:
        rows += [
            ["ODE NLL, training", value("nll_bpd_train"), bpd],
            ["ODE NLL, held-out", value("nll_bpd_heldout"), bpd],
        ]
    rows.append(
        ["near-copies", f"{float(dataset['copy_fraction']):.3f}", f"of samples, {float(dataset['heldout_copy_fraction']):.3f} of held-out items"]
    )
    lines = format_rows(rows)
    lines += [
        "",
        f"{'signal':<18} {'value':>12} {'threshold':>12}  {'flagged':<8} rule",
    ]
    for i, name in enumerate(dataset["signal"].values):
        flagged = "yes" if int(dataset["signal_flagged"].values[i]) else "no"
        lines.append(
            f"{str(name):<18} {float(dataset['signal_value'].values[i]):>12.4g} "
            f"{float(dataset['signal_threshold'].values[i]):>12.4g}  {flagged:<8} {dataset['signal_rule'].values[i]}"
        )
    lines += ["", f"verdict: {dataset.attrs['verdict']}"]
    return "\n".join(lines)
