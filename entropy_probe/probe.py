"""The probe: neural entropy, cross term, bounds and their standard errors for one model.

`measure` estimates the rates on a grid of times (see `estimators`), integrates them
(see `quadrature`), adds the closed-form terms (see `quantities`) and returns an xarray
Dataset with units and provenance. All sums are float64.
"""

from __future__ import annotations

import datetime
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import xarray as xr

from . import __version__
from .data import DataSource
from .denoiser import Denoiser
from . import distributed
from .draws import STREAM_TERMINAL, Draws
from .errors import DataError, SpecError
from .estimators import NodeSums
from .field import EntropyMatchingField
from .processes import Process
from .quadrature import Grid, make_grid
from .runner import check_budget, describe_design, make_design, run_rounds, setup_engine
from .quantities import ce_constant_term, diffusion_integral, gelbrich_w2, mean_square_at, prior_for
from .results import NATS, RATE

logger = logging.getLogger(__name__)

LN2 = math.log(2.0)

ESTIMATORS = ("grid", "importance")

#: Smallest batch of the reference-density draws at t_min and T.
REFERENCE_BATCH = 4096
#: Maximum quadrature nodes or strata. Memory and the size of the result grow linearly with
#: them, and every node or stratum needs two samples for its variance, so 2^20 of them already
#: cost two million network evaluations.
MAX_CELLS = 1 << 20


@dataclass
class MeasureSettings:
    """Options of one measurement.

    The defaults are those of `entropy-probe measure` except the estimator: the command uses
    importance sampling unless --nodes or --rule is given, and this class defaults to the grid,
    whose nodes and rule other callers set.
    """

    t_min: Optional[float] = None
    t_max: Optional[float] = None
    #: Samples (units) per cell: per node (grid) or per stratum (importance). With a target
    #: standard error, those of the pilot round that plans the sampling.
    samples: int = 256
    nodes: int = 65
    seed: int = 0
    rule: str = "simpson"
    #: Network evaluations per batch, or "auto" to fill `memory_budget_gb`.
    batch_size: int | str = 256
    #: Draws at t_min and T for the entropy and KL terms that need the reference's density.
    reference_samples: int = 4096
    device: str = "cpu"
    progress: bool = True
    #: "grid" (quadrature nodes in log σ̃) or "importance" (t drawn from a proposal).
    estimator: str = "grid"
    #: Importance sampling: strata of equal proposal probability, the proposal's shape, the
    #: weight of its uniform-in-log-σ̃ part, and samples per node of the pilot run.
    strata: int = 64
    proposal: str = "gaussian"
    defensive: float = 0.1
    pilot_samples: int = 8
    #: Evaluate pairs (x_0, ε) and (x_0, −ε); a pair is one sample.
    antithetic: bool = False
    #: Sample in rounds until the relative standard error of S_NN is below this.
    target_stderr: Optional[float] = None
    #: Cap on network evaluations (default 10 million with a target, none without).
    max_evaluations: Optional[int] = None
    #: Memory for one batch with batch_size "auto" (default: 80 % of free CUDA memory, or 1/8 of RAM).
    memory_budget_gb: Optional[float] = None
    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False
    channels_last: bool = False
    #: Prepare the draws of the next batch in a background thread.
    prefetch: bool = True

    def record(self) -> dict[str, Any]:
        """Return the settings as a dict without those of the estimator that did not run.

        A grid run drops the importance-sampling fields, and an importance run drops `nodes` and
        `rule`, the pilot samples unless the proposal is "pilot", and the defensive weight
        unless the proposal is rate-shaped ("gaussian" or "pilot").
        """
        record = asdict(self)
        if self.estimator == "grid":
            unused = ["strata", "proposal", "defensive", "pilot_samples"]
        else:
            unused = ["nodes", "rule"]
            if self.proposal != "pilot":
                unused.append("pilot_samples")
            if self.proposal not in ("gaussian", "pilot"):
                unused.append("defensive")
        for name in unused:
            record.pop(name)
        return record

    def validate(self) -> None:
        from .evaluation import PRECISIONS
        from .proposals import check_proposal

        if self.samples < 2:
            raise SpecError(f"invalid number of samples {self.samples}; it must be >= 2 (for example --samples 256)")
        if self.nodes < 2:
            raise SpecError(f"invalid number of nodes {self.nodes}; it must be >= 2 (for example --nodes 65)")
        if self.nodes > MAX_CELLS:
            raise SpecError(f"invalid number of nodes {self.nodes}; it must be <= {MAX_CELLS} (--nodes 65 is usually enough)")
        if self.batch_size != "auto" and (isinstance(self.batch_size, str) or self.batch_size < 1):
            raise SpecError(f"invalid batch size {self.batch_size!r}; it must be an integer >= 1 or 'auto'")
        if self.antithetic and self.batch_size != "auto" and self.batch_size < 2:
            raise SpecError(f"antithetic pairs need a batch size >= 2, got {self.batch_size}")
        if self.reference_samples < 2:
            raise SpecError(f"invalid number of reference samples {self.reference_samples}; it must be >= 2")
        if self.estimator not in ESTIMATORS:
            raise SpecError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.strata < 1:
            raise SpecError(f"invalid number of strata {self.strata}; it must be >= 1 (for example --strata 64)")
        if self.strata > MAX_CELLS:
            raise SpecError(f"invalid number of strata {self.strata}; it must be <= {MAX_CELLS} (--strata 64 is usually enough)")
        check_proposal(self.proposal, self.defensive)
        if self.pilot_samples < 2:
            raise SpecError(f"invalid number of pilot samples {self.pilot_samples}; it must be >= 2")
        if self.target_stderr is not None and not 0 < self.target_stderr < 1:
            raise SpecError(
                f"invalid target standard error {self.target_stderr}; it is relative to S_NN and must be "
                f"in (0, 1), for example --target-stderr 0.01"
            )
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise SpecError(f"invalid --max-evaluations {self.max_evaluations}; it must be >= 1")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise SpecError(f"invalid memory budget {self.memory_budget_gb} GB; it must be > 0")
        if self.precision not in PRECISIONS:
            raise SpecError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")


