"""Monte Carlo estimates of entropy-production integrals: per-sample rates, designs and their sums.

At time t with x_t = α x_0 + σ ε, every sample contributes (all multiplied by g²/2, so each
is a rate in nats per unit time):

- `nn`:    |e_θ|², whose mean is Ṡ_NN(t);
- `loss`:  |e_θ − s_c|² with s_c = −ε/σ − k x_t, the denoising loss (likelihood weighting);
- `cross`: ½(|e_θ|² + q(x_0) − |e_θ − s_c|²) with q(x_0) = E_ε[|s_c|² | x_0]
           = d/σ² + 2kd + k²(α²|x_0|² + σ²d); its mean is E[e_θ · s_c], the cross-term rate,
           with the |s_c|² fluctuation replaced by its conditional mean (lower variance);
- with a reference oracle (exact excess score s*): `tot` = |s*|² (Ṡ_tot) and
  `err` = |e_θ − s*|² (score-error rate).

A design turns these rates into an integral over [t_min, T] as Σ_j w_j × (mean of the values
in cell j), where a cell is a node or a stratum:

- `GridDesign`: cell j is the node t_j of a quadrature rule with weight w_j; a value is the
  rate at t_j. Assumes the rate is smooth enough in log σ̃ for the rule; the standard error
  covers the Monte Carlo error only, not the quadrature error.
- `ImportanceDesign`: t is drawn per sample from a proposal q(t), stratified into S cells of
  equal probability. A value is rate(t) / (S q(t) w_j), with w_j the width of stratum j in t.
  Then Σ_j w_j × mean is unbiased for the integral, and each cell mean is unbiased for the
  average rate over its stratum. Assumes q > 0 wherever the rate is positive (the proposals
  mix in a uniform density for this) and a finite variance of rate/q.

Standard errors treat the cell means as independent with variance (sample variance)/n. With
antithetic pairs the unit of a cell is the mean over the pair (x_0, ε) and (x_0, −ε), so the
sample variance is that of pair means. Per cell the sums keep count, Σ and Σ² of every
quantity, so batches, rounds, resumed runs and the ranks of a distributed run combine by
addition.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from . import distributed
from .draws import STREAM_NODES, STREAM_TIMES, Draws
from .errors import NonFiniteError
from .evaluation import prefetched
from .field import Coefficients, EntropyMatchingField
from .proposals import Proposal
from .quadrature import Grid

logger = logging.getLogger(__name__)

BASE_QUANTITIES = ("nn", "loss", "cross")
REFERENCE_QUANTITIES = ("tot", "err")

#: A (cell, first sample index, end sample index) range of items.
Segment = tuple[int, int, int]


@dataclass
class NodeSums:
    """Count, sum and sum of squares of each quantity at each cell (float64)."""

    quantities: tuple[str, ...]
    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def zeros(cls, nodes: int, quantities: tuple[str, ...]) -> "NodeSums":
        q = len(quantities)
        return cls(tuple(quantities), np.zeros(nodes), np.zeros((nodes, q)), np.zeros((nodes, q)))

    def add(self, nodes: np.ndarray, values: dict[str, np.ndarray]) -> None:
        np.add.at(self.count, nodes, 1.0)
        for j, name in enumerate(self.quantities):
            v = values[name]
            np.add.at(self.total[:, j], nodes, v)
            np.add.at(self.total_sq[:, j], nodes, v * v)

    def merge(self, other: "NodeSums") -> None:
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    def copy(self) -> "NodeSums":
        return NodeSums(self.quantities, self.count.copy(), self.total.copy(), self.total_sq.copy())

    def mean(self, name: str) -> np.ndarray:
        j = self.quantities.index(name)
        return self.total[:, j] / np.maximum(self.count, 1.0)

    def variance_of_mean(self, name: str) -> np.ndarray:
        """Squared standard error of each cell mean (sample variance / n)."""
        j = self.quantities.index(name)
        n = self.count
        mean = self.total[:, j] / np.maximum(n, 1.0)
        var = (self.total_sq[:, j] - n * mean * mean) / np.maximum(n - 1.0, 1.0)
        return np.clip(var, 0.0, None) / np.maximum(n, 1.0)

    def integral(self, name: str, weights: np.ndarray) -> tuple[float, float]:
        """Σ_j w_j mean_j and its standard error."""
        estimate = float(weights @ self.mean(name))
        return estimate, math.sqrt(float((weights**2) @ self.variance_of_mean(name)))


# --- per-sample rates ---------------------------------------------------------------------------

def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = a.shape[0]
    return torch.einsum("bi,bi->b", a.reshape(n, -1), b.reshape(n, -1))


def sample_rates(
    field: EntropyMatchingField,
    reference: Optional[EntropyMatchingField],
    x0: torch.Tensor,
    noise: torch.Tensor,
    coeffs: Coefficients,
    labels: Optional[torch.Tensor] = None,
) -> dict[str, torch.Tensor]:
    """Per-sample rates (nats per unit time, float64, shape (B,)) at the times in `coeffs`."""
    alpha = coeffs.expand("alpha", x0)
    sigma = coeffs.expand("sigma", x0)
    k = coeffs.expand("k", x0)
    x_t = torch.addcmul(alpha * x0, sigma, noise)

    score = field.score(x_t, coeffs, labels)
    # e_θ = score − k x_t, and e_θ − s_c = score + ε/σ: the k x_t terms cancel exactly.
    e = torch.addcmul(score, k, x_t, value=-1.0)
    residual = torch.addcmul(score, noise, 1.0 / sigma)
    nn = _row_dot(e, e)
    check_finite(nn, coeffs)

    loss = _row_dot(residual, residual)
    x0_sq = _row_dot(x0, x0)
    d = math.prod(x0.shape[1:])
    kk = coeffs.k
    q = d / coeffs.sigma2 + 2.0 * kk * d + kk * kk * (coeffs.alpha**2 * x0_sq + coeffs.sigma2 * d)
    half_g2 = 0.5 * coeffs.g2
    rates = {
        "nn": half_g2 * nn,
        "loss": half_g2 * loss,
        "cross": half_g2 * 0.5 * (nn + q - loss),
    }

    if reference is not None:
        # An oracle measured against itself: the exact score is the model's own output.
        if reference.denoiser is field.denoiser and reference.process is field.process:
            rates["tot"] = rates["nn"]
            rates["err"] = torch.zeros_like(nn)
        else:
            s_star = reference.excess_score(x_t, coeffs, labels)
            difference = e - s_star
            rates["tot"] = half_g2 * _row_dot(s_star, s_star)
            rates["err"] = half_g2 * _row_dot(difference, difference)
    return rates


def check_finite(values: torch.Tensor, coeffs: Coefficients) -> None:
    """Raise NonFiniteError naming the first time at which a per-sample value is not finite."""
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    bad = int(torch.nonzero(~finite)[0])
    raise NonFiniteError(
        f"the model returned non-finite values at t={float(coeffs.t[bad]):.6g} "
        f"(σ/α={float(coeffs.sigma_tilde[bad]):.6g}); no estimate was written. Check the "
        f"checkpoint, or exclude that time range with --t-min/--t-max"
    )


# --- designs ------------------------------------------------------------------------------------

class GridDesign:
    """Fixed nodes of a quadrature rule; every sample of cell j is at time t_j."""

    kind = "grid"

    def __init__(self, grid: Grid, stream: int = STREAM_NODES) -> None:
        self.grid = grid
        self.stream = stream

    def times(self, draws: Draws, segments: Sequence[Segment]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Per-sample times and value factors (None: all 1) for the items of `segments`."""
        t = np.concatenate([np.full(stop - start, self.grid.t[cell]) for cell, start, stop in segments])
        return t, None


