"""Linear forward noising processes, exact in float64.

Conventions: time runs from data (t = 0) to noise (t = T). Every process is linear,
dx = f(t) x dt + g(t) dW, with marginals x_t = α(t) x_0 + σ(t) ε. A process is determined by
(α, σ); from them

    f = d log α / dt,    g² = dσ²/dt − 2 f σ² = 2 σ² d log σ̃ / dt,    σ̃ = σ / α,
    λ = log(α² / σ²) = −2 log σ̃,

and the quasi-invariant (frozen-time stationary) law is N(0, σ_eq² I) with σ_eq² = g² / (−2 f),
or flat when f = 0. Its score is k(t) x with k = 2 f / g².

All functions take scalars or arrays of times and return float64 arrays. They do not check the
domain, because the estimators call them in inner loops; `Process.check_time_range` validates
user input once.

References: Song et al., "Score-Based Generative Modeling through Stochastic Differential
Equations" (ICLR 2021) for vp, subvp and ve; Nichol & Dhariwal (ICML 2021) for the cosine
schedule; Ho et al. (NeurIPS 2020) for the discrete DDPM table; Premkumar, "Neural Entropy"
(NeurIPS 2025) for the vpx and straight-line (sl) processes.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import SpecError, describe_npz_error
from .specs import Param, convert_params, format_spec, split_spec

__all__ = ["Process", "from_spec", "PROCESSES", "ddpm_betas"]


def _t(t: Any) -> np.ndarray:
    return np.asarray(t, dtype=np.float64)


class Process:
    """A linear forward process given by α(t) and σ(t).

    Subclasses implement `log_alpha`, `sigma2`, `f`, `g2`, `log_sigma_tilde` and its inverse
    `t_from_log_sigma_tilde`; everything else derives from those.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {}

    #: Smallest and largest time at which the process is defined.
    t_lower: float = 0.0
    t_upper: float = 1.0
    #: Default measured range [t_min, T].
    default_t_min: float = 1e-3
    default_t_max: float = 1.0

    def __init__(self, spec_text: str | None = None, **values: Any) -> None:
        self.params: dict[str, Any] = dict(values)
        self._spec_text = spec_text
        self._validate(spec_text or self.spec)

    # --- to be implemented by subclasses -------------------------------------------------
    def _validate(self, spec: str) -> None:
        """Raise SpecError when the parameters are out of range."""

    def log_alpha(self, t: Any) -> np.ndarray:
        raise NotImplementedError

    def sigma2(self, t: Any) -> np.ndarray:
        raise NotImplementedError

    def f(self, t: Any) -> np.ndarray:
        """Drift coefficient f(t) = d log α / dt."""
        raise NotImplementedError

    def g2(self, t: Any) -> np.ndarray:
        """Squared diffusion coefficient g(t)²."""
        raise NotImplementedError

    def log_sigma_tilde(self, t: Any) -> np.ndarray:
        """log(σ/α), the log noise level in variance-exploding coordinates."""
        raise NotImplementedError

    def t_from_log_sigma_tilde(self, u: Any) -> np.ndarray:
        raise NotImplementedError

    # --- derived quantities --------------------------------------------------------------
    def alpha(self, t: Any) -> np.ndarray:
        return np.exp(self.log_alpha(t))

    def sigma(self, t: Any) -> np.ndarray:
        return np.sqrt(self.sigma2(t))

    def sigma_tilde(self, t: Any) -> np.ndarray:
        """σ̃ = σ/α: the noise level of x_t / α = x_0 + σ̃ ε."""
        return np.exp(self.log_sigma_tilde(t))

    def t_from_sigma_tilde(self, sigma_tilde: Any) -> np.ndarray:
        return self.t_from_log_sigma_tilde(np.log(_t(sigma_tilde)))

    def log_snr(self, t: Any) -> np.ndarray:
        """λ = log(α²/σ²), decreasing in t."""
        return -2.0 * self.log_sigma_tilde(t)

    def t_from_log_snr(self, log_snr: Any) -> np.ndarray:
        return self.t_from_log_sigma_tilde(-0.5 * _t(log_snr))

    def dlog_sigma_tilde_dt(self, t: Any) -> np.ndarray:
        """d log σ̃ / dt = g² / (2 σ²) > 0."""
        return self.g2(t) / (2.0 * self.sigma2(t))

    def equilibrium_score_coefficient(self, t: Any) -> np.ndarray:
        """k(t) = 2 f / g²: the quasi-invariant score is k x (0 for a flat law)."""
        return 2.0 * self.f(t) / self.g2(t)

    def equilibrium_variance(self, t: Any) -> np.ndarray:
        """σ_eq² = g² / (−2 f), or +inf where f = 0 (flat quasi-invariant law)."""
        f = self.f(t)
        g2 = self.g2(t)
        with np.errstate(divide="ignore"):
            return np.where(f < 0, g2 / np.where(f < 0, -2.0 * f, 1.0), np.inf)

    @property
    def has_fixed_equilibrium(self) -> bool:
        """Whether p_eq is one law for all t (then S_tot is a difference of KL divergences)."""
        grid = np.linspace(self.default_t_min, self.default_t_max, 17)
        var = self.equilibrium_variance(grid)
        if np.all(np.isinf(var)):
            return False
        return bool(np.allclose(var, var[0], rtol=1e-9, atol=0.0))

    # --- identification and validation --------------------------------------------------
    @property
    def spec(self) -> str:
        """Canonical `NAME:key=value,...` form, accepted by `from_spec`."""
        return format_spec(self.name, self.params)

    def describe(self) -> dict[str, Any]:
        """Name, parameters and time range, for provenance records."""
        return {
            "name": self.name,
            "spec": self.spec,
            "params": dict(self.params),
            "t_lower": self.t_lower,
            "t_upper": self.t_upper,
        }

    def check_time_range(self, t_min: float, t_max: float) -> None:
        """Raise SpecError unless t_lower ≤ t_min < t_max ≤ t_upper and t_min > 0."""
        if not (math.isfinite(t_min) and math.isfinite(t_max)):
            raise SpecError(f"t_min={t_min} and T={t_max} must be finite numbers")
        if t_min <= 0:
            raise SpecError(
                f"invalid t_min={t_min!r}: it must be > 0 because t = 0 is the data itself "
                f"and the rates diverge there; use for example --t-min {self.default_t_min:g}"
            )
        if t_min < self.t_lower:
            raise SpecError(
                f"invalid t_min={t_min!r}: process {self.spec!r} starts at t={self.t_lower:g}; "
                f"use --t-min {self.t_lower:g} or larger"
            )
        if t_max > self.t_upper:
            raise SpecError(
                f"invalid T={t_max!r}: process {self.spec!r} is defined only up to "
                f"t={self.t_upper!r}; use --t-max {self.default_t_max!r} or smaller"
            )
        if t_min >= t_max:
            raise SpecError(
                f"invalid time range: t_min={t_min!r} must be smaller than T={t_max!r}; lower --t-min or raise --t-max"
            )

    def __repr__(self) -> str:
        return f"Process({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)