def resolve_time_range(process: Process, settings: MeasureSettings) -> tuple[float, float]:
    t_min = process.default_t_min if settings.t_min is None else float(settings.t_min)
    t_max = process.default_t_max if settings.t_max is None else float(settings.t_max)
    process.check_time_range(t_min, t_max)
    return t_min, t_max


def check_compatible(model: Denoiser, data: DataSource, reference: Optional[Denoiser]) -> None:
    """Raise DataError when data, model and reference disagree on shape or labels."""
    if tuple(data.shape) != tuple(model.data_shape):
        raise DataError(
            f"data {data.spec!r} has items of shape {tuple(data.shape)}, but the model expects "
            f"{tuple(model.data_shape)}; choose data of the model's shape with --data"
        )
    if reference is not None and tuple(reference.data_shape) != tuple(data.shape):
        raise DataError(
            f"reference has items of shape {tuple(reference.data_shape)}, but the data has "
            f"{tuple(data.shape)}; give a reference oracle of the data's law"
        )
    if model.num_classes is not None and data.num_classes is None:
        raise DataError(f"the model is class-conditional, but data {data.spec!r} has no labels; give labelled data")


def measure(
    model: Denoiser,
    process: Process,
    data: DataSource,
    settings: MeasureSettings,
    reference: Optional[Denoiser] = None,
    provenance: Optional[dict[str, Any]] = None,
    progress_factory: Optional[Callable] = None,
    sums: Optional[NodeSums] = None,
    first_item: int = 0,
    on_batch: Optional[Callable[[NodeSums, int], None]] = None,
    context: Optional[distributed.Context] = None,
) -> xr.Dataset:
    """Estimate S_NN and the bounds of `model` under `process` on `data`.

    `reference`, an oracle with the exact law of the data, adds S_tot, the score error and the
    KL bound. `sums`, `first_item` and `on_batch` let a caller resume an interrupted run of a
    single process (units of the first round, cell-major). In a distributed run (`context`,
    by default the initialised process group, if any) every rank evaluates its share of the
    draws and every rank returns the same Dataset; only rank 0 should write it.
    """
    settings.validate()
    check_budget(settings)
    context = context or distributed.current(settings.device)
    device = context.device
    resuming = sums is not None or first_item or on_batch is not None
    if resuming and context.distributed:
        raise SpecError("resuming a measurement is supported in a single process only; run it without torchrun")
    if resuming and settings.target_stderr is not None:
        raise SpecError("resuming a measurement is supported for a fixed number of samples only, not with a target standard error")
    t_min, t_max = resolve_time_range(process, settings)
    check_compatible(model, data, reference)
    if settings.estimator == "grid":
        make_grid(process, t_min, t_max, settings.nodes, settings.rule)  # validates nodes and rule early
    model.check_time_range(process, t_min, t_max)

    started = time.perf_counter()
    draws = Draws(data, settings.seed)
    field = EntropyMatchingField(model, process)
    ref_field = EntropyMatchingField(reference, process) if reference is not None else None
    model.to(device)
    if reference is not None:
        reference.to(device)
    setup = setup_engine(model, field, ref_field, draws, settings, device, context)
    progress = None
    if settings.progress and progress_factory is not None and context.is_main:
        progress = lambda it, total, label: progress_factory(it, total=total, desc=label, unit="batch")  # noqa: E731
    design, pilot_evaluations = make_design(settings, process, data, t_min, t_max, setup.engine, progress)
    outcome = run_rounds(setup.engine, design, settings, pilot_evaluations, sums, first_item, on_batch, progress)
    elapsed = time.perf_counter() - started

    dataset = build_dataset(design.grid, outcome.sums, process, data, reference, settings)
    if design.kind == "importance":
        _add_strata_variables(dataset, design)
    terminal = (
        _reference_terms(process, data, reference, t_min, t_max, settings, setup.batch_size, device)
        if reference is not None
        else {}
    )
    _add_reference_scalars(dataset, terminal)
    dataset.attrs.update(
        _provenance(process, data, settings, design, model, reference, provenance or {}, elapsed, outcome, setup, context, pilot_evaluations)
    )
    return dataset


