"""Running one estimate: the engine and its throughput options, the design, and the sampling rounds.

`measure` (in `probe`) calls `setup_engine`, `make_design` and `run_rounds` in that order.
With a target standard error, the first round takes `samples` units per cell and every later
round adds units where they reduce the variance most (see `estimators.next_counts`), until
the relative standard error of S_NN reaches the target or the evaluation cap is spent.

What the adaptive rounds assume: every cell's values have a finite variance, and the first
round is large enough (a few units per cell, tens of cells) for the pooled variance
estimates to be roughly right. The estimate stays the weighted sum of cell means, and its
standard error is computed from the final counts. Because the counts of later rounds depend
on earlier values, the cell means are not exactly unbiased; the bias is of order 1/n per
cell, far below the standard error at the sample sizes used (the oracle tests check the
mean over many repeated adaptive estimates against the exact value).
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
from .estimators import Engine, GridDesign, ImportanceDesign, NodeSums, next_counts, relative_stderr, sample_rates
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
    """Sample `settings.samples` units per cell, then add rounds until the target is met."""
    weights = design.grid.weights
    cells = design.grid.size
    counts = np.full(cells, settings.samples, dtype=np.int64)
    cap = max_evaluations(settings)
    first = engine.run(
        design, np.zeros(cells, dtype=np.int64), counts, first_unit=first_item,
        progress=_labelled(progress, "measure"), on_batch=on_batch, base=sums,
    )
    total = first.sums
    if sums is not None:
        total.merge(sums)
    evaluations = spent + first.evaluations
    rounds = 1
    target_met: Optional[bool] = None
    target = settings.target_stderr
    while target is not None:
        achieved = relative_stderr(total, weights)
        if achieved <= target:
            target_met = True
            break
        affordable = (cap - evaluations) // engine.evaluations_per_unit if cap is not None else 2**62
        new_counts = next_counts(total, weights, target, affordable)
        if new_counts is None:
            target_met = False
            logger.warning(
                "relative standard error %.3g of S_NN is above the target %.3g, and the evaluation cap %s "
                "allows no further round; raise --max-evaluations to go further",
                achieved, target, cap,
            )
            break
        rounds += 1
        logger.info(
            "round %d: relative standard error %.3g > target %.3g; adding %d samples",
            rounds, achieved, target, int((new_counts - counts).sum()),
        )
        result = engine.run(design, counts, new_counts, progress=_labelled(progress, f"round {rounds}"))
        total.merge(result.sums)
        counts = new_counts
        evaluations += result.evaluations
    return RoundsOutcome(total, evaluations, rounds, target_met, relative_stderr(total, weights))


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
    """Attributes that say how the estimate was sampled."""
    attrs: dict[str, Any] = {"estimator": design.kind, "antithetic": bool(settings.antithetic)}
    if design.kind == "importance":
        attrs.update(
            proposal=design.proposal.kind,
            strata=design.strata,
            defensive_weight=settings.defensive if design.proposal.kind in ("gaussian", "pilot") else 0.0,
        )
    return attrs