def _positive(spec: str, name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise SpecError(f"invalid {name}={value!r} in process {spec!r}: it must be a positive number")


class _LinearBeta:
    """β(t) = β_min + (β_max − β_min) t and its integral B(t), shared by vp, vpx and subvp."""

    params: dict[str, Any]

    def _check_betas(self, spec: str) -> None:
        beta_min = self.params["beta_min"]
        beta_max = self.params["beta_max"]
        _positive(spec, "beta_min", beta_min)
        _positive(spec, "beta_max", beta_max)
        if beta_max < beta_min:
            raise SpecError(
                f"invalid process {spec!r}: beta_max={beta_max!r} is smaller than "
                f"beta_min={beta_min!r}; use for example 'vp:beta_min=0.1,beta_max=16'"
            )

    def beta(self, t: Any) -> np.ndarray:
        b0, b1 = self.params["beta_min"], self.params["beta_max"]
        return b0 + (b1 - b0) * _t(t)

    def beta_integral(self, t: Any) -> np.ndarray:
        b0, b1 = self.params["beta_min"], self.params["beta_max"]
        t = _t(t)
        return b0 * t + 0.5 * (b1 - b0) * t * t

    def t_from_beta_integral(self, big_b: Any) -> np.ndarray:
        b0, b1 = self.params["beta_min"], self.params["beta_max"]
        big_b = _t(big_b)
        # Root of (b1 − b0)/2 t² + b0 t − B = 0 in the form that is stable when b1 ≈ b0.
        return 2.0 * big_b / (b0 + np.sqrt(b0 * b0 + 2.0 * (b1 - b0) * big_b))


class VP(_LinearBeta, Process):
    name = "vp"
    description = "variance preserving, linear β(t); p_eq = N(0, I)"
    PARAMS = {
        "beta_min": Param("beta_min", float, 0.1, "β at t = 0"),
        "beta_max": Param("beta_max", float, 16.0, "β at t = 1 (Song et al. use 20)"),
    }

    def _validate(self, spec: str) -> None:
        self._check_betas(spec)

    def log_alpha(self, t):
        return -0.5 * self.beta_integral(t)

    def sigma2(self, t):
        return -np.expm1(-self.beta_integral(t))

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)

    def log_sigma_tilde(self, t):
        return 0.5 * np.log(np.expm1(self.beta_integral(t)))

    def t_from_log_sigma_tilde(self, u):
        return self.t_from_beta_integral(np.log1p(np.exp(2.0 * _t(u))))