def _add_strata_variables(dataset: xr.Dataset, design) -> None:
    edges = np.concatenate([[design.grid.t_min], design.grid.t_min + np.cumsum(design.grid.weights)])
    edges[-1] = design.grid.t_max
    dataset["t_lower"] = xr.DataArray(edges[:-1], dims=("t",), attrs={"units": "1", "long_name": "start of the stratum in t"})
    dataset["t_upper"] = xr.DataArray(edges[1:], dims=("t",), attrs={"units": "1", "long_name": "end of the stratum in t"})
    dataset["proposal_density"] = xr.DataArray(
        design.proposal.density_t(design.grid.t), dims=("t",),
        attrs={"units": "per unit time", "long_name": f"proposal density q(t) ({design.proposal.kind}) at the stratum median"},
    )
    dataset["quadrature_weight"].attrs["long_name"] = "width of the stratum in t (Σ width × rate is the estimate)"
    for name in list(dataset.data_vars):
        if name.endswith("_rate"):
            dataset[name].attrs["long_name"] += " (average over the stratum, unbiased)"


# --- assembling the Dataset ----------------------------------------------------------------

def _scalar(value: float, units: str, long_name: str, **attrs: Any) -> xr.DataArray:
    return xr.DataArray(float(value), attrs={"units": units, "long_name": long_name, **attrs})


