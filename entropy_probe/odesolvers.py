"""Batched embedded Runge–Kutta integration with a step size of its own for every item.

`dormand_prince` integrates dy/ds = F(y, s) for a batch of independent systems (one per data
item or sample) with the Dormand–Prince 5(4) pair (J. R. Dormand and P. J. Prince, "A family
of embedded Runge–Kutta formulae", J. Comput. Appl. Math. 6, 1980), first-same-as-last, local
extrapolation, and the step-size control of Hairer, Nørsett and Wanner, "Solving Ordinary
Differential Equations I", section II.4. Every item has its own position, step size and error
test, so an item's trajectory and its number of function evaluations do not depend on the other
items in the batch: results are the same for any batch size.

States are float64 tensors of shape (B, D); the right-hand side is called only on the items
that are still integrating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import NonFiniteError

#: F(y, s, index) -> dy/ds for the items `index` (int64, shape (b,)) at positions s (shape (b,)).
RightHandSide = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Dormand–Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6] + (0.0,)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_ERROR_WEIGHTS = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))

_SAFETY = 0.9
_MIN_FACTOR = 0.2
_MAX_FACTOR = 10.0
_ORDER = 5


@dataclass
class SolveResult:
    """End states and the cost of the integration, per item."""

    y: torch.Tensor
    #: Right-hand-side evaluations per item (int64, shape (B,)).
    evaluations: torch.Tensor
    accepted_steps: torch.Tensor
    rejected_steps: torch.Tensor


class StepLimitError(NonFiniteError):
    """The adaptive solver needed more steps than allowed."""


def _rms_norm(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.mean((values / scale) ** 2, dim=1))


def _initial_step(
    rhs: RightHandSide,
    y: torch.Tensor,
    s: torch.Tensor,
    direction: torch.Tensor,
    span: torch.Tensor,
    f0: torch.Tensor,
    index: torch.Tensor,
    rtol: float,
    atol: float,
) -> torch.Tensor:
    """Starting step size per item (Hairer, Nørsett and Wanner, section II.4); one evaluation."""
    scale = atol + rtol * y.abs()
    d0 = _rms_norm(y, scale)
    d1 = _rms_norm(f0, scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, span)
    y1 = y + (direction * h0)[:, None] * f0
    f1 = rhs(y1, s + direction * h0, index)
    d2 = _rms_norm(f1 - f0, scale) / h0
    largest = torch.maximum(d1, d2)
    h1 = torch.where(largest <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3), (0.01 / largest) ** (1.0 / _ORDER))
    return torch.minimum(torch.minimum(100.0 * h0, h1), span)


def dormand_prince(
    rhs: RightHandSide,
    y0: torch.Tensor,
    s_start: float,
    s_end: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> SolveResult:
    """Integrate dy/ds = rhs(y, s, index) from s_start to s_end for every row of y0.

    s_end may be smaller than s_start (integration backwards). Raises StepLimitError when an
    item needs more than `max_steps` attempted steps, and NonFiniteError when the right-hand
    side returns non-finite values.
    """
    if y0.dim() != 2:
        raise ValueError(f"states must have shape (B, D), not {tuple(y0.shape)}")
    batch = y0.shape[0]
    device = y0.device
    y = y0.clone()
    s = torch.full((batch,), float(s_start), dtype=torch.float64, device=device)
    end = torch.full_like(s, float(s_end))
    sign = 1.0 if s_end >= s_start else -1.0
    direction = torch.full_like(s, sign)
    evaluations = torch.zeros(batch, dtype=torch.int64, device=device)
    accepted = torch.zeros_like(evaluations)
    rejected = torch.zeros_like(evaluations)
    if batch == 0 or s_end == s_start:
        return SolveResult(y, evaluations, accepted, rejected)

    everyone = torch.arange(batch, device=device)
    k1 = _checked(rhs(y, s, everyone), s)
    h = _initial_step(rhs, y, s, direction, (end - s).abs(), k1, everyone, rtol, atol)
    evaluations += 2
    active = torch.ones(batch, dtype=torch.bool, device=device)
    # Relative tolerance on reaching the end, so that round-off never leaves a tiny last step.
    end_slack = 1e-12 * max(abs(s_start), abs(s_end), 1.0)

    while bool(active.any()):
        index = torch.nonzero(active).squeeze(1)
        if bool(((accepted[index] + rejected[index]) >= max_steps).any()):
            raise StepLimitError(
                f"the adaptive ODE solver needed more than {max_steps} steps for at least one item; "
                f"loosen the tolerances (rtol={rtol:g}, atol={atol:g}) or check the model for "
                f"non-smooth outputs"
            )
        yi, si, hi = y[index], s[index], h[index]
        remaining = (end[index] - si).abs()
        hi = torch.minimum(hi, remaining)
        step = (sign * hi)[:, None]
        stages = [k1[index]]
        for row in range(1, 7):
            increment = sum(a * k for a, k in zip(_A[row], stages) if a != 0.0)
            stages.append(_checked(rhs(yi + step * increment, si + sign * hi * _C[row], index), si))
        evaluations[index] += 6
        y_new = yi + step * sum(b * k for b, k in zip(_B5, stages) if b != 0.0)
        error = step * sum(w * k for w, k in zip(_ERROR_WEIGHTS, stages) if w != 0.0)
        scale = atol + rtol * torch.maximum(yi.abs(), y_new.abs())
        norm = _rms_norm(error, scale)
        ok = norm <= 1.0

        factor = _SAFETY * norm.clamp_min(1e-10) ** (-1.0 / _ORDER)
        factor = torch.where(ok, factor.clamp(_MIN_FACTOR, _MAX_FACTOR), factor.clamp(_MIN_FACTOR, 1.0))
        h[index] = hi * factor

        good = index[ok]
        y[good] = y_new[ok]
        s[good] = si[ok] + sign * hi[ok]
        k1[good] = stages[6][ok]  # first same as last
        accepted[good] += 1
        rejected[index[~ok]] += 1
        finished = good[(end[good] - s[good]).abs() <= end_slack]
        s[finished] = end[finished]
        active[finished] = False
    return SolveResult(y, evaluations, accepted, rejected)


def _checked(values: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    finite = torch.isfinite(values).all(dim=1)
    if not bool(finite.all()):
        bad = int(torch.nonzero(~finite)[0])
        raise NonFiniteError(
            f"the ODE right-hand side returned non-finite values at integration variable "
            f"{float(s[bad]):.6g}; check the model or narrow the time range"
        )
    return values