class VPX(VP):
    name = "vpx"
    description = "vp with variance κ²: σ² = κ²(1 − α²); p_eq = N(0, κ² I)"
    PARAMS = {
        "beta_min": Param("beta_min", float, 0.1, "β at t = 0"),
        "beta_max": Param("beta_max", float, 16.0, "β at t = 1"),
        "kappa": Param("kappa", float, 0.1, "standard deviation of p_eq"),
    }

    def _validate(self, spec: str) -> None:
        self._check_betas(spec)
        _positive(spec, "kappa", self.params["kappa"])

    def sigma2(self, t):
        return self.params["kappa"] ** 2 * super().sigma2(t)

    def g2(self, t):
        return self.params["kappa"] ** 2 * self.beta(t)

    def log_sigma_tilde(self, t):
        return math.log(self.params["kappa"]) + super().log_sigma_tilde(t)

    def t_from_log_sigma_tilde(self, u):
        return super().t_from_log_sigma_tilde(_t(u) - math.log(self.params["kappa"]))


class SubVP(VP):
    name = "subvp"
    description = "sub-variance-preserving: σ = 1 − α²; time-dependent p_eq"
    PARAMS = VP.PARAMS

    def sigma2(self, t):
        return np.expm1(-self.beta_integral(t)) ** 2

    def g2(self, t):
        return -self.beta(t) * np.expm1(-2.0 * self.beta_integral(t))

    def log_sigma_tilde(self, t):
        # σ/α = (1 − e^{−B}) e^{B/2} = 2 sinh(B/2).
        return np.log(2.0 * np.sinh(0.5 * self.beta_integral(t)))

    def t_from_log_sigma_tilde(self, u):
        return self.t_from_beta_integral(2.0 * np.arcsinh(0.5 * np.exp(_t(u))))


class StraightLine(Process):
    name = "sl"
    description = "straight line: α = 1 − t, σ² = Σ0²(1 − α²); p_eq = N(0, Σ0² I) reached at t = 1"
    PARAMS = {"sigma0": Param("sigma0", float, 0.1, "standard deviation Σ0 of p_eq")}
    # g² = 2Σ0²/(1 − t) diverges at t = 1, so the process stops just before.
    t_upper = 1.0 - 1e-5
    default_t_max = 1.0 - 1e-5

    def _validate(self, spec: str) -> None:
        _positive(spec, "sigma0", self.params["sigma0"])

    def log_alpha(self, t):
        return np.log1p(-_t(t))

    def sigma2(self, t):
        t = _t(t)
        return self.params["sigma0"] ** 2 * t * (2.0 - t)

    def f(self, t):
        return -1.0 / (1.0 - _t(t))

    def g2(self, t):
        return 2.0 * self.params["sigma0"] ** 2 / (1.0 - _t(t))

    def log_sigma_tilde(self, t):
        t = _t(t)
        return math.log(self.params["sigma0"]) + 0.5 * np.log(t * (2.0 - t)) - np.log1p(-t)

    def t_from_log_sigma_tilde(self, u):
        s2 = np.exp(2.0 * _t(u))
        r = np.sqrt(s2 + self.params["sigma0"] ** 2)
        # t = 1 − Σ0 / r, written without cancellation for small σ̃.
        return s2 / (r * (r + self.params["sigma0"]))