def build_dataset(
    grid: Grid,
    sums: NodeSums,
    process: Process,
    data: DataSource,
    reference: Optional[Denoiser],
    settings: MeasureSettings,
) -> xr.Dataset:
    """Integrate the node sums and add the closed-form terms."""
    t = grid.t
    dim = data.dim
    m2 = data.second_moment()
    t_min, t_max = grid.t_min, grid.t_max

    coords = {"t": ("t", t, {"units": "1", "long_name": "diffusion time (0 = data)"})}
    variables: dict[str, xr.DataArray] = {}

    def node_var(values, units, long_name, **attrs):
        return xr.DataArray(values, dims=("t",), attrs={"units": units, "long_name": long_name, **attrs})

    variables["sigma_tilde"] = node_var(process.sigma_tilde(t), "data units", "noise level σ/α at the node")
    variables["log_snr"] = node_var(process.log_snr(t), "1", "log signal-to-noise ratio log(α²/σ²)")
    variables["alpha"] = node_var(process.alpha(t), "1", "signal scale α(t)")
    variables["sigma"] = node_var(process.sigma(t), "data units", "noise scale σ(t)")
    variables["g2"] = node_var(process.g2(t), "data units² per unit time", "squared diffusion coefficient g(t)²")
    variables["quadrature_weight"] = node_var(grid.weights, "1", f"weight of the node in the {grid.rule} rule over t")
    variables["samples_per_node"] = node_var(sums.count, "1", "Monte Carlo samples at the node")

    def add_rate(prefix: str, quantity: str, long_name: str) -> tuple[float, float]:
        mean = sums.mean(quantity)
        var = sums.variance_of_mean(quantity)
        variables[f"{prefix}_rate"] = node_var(mean, RATE, long_name)
        variables[f"{prefix}_rate_stderr"] = node_var(np.sqrt(var), RATE, f"standard error of {prefix}_rate")
        variables[f"{prefix}_cumulative"] = node_var(
            grid.cumulative_integral(mean), NATS, f"integral of {prefix}_rate from t_min to t"
        )
        return float(grid.integrate(mean)), float(math.sqrt(grid.integrate_variance(var)))

    s_nn, s_nn_se = add_rate("s_nn", "nn", "neural entropy rate (g²/2) E|e_θ|²")
    cross, cross_se = add_rate("cross_term", "cross", "cross-term rate (g²/2) E[e_θ · s_c]")
    loss, loss_se = add_rate("denoising_loss", "loss", "denoising loss rate (g²/2) E|e_θ − s_c|²")

    variables["s_nn"] = _scalar(s_nn, NATS, "neural entropy S_NN")
    variables["s_nn_stderr"] = _scalar(s_nn_se, NATS, "Monte Carlo standard error of s_nn")
    variables["s_nn_bits"] = _scalar(s_nn / LN2, "bits", "neural entropy S_NN in bits")
    variables["s_nn_per_dim"] = _scalar(s_nn / dim, "nats per dimension", "neural entropy per data dimension")
    check = quadrature_check(grid, process, sums)
    if check is not None:
        difference, difference_se = check
        variables["s_nn_quadrature_check"] = _scalar(
            difference, NATS, f"s_nn minus the {grid.rule} rule on every other node (same node means)",
            stderr=difference_se,
            meaning="for a rate that is smooth on the node spacing the quadrature error of s_nn is about 1/15 "
            "(simpson) or 1/3 (trapezoid) of this; for a rate that wiggles on that scale it can be as large as this",
        )
    variables["cross_term"] = _scalar(cross, NATS, "cross term C = ∫ (g²/2) E[e_θ · s_c] dt")
    variables["cross_term_stderr"] = _scalar(cross_se, NATS, "Monte Carlo standard error of cross_term")
    variables["denoising_loss"] = _scalar(loss, NATS, "L = ∫ (g²/2) E|e_θ − s_c|² dt")
    variables["denoising_loss_stderr"] = _scalar(loss_se, NATS, "Monte Carlo standard error of denoising_loss")

    # Cross-entropy bound: deterministic terms plus the estimated denoising loss.
    prior = prior_for(process, t_max, dim, m2)
    prior_nll = prior.expected_nll(dim, mean_square_at(process, t_max, dim, m2))
    constant = ce_constant_term(process, t_min, t_max, dim)
    ce = prior_nll + constant + loss
    step = data.quantization_step
    offset = -math.log2(step) if step else 0.0
    variables["ce_prior_term"] = _scalar(prior_nll, NATS, "E[−log π(x_T)]", prior=prior.kind, prior_variance=prior.variance)
    variables["ce_constant_term"] = _scalar(constant, NATS, "−d Δlog α − (d/2) Δλ over [t_min, T]")
    variables["ce_bound"] = _scalar(ce, NATS, "upper bound on the cross-entropy H(p_{t_min}, q_θ)")
    variables["ce_bound_stderr"] = _scalar(loss_se, NATS, "Monte Carlo standard error of ce_bound")
    variables["ce_bound_bits"] = _scalar(ce / LN2, "bits", "ce_bound in bits (continuous density)")
    variables["ce_bound_bpd"] = _scalar(
        ce / (dim * LN2) + offset,
        "bits/dim",
        "ce_bound per dimension in bits, for the quantised data when quantization_step is set",
        quantization_step=step if step else 0.0,
        quantization_offset_bits=offset,
        quantization_convention=(
            f"bits/dim of the discrete data = continuous bits/dim − log2(Δ) with Δ = {step:g}"
            if step
            else "continuous data: no quantisation offset"
        ),
    )
    variables["ce_bound_bpd_stderr"] = _scalar(loss_se / (dim * LN2), "bits/dim", "Monte Carlo standard error of ce_bound_bpd")

    # Thermodynamic length ℓ = ∫ sqrt((g²/2) Ṡ) dt and the speed-limit bound on S_tot.
    half_g2 = 0.5 * process.g2(t)
    length, length_se = _length(grid, half_g2, sums.mean("nn"), sums.variance_of_mean("nn"))
    diffusion = diffusion_integral(process, t_min, t_max)
    w2 = gelbrich_w2(process, t_min, t_max, data.mean(), data.covariance_eigenvalues())
    variables["thermo_length"] = _scalar(length, "data units", "thermodynamic length ∫ sqrt((g²/2) Ṡ_NN) dt")
    variables["thermo_length_stderr"] = _scalar(length_se, "data units", "standard error of thermo_length (delta method)")
    variables["w2"] = _scalar(
        w2, "data units", "lower bound on W2(p_{t_min}, p_T) from data moments (Gelbrich; exact for Gaussian data)"
    )
    variables["diffusion_integral"] = _scalar(diffusion, "data units²", "∫ (g²/2) dt over [t_min, T]")
    variables["speed_limit_bound"] = _scalar(w2 * w2 / diffusion, NATS, "lower bound W2² / ∫ (g²/2) dt on S_tot")
    variables["data_second_moment"] = _scalar(m2, "data units²", "E|x_0|² summed over dimensions")

    if "tot" in sums.quantities:
        s_tot, s_tot_se = add_rate("s_tot", "tot", "entropy production rate (g²/2) E|s*|²")
        err, err_se = add_rate("score_error", "err", "score error rate (g²/2) E|e_θ − s*|²")
        tot_length, tot_length_se = _length(grid, half_g2, sums.mean("tot"), sums.variance_of_mean("tot"))
        variables["s_tot"] = _scalar(s_tot, NATS, "total entropy production S_tot")
        variables["s_tot_stderr"] = _scalar(s_tot_se, NATS, "Monte Carlo standard error of s_tot")
        variables["score_error"] = _scalar(err, NATS, "score error ∫ (g²/2) E|e_θ − s*|² dt")
        variables["score_error_stderr"] = _scalar(err_se, NATS, "Monte Carlo standard error of score_error")
        variables["thermo_length_tot"] = _scalar(tot_length, "data units", "thermodynamic length ∫ sqrt((g²/2) Ṡ_tot) dt")
        variables["thermo_length_tot_stderr"] = _scalar(tot_length_se, "data units", "standard error of thermo_length_tot")

    return xr.Dataset(variables, coords=coords)


