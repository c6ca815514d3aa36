"""Monte Carlo estimates of entropy-production rates at the nodes of a time grid.

At time t with x_t = α x_0 + σ ε, every sample contributes (all multiplied by g²/2, so each
is a rate in nats per unit time):

- `nn`:    |e_θ|², whose mean is Ṡ_NN(t);
- `loss`:  |e_θ − s_c|² with s_c = −ε/σ − k x_t, the denoising loss (likelihood weighting);
- `cross`: ½(|e_θ|² + q(x_0) − |e_θ − s_c|²) with q(x_0) = E_ε[|s_c|² | x_0]
           = d/σ² + 2kd + k²(α²|x_0|² + σ²d); its mean is E[e_θ · s_c], the cross-term rate,
           with the |s_c|² fluctuation replaced by its conditional mean (lower variance);
- with a reference oracle (exact excess score s*): `tot` = |s*|² (Ṡ_tot) and
  `err` = |e_θ − s*|² (score-error rate).

Per node the estimator keeps the count, sum and sum of squares of every quantity, so batches,
resumed runs and ranks of a distributed run combine by addition.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .draws import STREAM_NODES, Draws
from .errors import NonFiniteError
from .field import Coefficients, EntropyMatchingField
from .quadrature import Grid

logger = logging.getLogger(__name__)

BASE_QUANTITIES = ("nn", "loss", "cross")
REFERENCE_QUANTITIES = ("tot", "err")


@dataclass
class NodeSums:
    """Count, sum and sum of squares of each quantity at each node (float64)."""

    quantities: tuple[str, ...]
    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def zeros(cls, nodes: int, quantities: tuple[str, ...]) -> "NodeSums":
        q = len(quantities)
        return cls(quantities, np.zeros(nodes), np.zeros((nodes, q)), np.zeros((nodes, q)))

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

    def mean(self, name: str) -> np.ndarray:
        j = self.quantities.index(name)
        return self.total[:, j] / np.maximum(self.count, 1.0)

    def variance_of_mean(self, name: str) -> np.ndarray:
        """Squared standard error of each node mean (sample variance / n)."""
        j = self.quantities.index(name)
        n = self.count
        mean = self.total[:, j] / np.maximum(n, 1.0)
        var = (self.total_sq[:, j] - n * mean * mean) / np.maximum(n - 1.0, 1.0)
        return np.clip(var, 0.0, None) / np.maximum(n, 1.0)


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
    x_t = alpha * x0 + sigma * noise
    e = field.excess_score(x_t, coeffs, labels)
    _check_finite(e, coeffs)
    dims = tuple(range(1, x0.dim()))
    d = math.prod(x0.shape[1:])
    half_g2 = 0.5 * coeffs.g2
    s_c = -noise / sigma - k * x_t
    nn = (e * e).sum(dims)
    loss = ((e - s_c) ** 2).sum(dims)
    x0_sq = (x0 * x0).sum(dims)
    kk = coeffs.k
    q = d / coeffs.sigma2 + 2.0 * kk * d + kk * kk * (coeffs.alpha**2 * x0_sq + coeffs.sigma2 * d)
    rates = {
        "nn": half_g2 * nn,
        "loss": half_g2 * loss,
        "cross": half_g2 * 0.5 * (nn + q - loss),
    }
    if reference is not None:
        # An oracle measured against itself: the exact score is the model's own output.
        same = reference.denoiser is field.denoiser and reference.process is field.process
        s_star = e if same else reference.excess_score(x_t, coeffs, labels)
        rates["tot"] = half_g2 * (s_star * s_star).sum(dims)
        rates["err"] = half_g2 * ((e - s_star) ** 2).sum(dims)
    return rates


def _check_finite(values: torch.Tensor, coeffs: Coefficients) -> None:
    finite = torch.isfinite(values.reshape(values.shape[0], -1)).all(dim=1)
    if bool(finite.all()):
        return
    bad = int(torch.nonzero(~finite)[0])
    raise NonFiniteError(
        f"the model returned non-finite values at t={float(coeffs.t[bad]):.6g} "
        f"(σ/α={float(coeffs.sigma_tilde[bad]):.6g}); no estimate was written. Check the "
        f"checkpoint, or exclude that time range with --t-min/--t-max"
    )


@dataclass
class Batch:
    """A batch of (node, sample range) segments."""

    segments: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(stop - start for _, start, stop in self.segments)


def plan_batches(nodes: int, samples: int, batch_size: int, first_item: int = 0) -> list[Batch]:
    """Cut the K·M items (node-major) into batches of at most `batch_size` items.

    `first_item` skips items already done (resumed runs).
    """
    batches: list[Batch] = []
    current = Batch()
    for node in range(nodes):
        start = max(0, first_item - node * samples)
        while start < samples:
            room = batch_size - current.size
            stop = min(samples, start + room)
            current.segments.append((node, start, stop))
            start = stop
            if current.size == batch_size:
                batches.append(current)
                current = Batch()
    if current.segments:
        batches.append(current)
    return batches


class GridEstimator:
    """Rates at the nodes of a grid from `samples` draws per node."""

    def __init__(self, grid: Grid, samples: int, draws: Draws, batch_size: int = 256, device: torch.device | str = "cpu") -> None:
        self.grid = grid
        self.samples = int(samples)
        self.draws = draws
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    def batches(self, first_item: int = 0) -> list[Batch]:
        return plan_batches(self.grid.size, self.samples, self.batch_size, first_item)

    def evaluate(
        self,
        batch: Batch,
        field: EntropyMatchingField,
        reference: Optional[EntropyMatchingField],
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Node index and per-sample rates of every item in the batch."""
        x0_parts, noise_parts, label_parts, node_parts = [], [], [], []
        for node, start, stop in batch.segments:
            x0, labels = self.draws.data(STREAM_NODES, node, start, stop)
            x0_parts.append(x0)
            noise_parts.append(self.draws.noise(STREAM_NODES, node, start, stop))
            label_parts.append(labels)
            node_parts.append(np.full(stop - start, node, dtype=np.int64))
        nodes = np.concatenate(node_parts)
        x0 = torch.cat(x0_parts).to(self.device)
        noise = torch.cat(noise_parts).to(self.device)
        labels = None if label_parts[0] is None else torch.cat(label_parts).to(self.device)
        coeffs = Coefficients.at(field.process, self.grid.t[nodes], self.device)
        with torch.inference_mode():
            rates = sample_rates(field, reference, x0, noise, coeffs, labels)
        return nodes, {name: value.cpu().numpy() for name, value in rates.items()}

    def run(
        self,
        field: EntropyMatchingField,
        reference: Optional[EntropyMatchingField] = None,
        sums: Optional[NodeSums] = None,
        first_item: int = 0,
        on_batch: Optional[Callable[[NodeSums, int], None]] = None,
        progress: Optional[Callable[[Iterator], Iterator]] = None,
    ) -> NodeSums:
        """Accumulate node sums over all batches; `on_batch(sums, items_done)` runs after each."""
        quantities = BASE_QUANTITIES + (REFERENCE_QUANTITIES if reference is not None else ())
        if sums is None:
            sums = NodeSums.zeros(self.grid.size, quantities)
        batches = self.batches(first_item)
        iterator: Iterator = iter(batches)
        if progress is not None:
            iterator = progress(iterator)
        done = first_item
        for batch in iterator:
            nodes, rates = self.evaluate(batch, field, reference)
            sums.add(nodes, rates)
            done += batch.size
            if on_batch is not None:
                on_batch(sums, done)
        return sums