class VPCosine(Process):
    name = "vp-cosine"
    description = "variance preserving, cosine schedule of Nichol & Dhariwal; p_eq = N(0, I)"
    PARAMS = {"s": Param("s", float, 0.008, "offset s of the cosine schedule")}
    # α reaches 0 at t = 1; stop where it is still positive.
    t_upper = 1.0 - 1e-4
    default_t_max = 1.0 - 1e-4

    def _validate(self, spec: str) -> None:
        s = self.params["s"]
        if not (math.isfinite(s) and s >= 0):
            raise SpecError(f"invalid s={s!r} in process {spec!r}: it must be >= 0")

    def _theta(self, t):
        s = self.params["s"]
        return 0.5 * math.pi * (_t(t) + s) / (1.0 + s)

    @property
    def _theta0(self) -> float:
        s = self.params["s"]
        return 0.5 * math.pi * s / (1.0 + s)

    def log_alpha(self, t):
        return np.log(np.cos(self._theta(t))) - math.log(math.cos(self._theta0))

    def sigma2(self, t):
        theta = self._theta(t)
        theta0 = self._theta0
        # 1 − cos²θ/cos²θ0 = sin(θ − θ0) sin(θ + θ0) / cos²θ0, exact near t = 0.
        return np.sin(theta - theta0) * np.sin(theta + theta0) / math.cos(theta0) ** 2

    def f(self, t):
        return -0.5 * math.pi / (1.0 + self.params["s"]) * np.tan(self._theta(t))

    def g2(self, t):
        # α² + σ² = 1, so g² = dσ²/dt − 2fσ² = −2f.
        return -2.0 * self.f(t)

    def log_sigma_tilde(self, t):
        theta = self._theta(t)
        theta0 = self._theta0
        return 0.5 * (
            np.log(np.sin(theta - theta0)) + np.log(np.sin(theta + theta0))
        ) - np.log(np.cos(theta))

    def t_from_log_sigma_tilde(self, u):
        s2 = np.exp(2.0 * _t(u))
        theta0 = self._theta0
        sin0, cos0 = math.sin(theta0), math.cos(theta0)
        root = np.sqrt(sin0 * sin0 + s2)
        tan_theta = root / cos0
        tan_diff = s2 / (cos0 * (root + sin0))
        dtheta = np.arctan(tan_diff / (1.0 + tan_theta * math.tan(theta0)))
        return dtheta * (1.0 + self.params["s"]) * 2.0 / math.pi


class VE(Process):
    name = "ve"
    description = "variance exploding: α = 1, σ = σ_min (σ_max/σ_min)^t; flat p_eq"
    PARAMS = {
        "sigma_min": Param("sigma_min", float, 0.01, "σ at t = 0"),
        "sigma_max": Param("sigma_max", float, 50.0, "σ at t = 1"),
    }

    def _validate(self, spec: str) -> None:
        _positive(spec, "sigma_min", self.params["sigma_min"])
        _positive(spec, "sigma_max", self.params["sigma_max"])
        if self.params["sigma_max"] <= self.params["sigma_min"]:
            raise SpecError(
                f"invalid process {spec!r}: sigma_max={self.params['sigma_max']!r} must be "
                f"larger than sigma_min={self.params['sigma_min']!r}"
            )

    @property
    def _log_ratio(self) -> float:
        return math.log(self.params["sigma_max"] / self.params["sigma_min"])

    def log_alpha(self, t):
        return np.zeros_like(_t(t))

    def sigma2(self, t):
        return np.exp(2.0 * self.log_sigma_tilde(t))

    def f(self, t):
        return np.zeros_like(_t(t))

    def g2(self, t):
        return 2.0 * self._log_ratio * self.sigma2(t)

    def log_sigma_tilde(self, t):
        return math.log(self.params["sigma_min"]) + self._log_ratio * _t(t)

    def t_from_log_sigma_tilde(self, u):
        return (_t(u) - math.log(self.params["sigma_min"])) / self._log_ratio