def quadrature_check(grid: Grid, process: Process, sums: NodeSums) -> Optional[tuple[float, float]]:
    """Return S_NN of `grid` minus that of its rule on every other node, and the difference's stderr.

    Both use the same node means, so most of their Monte Carlo noise cancels. Defined for the
    simpson and trapezoid rules on nodes uniform in log σ̃ whose every other node forms a grid
    of the same rule; None otherwise.
    """
    if grid.rule not in ("simpson", "trapezoid") or grid.size < 5 or grid.size % 2 == 0:
        return None
    coarse_nodes = (grid.size + 1) // 2
    if grid.rule == "simpson" and coarse_nodes % 2 == 0:
        return None
    coarse = make_grid(process, grid.t_min, grid.t_max, coarse_nodes, grid.rule)
    weights = grid.weights.copy()
    weights[::2] -= coarse.weights
    weights[1::2] = grid.weights[1::2]
    difference = float(weights @ sums.mean("nn"))
    return difference, math.sqrt(float((weights**2) @ sums.variance_of_mean("nn")))


def _length(grid: Grid, half_g2: np.ndarray, rate: np.ndarray, rate_var: np.ndarray) -> tuple[float, float]:
    rate = np.clip(rate, 0.0, None)
    integrand = np.sqrt(half_g2 * rate)
    # d sqrt(a S)/dS = sqrt(a) / (2 sqrt(S)).
    with np.errstate(divide="ignore", invalid="ignore"):
        derivative = np.where(rate > 0, np.sqrt(half_g2) / (2.0 * np.sqrt(rate)), 0.0)
    return float(grid.integrate(integrand)), float(math.sqrt(grid.integrate_variance(derivative**2 * rate_var)))


