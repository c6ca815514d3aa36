"""Running one estimate: the engine and its throughput options, the design, and the sampling rounds.

`measure` (in `probe`) calls `setup_engine`, `make_design` and `run_rounds` in that order.

With a target standard error, a pilot round of `samples` units per cell only plans: its
per-cell spreads (averaged over neighbouring cells) give the Neyman allocation n_j ∝ |w_j| s_j
that reaches 85 % of the target. A fresh round with those counts and new draws is the estimate,
so its value is unbiased and its standard error honest, whatever the pilot saw. Only if that
round still falls short of the target (the pilot underestimated the spread) are further
rounds added and pooled with it. Those later counts depend on earlier values, which biases the
cell means by a term of order 1/n; `rounds` in the result says whether that happened (2 means
it did not). What the rounds assume: finite variances, and a pilot large enough for the
smoothed spreads to be roughly right (a few units per cell over tens of cells).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from . import distributed
from .denoiser import Denoiser
from .draws import STREAM_PILOT, Draws
from .errors import SpecError
from .estimators import (
    Engine,
    GridDesign,
    ImportanceDesign,
    NodeSums,
    next_counts,
    neyman_shares,
    planned_counts,
    relative_stderr,
    sample_rates,
)
from .evaluation import autocast, choose_batch_size, effective_options, is_cuda
from .field import Coefficients, EntropyMatchingField
from .processes import Process
from .proposals import gaussian_proposal, log_snr_proposal, pilot_proposal, uniform_t_proposal
from .quadrature import make_grid

logger = logging.getLogger(__name__)

#: Nodes and rule of the pilot run behind the `pilot` proposal.
PILOT_NODES = 33

#: Evaluation cap of a run with a target standard error when none is given.
DEFAULT_MAX_EVALUATIONS = 10_000_000

#: The estimating round aims at this fraction of the target standard error, because its
#: size is planned from a pilot's variance estimates, which are themselves uncertain.
PLANNING_MARGIN = 0.85


@dataclass
class EngineSetup:
    engine: Engine
    batch_size: int
    precision: str
    notes: list[str] = field(default_factory=list)
    batch_size_record: Optional[dict] = None


@dataclass
class RoundsOutcome:
    sums: NodeSums
    evaluations: int
    rounds: int
    target_met: Optional[bool]
    relative_stderr: float
    #: Evaluations of the pilot round that planned the sampling (not part of the estimate).
    planning_evaluations: int = 0


def setup_engine(
    model: Denoiser,
    field_: EntropyMatchingField,
    reference: Optional[EntropyMatchingField],
    draws: Draws,
    settings,
    device: str,
    context: distributed.Context,
) -> EngineSetup:
    """Apply the throughput options to the model and build the evaluation engine."""
    precision, compile_model, cuda_graphs, notes = effective_options(device, settings.precision, settings.compile, settings.cuda_graphs)
    image = len(draws.source.shape) == 3
    channels_last = settings.channels_last and image
    if settings.channels_last and not image:
        notes.append(f"--channels-last applies to image data (C, H, W); the data has shape {tuple(draws.source.shape)}")
    for note in model.prepare(channels_last=channels_last, compile=compile_model, cuda_graphs=cuda_graphs):
        logger.info(note)
        notes.append(note)
    autocast_context = (lambda: autocast(device, precision)) if precision != "fp32" else None
    engine = Engine(
        field_,
        reference,
        draws,
        device,
        batch_size=2 if settings.batch_size == "auto" else int(settings.batch_size),
        antithetic=settings.antithetic,
        autocast=autocast_context,
        channels_last=channels_last,
        pad=compile_model or cuda_graphs,
        prefetch=settings.prefetch,
        context=context,
    )
    record = None
    batch_size = engine.batch_size
    if settings.batch_size == "auto":
        batch_size, record = _auto_batch_size(model, engine, settings, device)
        engine.batch_size = batch_size
    return EngineSetup(engine, batch_size, precision, notes, record)


def _auto_batch_size(model: Denoiser, engine: Engine, settings, device: str) -> tuple[int, dict]:
    process = engine.field.process
    shape = tuple(engine.draws.source.shape)
    # Memory does not depend on the values; any time inside the process's range will do.
    t_probe = 0.5 * (process.default_t_min + process.default_t_max)
    counters = (model.evaluations, engine.reference.denoiser.evaluations if engine.reference is not None else 0)

    def probe(n: int) -> None:
        x0 = torch.zeros((n,) + shape, dtype=torch.float64, device=device)
        noise = torch.ones_like(x0)
        labels = torch.zeros(n, dtype=torch.int64, device=device) if model.num_classes else None
        coeffs = Coefficients.at(process, np.full(n, t_probe), device)
        context = engine.autocast() if engine.autocast is not None else contextlib.nullcontext()
        with torch.inference_mode(), context:
            sample_rates(engine.field, engine.reference, x0, noise, coeffs, labels)

    budget = settings.memory_budget_gb * 2**30 if settings.memory_budget_gb else None
    network = model.network if isinstance(model.network, torch.nn.Module) else None
    batch, record = choose_batch_size(probe, device, int(np.prod(shape)), network, budget, units_per_item=1)
    if engine.antithetic:
        batch = max(2, batch - batch % 2)
    model.evaluations = counters[0]
    if engine.reference is not None:
        engine.reference.denoiser.evaluations = counters[1]
    if is_cuda(device):
        torch.cuda.empty_cache()
    return batch, record


def make_design(settings, process: Process, data, t_min: float, t_max: float, engine: Engine, progress=None):
    """Return the design of the estimate and the network evaluations spent on building it."""
    if settings.estimator == "grid":
        return GridDesign(make_grid(process, t_min, t_max, settings.nodes, settings.rule)), 0
    kind = settings.proposal
    evaluations = 0
    if kind == "gaussian":
        proposal = gaussian_proposal(process, t_min, t_max, data.mean(), data.covariance_eigenvalues(), settings.defensive)
    elif kind == "pilot":
        pilot = GridDesign(make_grid(process, t_min, t_max, PILOT_NODES, "simpson"), stream=STREAM_PILOT)
        counts = np.full(PILOT_NODES, settings.pilot_samples)
        result = engine.run(pilot, np.zeros_like(counts), counts, progress=_labelled(progress, "pilot"))
        evaluations = result.evaluations
        proposal = pilot_proposal(process, pilot.grid, result.sums.mean("nn"), settings.defensive)
    elif kind == "log-snr":
        proposal = log_snr_proposal(process, t_min, t_max)
    else:
        proposal = uniform_t_proposal(process, t_min, t_max)
    return ImportanceDesign(proposal, settings.strata), evaluations


def _labelled(progress, label: str):
    if progress is None:
        return None
    return lambda iterator, total: progress(iterator, total, label)


def run_rounds(
    engine: Engine,
    design,
    settings,
    spent: int = 0,
    sums: Optional[NodeSums] = None,
    first_item: int = 0,
    on_batch: Optional[Callable[[NodeSums, int], None]] = None,
    progress=None,
) -> RoundsOutcome:
    """Sample the design: one round of `settings.samples` per cell, or rounds towards the target."""
    weights = design.grid.weights
    cells = design.grid.size
    counts = np.full(cells, settings.samples, dtype=np.int64)
    zeros = np.zeros(cells, dtype=np.int64)
    if settings.target_stderr is None:
        first = engine.run(
            design, zeros, counts, first_unit=first_item, progress=_labelled(progress, "measure"), on_batch=on_batch, base=sums
        )
        total = first.sums
        if sums is not None:
            total.merge(sums)
        return RoundsOutcome(total, spent + first.evaluations, 1, None, relative_stderr(total, weights))
    return _run_towards_target(engine, design, settings, spent, counts, progress)


def _run_towards_target(engine: Engine, design, settings, spent: int, counts: np.ndarray, progress) -> RoundsOutcome:
    """Plan with a pilot round, estimate from a fresh round, add rounds only if it falls short."""
    weights = design.grid.weights
    target = settings.target_stderr
    cap = max_evaluations(settings)
    pilot = engine.run(design, np.zeros_like(counts), counts, progress=_labelled(progress, "pilot round"))
    evaluations = spent + pilot.evaluations

    estimate = float(weights @ pilot.sums.mean("nn"))
    shares = neyman_shares(pilot.sums, weights)
    target_variance = (PLANNING_MARGIN * target * estimate) ** 2
    if not (target_variance > 0 and shares.sum() > 0):
        logger.warning("the pilot round gives S_NN = %.4g, so no relative precision can be planned; reporting the pilot round", estimate)
        return RoundsOutcome(pilot.sums, evaluations, 1, False, relative_stderr(pilot.sums, weights), pilot.evaluations)
    planned = planned_counts(shares, target_variance)
    affordable = _affordable(cap, evaluations, engine)
    if affordable < 2 * planned.size:
        logger.warning("--max-evaluations %s leaves no room for a round after the pilot; reporting the pilot round", cap)
        return RoundsOutcome(pilot.sums, evaluations, 1, False, relative_stderr(pilot.sums, weights), pilot.evaluations)
    if planned.sum() > affordable:
        planned = np.maximum(np.floor(planned * affordable / planned.sum()), 2).astype(np.int64)
        logger.warning(
            "the target needs about %d more evaluations, more than --max-evaluations %s allows; measuring with %d",
            int(planned_counts(shares, target_variance).sum() * engine.evaluations_per_unit), cap,
            int(planned.sum() * engine.evaluations_per_unit),
        )
    start = counts
    stop = counts + planned
    final = engine.run(design, start, stop, progress=_labelled(progress, "measure"))
    total = final.sums
    evaluations += final.evaluations
    rounds = 2

    while relative_stderr(total, weights) > target:
        new_counts = next_counts(total, weights, target, _affordable(cap, evaluations, engine))
        if new_counts is None:
            logger.warning(
                "relative standard error %.3g of S_NN is above the target %.3g, and the evaluation cap %s "
                "allows no further round; raise --max-evaluations or --samples (the pilot round)",
                relative_stderr(total, weights), target, cap,
            )
            break
        rounds += 1
        added = new_counts - total.count.astype(np.int64)
        logger.info(
            "round %d: relative standard error %.3g > target %.3g; adding %d samples",
            rounds, relative_stderr(total, weights), target, int(added.sum()),
        )
        extra = engine.run(design, stop, stop + added, progress=_labelled(progress, f"round {rounds}"))
        stop = stop + added
        total.merge(extra.sums)
        evaluations += extra.evaluations
    achieved = relative_stderr(total, weights)
    return RoundsOutcome(total, evaluations, rounds, achieved <= target, achieved, pilot.evaluations)


def _affordable(cap: Optional[int], evaluations: int, engine: Engine) -> int:
    if cap is None:
        return 2**62
    return max(0, (cap - evaluations) // engine.evaluations_per_unit)


def max_evaluations(settings) -> Optional[int]:
    if settings.max_evaluations is not None:
        return int(settings.max_evaluations)
    return DEFAULT_MAX_EVALUATIONS if settings.target_stderr is not None else None


def planned_evaluations(settings) -> int:
    """Network evaluations of the first round and of a pilot run."""
    cells = settings.nodes if settings.estimator == "grid" else settings.strata
    pilot = PILOT_NODES * settings.pilot_samples if settings.estimator == "importance" and settings.proposal == "pilot" else 0
    return cells * settings.samples * (2 if settings.antithetic else 1) + pilot


def check_budget(settings) -> None:
    cap = max_evaluations(settings)
    needed = planned_evaluations(settings)
    if cap is not None and needed > cap:
        raise SpecError(
            f"the first round needs {needed} network evaluations, more than --max-evaluations {cap}; "
            f"lower --samples (or --nodes/--strata) or raise --max-evaluations"
        )


def describe_design(design, settings) -> dict[str, Any]:
    """Return the attributes that describe how the estimate was sampled."""
    attrs: dict[str, Any] = {"estimator": design.kind, "antithetic": bool(settings.antithetic)}
    if design.kind == "importance":
        attrs.update(
            proposal=design.proposal.kind,
            strata=design.strata,
            defensive_weight=settings.defensive if design.proposal.kind in ("gaussian", "pilot") else 0.0,
        )
    return attrs