class _Piecewise(Process):
    """A process tabulated at nodes, with log α and log σ̃ linear in t between them.

    Both f and g² are then constant on each interval, and t ↔ σ̃ inverts exactly.
    At a node, the derivatives are those of the interval to its right (the last node uses
    the interval to its left).
    """

    _t_nodes: np.ndarray
    _log_alpha_nodes: np.ndarray
    _u_nodes: np.ndarray

    def _set_nodes(self, t_nodes, log_alpha_nodes, u_nodes) -> None:
        self._t_nodes = np.asarray(t_nodes, dtype=np.float64)
        self._log_alpha_nodes = np.asarray(log_alpha_nodes, dtype=np.float64)
        self._u_nodes = np.asarray(u_nodes, dtype=np.float64)
        dt = np.diff(self._t_nodes)
        self._log_alpha_slopes = np.diff(self._log_alpha_nodes) / dt
        self._u_slopes = np.diff(self._u_nodes) / dt
        self.t_lower = float(self._t_nodes[0])
        self.t_upper = float(self._t_nodes[-1])
        self.default_t_max = self.t_upper
        self.default_t_min = max(self.t_lower, 1e-3)

    def _interval(self, t):
        index = np.searchsorted(self._t_nodes, _t(t), side="right") - 1
        return np.clip(index, 0, len(self._t_nodes) - 2)

    def log_alpha(self, t):
        return np.interp(_t(t), self._t_nodes, self._log_alpha_nodes)

    def log_sigma_tilde(self, t):
        return np.interp(_t(t), self._t_nodes, self._u_nodes)

    def sigma2(self, t):
        return np.exp(2.0 * (self.log_sigma_tilde(t) + self.log_alpha(t)))

    def f(self, t):
        return self._log_alpha_slopes[self._interval(t)]

    def g2(self, t):
        return 2.0 * self.sigma2(t) * self._u_slopes[self._interval(t)]

    def t_from_log_sigma_tilde(self, u):
        return np.interp(_t(u), self._u_nodes, self._t_nodes)