def _reference_terms(process, data, reference, t_min, t_max, settings, batch_size, device) -> dict[str, float]:
    """H(p_{t_min}) and D_KL(p_T ‖ π) from the reference density (closed form for a Gaussian)."""
    from .oracles import GaussianOracle

    dim = data.dim
    m2 = data.second_moment()
    prior = prior_for(process, t_max, dim, m2)
    prior_nll = prior.expected_nll(dim, mean_square_at(process, t_max, dim, m2))
    results: dict[str, float] = {}
    if isinstance(reference, GaussianOracle):
        var0 = reference.std.cpu().numpy() ** 2
        for name, t in (("entropy_t_min", t_min), ("entropy_t_max", t_max)):
            v = float(process.alpha(t)) ** 2 * var0 + float(process.sigma2(t))
            results[name] = float(0.5 * np.sum(np.log(2 * math.pi * math.e * v)))
            results[name + "_stderr"] = 0.0
    else:
        draws = Draws(data, settings.seed)
        # Oracle densities cost little memory per item (B × 4096 components at most for the
        # isotropic mixtures), and large batches amortise their per-call overhead.
        chunk = max(batch_size, REFERENCE_BATCH)
        for node, (name, t) in enumerate((("entropy_t_min", t_min), ("entropy_t_max", t_max))):
            values = []
            for start in range(0, settings.reference_samples, chunk):
                stop = min(settings.reference_samples, start + chunk)
                x0, _ = draws.data(STREAM_TERMINAL, node, start, stop)
                noise = draws.noise(STREAM_TERMINAL, node, start, stop)
                alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
                x_t = (alpha * x0 + sigma * noise).to(device)
                sigma_tilde = torch.full((x_t.shape[0],), sigma / alpha, dtype=torch.float64, device=x_t.device)
                with torch.inference_mode():
                    log_p = reference.log_prob(x_t / alpha, sigma_tilde) - dim * math.log(alpha)
                values.append(-log_p.cpu().numpy())
            values = np.concatenate(values)
            results[name] = float(values.mean())
            results[name + "_stderr"] = float(values.std(ddof=1) / math.sqrt(values.size))
    results["kl_prior"] = prior_nll - results["entropy_t_max"]
    results["kl_prior_stderr"] = results["entropy_t_max_stderr"]
    return results


def _add_reference_scalars(dataset: xr.Dataset, terms: dict[str, float]) -> None:
    if not terms:
        return
    dataset["entropy_t_min"] = _scalar(terms["entropy_t_min"], NATS, "differential entropy H(p_{t_min}) of the data law")
    dataset["entropy_t_min_stderr"] = _scalar(terms["entropy_t_min_stderr"], NATS, "standard error of entropy_t_min")
    dataset["kl_prior"] = _scalar(terms["kl_prior"], NATS, "D_KL(p_T ‖ π)")
    dataset["kl_prior_stderr"] = _scalar(terms["kl_prior_stderr"], NATS, "standard error of kl_prior")
    err = float(dataset["score_error"])
    err_se = float(dataset["score_error_stderr"])
    dataset["kl_bound"] = _scalar(err + terms["kl_prior"], NATS, "upper bound score_error + D_KL(p_T ‖ π) on D_KL(p_{t_min} ‖ q_θ)")
    dataset["kl_bound_stderr"] = _scalar(math.hypot(err_se, terms["kl_prior_stderr"]), NATS, "standard error of kl_bound")