class ImportanceDesign:
    """Times drawn per sample from a proposal, stratified into cells of equal probability."""

    kind = "importance"

    def __init__(self, proposal: Proposal, strata: int, stream: int = STREAM_NODES) -> None:
        self.proposal = proposal
        self.strata = int(strata)
        self.grid = proposal.strata_grid(self.strata)
        self.stream = stream

    def times(self, draws: Draws, segments: Sequence[Segment]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        cells = np.concatenate([np.full(stop - start, cell) for cell, start, stop in segments])
        uniforms = np.concatenate([draws.uniforms(STREAM_TIMES, cell, start, stop) for cell, start, stop in segments])
        t, density = self.proposal.sample_t((cells + uniforms) / self.strata)
        factor = 1.0 / (self.strata * density * self.grid.weights[cells])
        return t, factor


# --- planning items into batches ------------------------------------------------------------------

def round_segments(start_counts: np.ndarray, stop_counts: np.ndarray) -> list[Segment]:
    """Return the items [start_j, stop_j) of every cell j as segments, cell-major."""
    return [(cell, int(a), int(b)) for cell, (a, b) in enumerate(zip(start_counts, stop_counts)) if b > a]


def take_units(segments: Sequence[Segment], first: int, last: int) -> list[Segment]:
    """Return the part of `segments` from unit ordinal `first` to `last` (ordinals count cell-major)."""
    taken = []
    position = 0
    for cell, start, stop in segments:
        size = stop - start
        lo, hi = max(first - position, 0), min(last - position, size)
        if lo < hi:
            taken.append((cell, start + lo, start + hi))
        position += size
    return taken


def cut_batches(segments: Sequence[Segment], units_per_batch: int) -> list[list[Segment]]:
    """Cut segments into batches of at most `units_per_batch` units."""
    batches: list[list[Segment]] = []
    current: list[Segment] = []
    room = units_per_batch
    for cell, start, stop in segments:
        while start < stop:
            take = min(room, stop - start)
            current.append((cell, start, start + take))
            start += take
            room -= take
            if room == 0:
                batches.append(current)
                current, room = [], units_per_batch
    if current:
        batches.append(current)
    return batches


# --- the evaluation engine ------------------------------------------------------------------------

@dataclass
class Prepared:
    """One batch ready for the device: draws, times and where each unit's values go."""

    x0: torch.Tensor
    noise: torch.Tensor
    labels: Optional[torch.Tensor]
    coeffs: Coefficients
    factor: Optional[torch.Tensor]
    cells: torch.Tensor
    units: int
    evaluations: int


@dataclass
class RoundResult:
    sums: NodeSums
    evaluations: int


class Engine:
    """Evaluates the items of a design in batches and adds up their values per cell.

    `batch_size` counts network evaluations; with antithetic pairs a batch holds half as many
    units. With `pad` every batch is padded to the full size (fixed shapes for compiled
    networks); padded items are evaluated and dropped. In a distributed run each rank takes a
    contiguous block of the units of every round and the sums are added over the ranks.
    """

    def __init__(
        self,
        field: EntropyMatchingField,
        reference: Optional[EntropyMatchingField],
        draws: Draws,
        device: str | torch.device,
        batch_size: int,
        *,
        antithetic: bool = False,
        autocast: Optional[Callable] = None,
        channels_last: bool = False,
        pad: bool = False,
        prefetch: bool = True,
        context: Optional[distributed.Context] = None,
    ) -> None:
        self.field = field
        self.reference = reference
        self.draws = draws
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.antithetic = antithetic
        self.autocast = autocast
        self.channels_last = channels_last
        self.pad = pad
        self.prefetch = prefetch
        self.context = context or distributed.Context(device=str(device))
        self.quantities = BASE_QUANTITIES + (REFERENCE_QUANTITIES if reference is not None else ())

    @property
    def units_per_batch(self) -> int:
        return max(1, self.batch_size // 2) if self.antithetic else self.batch_size

    @property
    def evaluations_per_unit(self) -> int:
        return 2 if self.antithetic else 1

    # --- one batch ------------------------------------------------------------------------
    def prepare(self, design, segments: Sequence[Segment]) -> Prepared:
        """Draw x_0, ε and t for the items of `segments` and move them to the device."""
        x0_parts, label_parts, cells = [], [], []
        units = sum(stop - start for _, start, stop in segments)
        noise = np.empty((units,) + tuple(self.draws.source.shape))
        at = 0
        for cell, start, stop in segments:
            x0, labels = self.draws.data(design.stream, cell, start, stop)
            x0_parts.append(x0)
            label_parts.append(labels)
            self.draws.noise(design.stream, cell, start, stop, out=noise[at : at + stop - start])
            cells.append(np.full(stop - start, cell, dtype=np.int64))
            at += stop - start
        x0 = torch.cat(x0_parts)
        noise_t = torch.from_numpy(noise)
        labels = None if label_parts[0] is None else torch.cat(label_parts)
        t, factor = design.times(self.draws, segments)
        if self.antithetic:
            x0 = torch.cat([x0, x0])
            noise_t = torch.cat([noise_t, -noise_t])
            labels = None if labels is None else torch.cat([labels, labels])
            t = np.concatenate([t, t])
        evaluations = x0.shape[0]
        if self.pad and evaluations < self.batch_size:
            extra = self.batch_size - evaluations
            x0 = torch.cat([x0, x0[-1:].expand((extra,) + x0.shape[1:])])
            noise_t = torch.cat([noise_t, noise_t[-1:].expand((extra,) + noise_t.shape[1:])])
            labels = None if labels is None else torch.cat([labels, labels[-1:].expand(extra)])
            t = np.concatenate([t, np.full(extra, t[-1])])
            evaluations = self.batch_size
        return Prepared(
            x0=self._to_device(x0),
            noise=self._to_device(noise_t),
            labels=None if labels is None else self._to_device(labels),
            coeffs=Coefficients.at(self.field.process, t, self.device),
            factor=None if factor is None else torch.as_tensor(factor, device=self.device),
            cells=self._to_device(torch.from_numpy(np.concatenate(cells))),
            units=units,
            evaluations=evaluations,
        )

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def evaluate(self, batch: Prepared) -> torch.Tensor:
        """Values (units, quantities) of a prepared batch: rates times factors, pairs averaged."""
        context = self.autocast() if self.autocast is not None else contextlib.nullcontext()
        with torch.inference_mode(), context:
            rates = sample_rates(self.field, self.reference, batch.x0, batch.noise, batch.coeffs, batch.labels)
        values = torch.stack([rates[name] for name in self.quantities], dim=1)
        if self.antithetic:
            values = 0.5 * (values[: batch.units] + values[batch.units : 2 * batch.units])
        else:
            values = values[: batch.units]
        if batch.factor is not None:
            values = values * batch.factor[:, None]
        return values

    # --- one round --------------------------------------------------------------------------
    def run(
        self,
        design,
        start_counts: np.ndarray,
        stop_counts: np.ndarray,
        *,
        first_unit: int = 0,
        progress: Optional[Callable[[Iterator, int], Iterator]] = None,
        on_batch: Optional[Callable[[NodeSums, int], None]] = None,
        base: Optional[NodeSums] = None,
    ) -> RoundResult:
        """Evaluate items [start_j, stop_j) of every cell j; return their sums over all ranks.

        `first_unit` skips units already done (a resumed run); `on_batch(sums, units_done)`
        receives `base` plus the sums so far after every batch (single process only).
        """
        segments = round_segments(start_counts, stop_counts)
        total_units = sum(stop - start for _, start, stop in segments)
        low, high = distributed.shard_range(total_units - first_unit, self.context)
        mine = take_units(segments, first_unit + low, first_unit + high)
        batches = cut_batches(mine, self.units_per_batch)

        cells = design.grid.size
        count = torch.zeros(cells, dtype=torch.float64, device=self.device)
        total = torch.zeros((cells, len(self.quantities)), dtype=torch.float64, device=self.device)
        total_sq = torch.zeros_like(total)
        evaluations = 0
        done = first_unit
        iterator: Iterator = prefetched(batches, lambda segs: self.prepare(design, segs), self.prefetch)
        if progress is not None:
            iterator = progress(iterator, len(batches))
        for batch in iterator:
            values = self.evaluate(batch)
            count.index_add_(0, batch.cells, torch.ones(batch.units, dtype=torch.float64, device=self.device))
            total.index_add_(0, batch.cells, values)
            total_sq.index_add_(0, batch.cells, values * values)
            evaluations += batch.evaluations
            done += batch.units
            if on_batch is not None:
                partial = _to_sums(self.quantities, count, total, total_sq)
                if base is not None:
                    partial.merge(base)
                on_batch(partial, done)

        sums = distributed.all_reduce_sums(_to_sums(self.quantities, count, total, total_sq))
        evaluations = int(distributed.all_reduce_sum(torch.tensor([float(evaluations)], dtype=torch.float64)).item())
        return RoundResult(sums, evaluations)


def _to_sums(quantities, count, total, total_sq) -> NodeSums:
    return NodeSums(tuple(quantities), count.cpu().numpy().copy(), total.cpu().numpy().copy(), total_sq.cpu().numpy().copy())


# --- rounds towards a target standard error ---------------------------------------------------------

def neyman_shares(sums: NodeSums, weights: np.ndarray, quantity: str = "nn", smooth: int = 2, floor: float = 0.1) -> np.ndarray:
    """Return |w_j| s_j per cell, with s_j the spread of a unit's value in cell j.

    The variances are averaged over the 2·`smooth` + 1 neighbouring cells (cells are ordered in
    time), which steadies estimates from a few samples per cell. Each share is at least
    `floor` times the mean share, so a cell whose few samples happened to agree is not starved.
    """
    variance = sums.variance_of_mean(quantity) * sums.count
    if smooth > 0 and variance.size > 1:
        cumulative = np.concatenate([[0.0], np.cumsum(variance)])
        index = np.arange(variance.size)
        low = np.maximum(index - smooth, 0)
        high = np.minimum(index + smooth + 1, variance.size)
        variance = (cumulative[high] - cumulative[low]) / (high - low)
    share = np.abs(weights) * np.sqrt(variance)
    return np.maximum(share, floor * share.mean())


def planned_counts(shares: np.ndarray, target_variance: float, minimum: int = 2) -> np.ndarray:
    """Return the counts n_j ∝ shares_j whose variance Σ shares_j²/n_j equals `target_variance`.

    Neyman allocation: at a fixed total Σ n_j the variance Σ_j w_j² s_j²/n_j is smallest for
    n_j ∝ |w_j| s_j, and then equals (Σ_j |w_j| s_j)² / Σ_j n_j.
    """
    wanted = np.ceil(shares * shares.sum() / target_variance)
    return np.maximum(wanted, minimum).astype(np.int64)


def next_counts(
    sums: NodeSums,
    weights: np.ndarray,
    target_relative: float,
    affordable_units: int,
    quantity: str = "nn",
    growth: float = 4.0,
) -> Optional[np.ndarray]:
    """Return the cell counts after one more round, or None when no affordable round can help.

    The round adds samples (never removes) towards the Neyman counts that reach 95 % of the
    target, at most `growth` times the units so far and at most `affordable_units`.
    """
    n = sums.count
    estimate = float(weights @ sums.mean(quantity))
    shares = neyman_shares(sums, weights, quantity)
    target_variance = (0.95 * target_relative * abs(estimate)) ** 2
    if not (target_variance > 0 and shares.sum() > 0):
        return None
    extra = np.maximum(planned_counts(shares, target_variance) - n, 0.0)
    cap = min(growth * n.sum(), float(affordable_units))
    if extra.sum() > cap:
        extra = np.floor(extra * cap / extra.sum())
    if extra.sum() < 1:
        return None
    return (n + extra).astype(np.int64)


def relative_stderr(sums: NodeSums, weights: np.ndarray, quantity: str = "nn") -> float:
    estimate, stderr = sums.integral(quantity, weights)
    return stderr / abs(estimate) if estimate != 0 else math.inf