def ddpm_betas(schedule: str, beta_start: float, beta_end: float, steps: int) -> np.ndarray:
    """The β table of a discrete DDPM schedule, in float64, as the diffusers schedulers define it."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, steps, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), steps, dtype=np.float64) ** 2
    if schedule == "squaredcos_cap_v2":

        def alpha_bar(x: float) -> float:
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
            dtype=np.float64,
        )
    raise SpecError(
        f"unknown DDPM beta schedule {schedule!r}; use linear, scaled_linear or squaredcos_cap_v2"
    )


class DDPM(_Piecewise):
    name = "ddpm"
    description = "discrete DDPM β table; step i (0-based) sits at t = (i + 1)/N; p_eq = N(0, I)"
    PARAMS = {
        "schedule": Param("schedule", str, "linear", "linear, scaled_linear or squaredcos_cap_v2"),
        "beta_start": Param("beta_start", float, 1e-4, "first β of a linear schedule"),
        "beta_end": Param("beta_end", float, 0.02, "last β of a linear schedule"),
        "steps": Param("steps", int, 1000, "number of steps N"),
        "betas_file": Param("betas_file", str, "", ".npy or .txt file with the β table (overrides the schedule)"),
    }

    def _validate(self, spec: str) -> None:
        p = self.params
        if p["betas_file"]:
            betas = _read_betas(spec, p["betas_file"])
        else:
            if p["steps"] < 2:
                raise SpecError(f"invalid steps={p['steps']!r} in process {spec!r}: it must be >= 2")
            _positive(spec, "beta_start", p["beta_start"])
            _positive(spec, "beta_end", p["beta_end"])
            betas = ddpm_betas(p["schedule"], p["beta_start"], p["beta_end"], p["steps"])
        if not np.all((betas > 0) & (betas < 1)):
            raise SpecError(f"invalid β table in process {spec!r}: every β must lie in (0, 1)")
        self.betas = betas
        steps = len(betas)
        # −log ᾱ_i accumulated in float64; σ̃² = 1/ᾱ − 1 = expm1(−log ᾱ).
        neg_log_alpha_bar = -np.cumsum(np.log1p(-betas))
        self.alphas_cumprod = np.exp(-neg_log_alpha_bar)
        t_nodes = np.arange(1, steps + 1, dtype=np.float64) / steps
        u_nodes = 0.5 * np.log(np.expm1(neg_log_alpha_bar))
        self._set_nodes(t_nodes, -0.5 * neg_log_alpha_bar, u_nodes)

    def log_alpha(self, t):
        # Variance preserving between the nodes as well: α² = 1/(1 + σ̃²).
        return -0.5 * np.log1p(np.exp(2.0 * self.log_sigma_tilde(t)))

    def sigma2(self, t):
        s2 = np.exp(2.0 * self.log_sigma_tilde(t))
        return s2 / (1.0 + s2)

    def f(self, t):
        return -self.sigma2(t) * self._u_slopes[self._interval(t)]


def _read_betas(spec: str, path: str) -> np.ndarray:
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"β table file {path!r} in process {spec!r} not found; give an existing .npy or .txt file")
    try:
        if file.suffix == ".npy":
            betas = np.load(file, allow_pickle=False)
        else:
            betas = np.loadtxt(file, dtype=np.float64)
    except (OSError, ValueError) as error:
        raise SpecError(f"cannot read β table {path!r}: {describe_npz_error(path, error)}; give a .npy array or a text file of numbers") from None
    betas = np.asarray(betas, dtype=np.float64).ravel()
    if betas.size < 2:
        raise SpecError(f"β table {path!r} has {betas.size} entries; it needs at least 2")
    return betas


class Table(_Piecewise):
    name = "table"
    description = "user-given α(t), σ(t) at increasing times (file with columns t, alpha, sigma)"
    PARAMS = {"file": Param("file", str, "", ".npz with arrays t, alpha, sigma, or .csv with that header")}

    def _validate(self, spec: str) -> None:
        path = self.params["file"]
        if not path:
            raise SpecError(f"process {spec!r} needs a file: write 'table:file=PATH' (.npz or .csv)")
        t, alpha, sigma = _read_table(spec, path)
        if t.size < 2 or not np.all(np.diff(t) > 0):
            raise SpecError(f"table {path!r}: t must have at least 2 strictly increasing entries")
        if np.any(t < 0):
            raise SpecError(f"table {path!r}: times must be >= 0")
        if not np.all((alpha > 0) & np.isfinite(alpha)):
            raise SpecError(f"table {path!r}: alpha must be positive and finite")
        if not np.all((sigma > 0) & np.isfinite(sigma)):
            raise SpecError(
                f"table {path!r}: sigma must be positive and finite at every node; "
                f"start the table after t = 0"
            )
        u = np.log(sigma) - np.log(alpha)
        if not np.all(np.diff(u) > 0):
            raise SpecError(
                f"table {path!r}: sigma/alpha must increase strictly with t, otherwise g² ≤ 0"
            )
        self._set_nodes(t, np.log(alpha), u)


def _read_table(spec: str, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"table file {path!r} in process {spec!r} not found")
    try:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as arrays:
                columns = [np.asarray(arrays[k], dtype=np.float64).ravel() for k in ("t", "alpha", "sigma")]
        else:
            with open(file, newline="") as handle:
                rows = list(csv.DictReader(handle))
            columns = [np.array([float(r[k]) for r in rows], dtype=np.float64) for k in ("t", "alpha", "sigma")]
    except KeyError as error:
        raise SpecError(f"table {path!r} lacks column {error}; it needs t, alpha and sigma") from None
    except (OSError, ValueError) as error:
        raise SpecError(f"cannot read table {path!r}: {describe_npz_error(path, error)}; give a .npz with arrays t, alpha, sigma or a .csv with that header") from None
    if len({c.size for c in columns}) != 1:
        raise SpecError(f"table {path!r}: t, alpha and sigma must have the same length")
    return columns[0], columns[1], columns[2]


PROCESSES: dict[str, type[Process]] = {
    cls.name: cls for cls in (VP, VPX, StraightLine, VPCosine, SubVP, VE, DDPM, Table)
}


def from_spec(spec: str | Process) -> Process:
    """Build a process from `NAME` or `NAME:key=value,...`, e.g. 'vp:beta_min=0.1,beta_max=16'."""
    if isinstance(spec, Process):
        return spec
    name, raw = split_spec(spec, "process")
    cls = PROCESSES.get(name)
    if cls is None:
        raise SpecError(
            f"unknown process {name!r}; choose one of {', '.join(PROCESSES)} "
            f"(for example 'vp' or 'sl:sigma0=0.1')"
        )
    values = convert_params(spec, "process", cls.PARAMS, raw)
    return cls(spec, **values)