def _provenance(process, data, settings, design, model, reference, extra, elapsed, outcome, setup, context, pilot_evaluations) -> dict[str, Any]:
    grid = design.grid
    sums = outcome.sums
    attrs: dict[str, Any] = {
        "title": "entropy-probe measurement",
        "package": "entropy-probe",
        "package_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "process": process.spec,
        "process_name": process.name,
        "process_params": process.params,
        "t_min": grid.t_min,
        "t_max": grid.t_max,
        "time_convention": "t = 0 is data, t = T is noise; entropies in nats",
        **_grid_attrs(design),
        "quadrature_variable": _quadrature_variable(design),
        "samples_per_node": settings.samples,
        "samples_total": int(sums.count.sum()),
        **describe_design(design, settings),
        "rounds": outcome.rounds,
        "target_stderr": settings.target_stderr if settings.target_stderr is not None else "none",
        "target_met": "not requested" if outcome.target_met is None else outcome.target_met,
        "relative_stderr": outcome.relative_stderr,
        "seed": settings.seed,
        "batch_size": setup.batch_size,
        "batch_size_choice": setup.batch_size_record or "given",
        "device": context.device,
        "world_size": context.world_size,
        "precision": setup.precision,
        "throughput_notes": setup.notes,
        "network_evaluations": int(outcome.evaluations),
        "pilot_evaluations": int(pilot_evaluations),
        "planning_evaluations": int(outcome.planning_evaluations),
        "wall_time_seconds": round(elapsed, 3),
        "data": data.spec,
        "data_dim": data.dim,
        "data_shape": list(data.shape),
        "data_size": len(data) if data.finite else "unlimited (fresh draws)",
        "quantization_step": data.quantization_step if data.quantization_step else 0.0,
        "pixel_range": list(data.pixel_range) if data.pixel_range else None,
        "model_fingerprint": model.fingerprint,
        "model_provenance": model.provenance,
        "reference": reference.provenance if reference is not None else None,
        "reference_fingerprint": reference.fingerprint if reference is not None else None,
        "settings": settings.record(),
        "stderr_method": _stderr_method(design, settings),
    }
    attrs.update(extra)
    return attrs


def _grid_attrs(design) -> dict[str, Any]:
    """Return the rule and node count of a grid run; an importance run records its strata instead."""
    if design.kind == "importance":
        return {}
    return {"quadrature_rule": design.grid.rule, "nodes": design.grid.size}


def _quadrature_variable(design) -> str:
    if design.kind == "importance":
        return f"t drawn from the {design.proposal.kind} proposal, stratified by its quantiles"
    return "t uniform" if design.grid.rule == "trapezoid-t" else "log σ̃ = log(σ/α)"


def _stderr_method(design, settings) -> str:
    unit = "antithetic pair mean (x_0, ε), (x_0, −ε)" if settings.antithetic else "sample"
    if design.kind == "importance":
        text = (
            f"importance sampling: per stratum, the sample variance of rate/q over each {unit}, divided by the "
            f"count and combined with the squared stratum widths; unbiased, no quadrature error"
        )
    else:
        text = (
            f"independent draws per node; standard error of each node mean from the sample variance over each "
            f"{unit}, combined with the squared quadrature weights; quadrature error not included"
        )
    if settings.target_stderr is not None:
        text += "; sample counts chosen in rounds by Neyman allocation towards the target"
    return text


def design_line(attrs) -> str:
    """Describe the estimator, its cells and samples in one line of text."""
    if attrs.get("estimator") == "importance":
        text = f"{attrs['strata']} strata of the {attrs['proposal']} proposal (importance sampling)"
    else:
        text = f"{attrs['nodes']} nodes ({attrs['quadrature_rule']})"
    text += f" × {attrs['samples_per_node']} samples"
    if attrs.get("antithetic") in (True, "true"):
        text += " (antithetic pairs)"
    try:
        rounds = int(attrs.get("rounds", 1))
    except (TypeError, ValueError):
        # A comparison whose processes took different numbers of rounds stores them by process.
        return text + f", rounds per process {attrs['rounds']}"
    if rounds > 1:
        text += f", then {rounds - 1} more round{'s' if rounds > 2 else ''} to {attrs['samples_total']} samples"
    return text


def summarize(dataset: xr.Dataset) -> str:
    """Format a one-screen text summary of a measurement: a header, then aligned estimate rows."""
    from .formatting import format_estimate, format_rows, format_step

    def value(name: str) -> str:
        stderr = dataset.get(name + "_stderr")
        return format_estimate(float(dataset[name]), None if stderr is None else float(stderr))

    attrs = dataset.attrs
    header = [
        f"model     {attrs.get('checkpoint', attrs.get('model_fingerprint', ''))}",
        f"process   {attrs['process']}   t in [{attrs['t_min']:g}, {attrs['t_max']:g}]",
        f"data      {attrs['data']}   (d = {attrs['data_dim']})",
        f"estimate  {design_line(attrs)}, seed {attrs['seed']}, {attrs['network_evaluations']} network "
        f"evaluations, {attrs['wall_time_seconds']:.1f} s",
        "",
    ]
    step = float(dataset["ce_bound_bpd"].attrs.get("quantization_step", 0.0) or 0.0)
    if step:
        offset = float(dataset["ce_bound_bpd"].attrs.get("quantization_offset_bits", 0.0))
        bpd_unit = f"bits/dim of the quantised data (bin width Δ = {format_step(step)} adds −log2 Δ = {offset:.4g})"
    else:
        bpd_unit = "bits/dim (continuous data)"
    s_nn_bits = format_estimate(float(dataset["s_nn_bits"]), float(dataset["s_nn_stderr"]) / LN2)
    rows = [
        ["S_NN", value("s_nn"), f"nats  ({s_nn_bits} bits)"],
        ["cross term C", value("cross_term"), "nats"],
        ["cross-entropy bound", value("ce_bound_bpd"), bpd_unit],
        ["  as a density", value("ce_bound"), "nats under the continuous density (can be negative)"],
        ["thermodynamic length", value("thermo_length"), "data units (∫ sqrt((g²/2) Ṡ_NN) dt, at least W2)"],
        ["S_tot lower bound", format_estimate(float(dataset["speed_limit_bound"])), "nats (speed limit W2² / ∫ (g²/2) dt)"],
    ]
    if "s_tot" in dataset:
        rows += [
            ["S_tot (exact law)", value("s_tot"), "nats"],
            ["score error", value("score_error"), "nats"],
            ["KL bound", value("kl_bound"), "nats"],
        ]
    return "\n".join(header + format_rows(rows) + error_note(dataset) + quadrature_note(dataset))


def _clearly_above(amount: float, stderr: float, threshold: float) -> bool:
    """Return whether `amount` exceeds both `threshold` and three standard errors."""
    return amount > threshold and amount > 3.0 * stderr


#: S_NN above the cross term by more than this fraction (and 3 standard errors) earns a note.
EXCESS_FRACTION = 0.05


def error_note(dataset: xr.Dataset) -> list[str]:
    """Return a note when S_NN clearly exceeds the cross term C, else nothing.

    S_NN − 2C + S_tot is the score error, and a converged network has C ≈ S_NN. So S_NN well
    above C means the network's own error makes up part of S_NN.
    """
    s_nn, cross = float(dataset["s_nn"]), float(dataset["cross_term"])
    stderr = math.hypot(float(dataset["s_nn_stderr"]), float(dataset["cross_term_stderr"]))
    excess = s_nn - cross
    if not _clearly_above(excess, stderr, EXCESS_FRACTION * abs(s_nn)):
        return []
    return [
        "",
        f"note: S_NN exceeds the cross term C by {excess:.4g} nats ({100 * excess / abs(s_nn):.0f} %). A converged "
        "network has C close to S_NN,",
        "      so part of this S_NN is the network's score error. The rate plot shows at which times.",
    ]


#: A quadrature check above this fraction of S_NN (and 3 standard errors) earns a note.
QUADRATURE_FRACTION = 0.01


def quadrature_note(dataset: xr.Dataset) -> list[str]:
    """Return a note when the grid's quadrature check shows too few nodes for the rate, else nothing."""
    if "s_nn_quadrature_check" not in dataset:
        return []
    difference = float(dataset["s_nn_quadrature_check"])
    stderr = float(dataset["s_nn_quadrature_check"].attrs.get("stderr", 0.0))
    s_nn = float(dataset["s_nn"])
    if not _clearly_above(abs(difference), stderr, QUADRATURE_FRACTION * abs(s_nn)):
        return []
    return [
        "",
        f"note: S_NN differs from the same rule on every other node by {difference:+.4g} nats "
        f"({100 * difference / abs(s_nn):+.1f} %), so {int(dataset.attrs['nodes'])} nodes are too few",
        "      for this rate: S_NN and S_tot carry a quadrature error beyond their standard errors. Use more",
        "      --nodes, or leave out --nodes and --rule for the importance-sampling estimator.",
    ]
