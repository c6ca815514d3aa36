"""Fits and summaries of reproduced studies: growth laws of S_NN in N, convergence to S_tot.

Growth laws of S_NN against the number N of training items:

- log law `S = a + b ln N`, linear in (a, b), solved in closed form;
- power law `S = c N^p`, fitted by nonlinear least squares (scipy.optimize.curve_fit).

Both fits use the same weighting, chosen once from the data by `choose_weighting`:

- weighted least squares with weights 1/se² when the standard errors se of S_NN are given and
  not negligible. The covariance is (Xᵀ W X)⁻¹ scaled by max(1, χ²/dof), the Birge ratio, so a
  scatter larger than the standard errors (seed noise, an imperfect law) widens the interval;
- ordinary least squares, with the covariance from the residual variance, when the standard
  errors are missing or below a tenth of the residual scatter of the ordinary fit.

The confidence interval of b uses Student's t with n − 2 degrees of freedom whenever the
covariance comes from the residuals, else the normal quantile. The models are compared by the
residual sum of squares (weighted when the fit is weighted) and by the Akaike information
criterion: AIC = χ² + 2k for weighted fits with known errors and n ln(RSS/n) + 2(k + 1) for
ordinary ones, with k = 2 parameters in both laws. ΔAIC = AIC(power) − AIC(log) > 0 favours
the log law; a difference below 2 is no evidence either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import xarray as xr
from scipy import optimize, stats

#: Standard errors below this fraction of the ordinary fit's residual scatter count as negligible.
NEGLIGIBLE_STDERR_FRACTION = 0.1


@dataclass
class Weighting:
    """Choice of least squares for a growth law: weighted by standard errors, or ordinary."""

    weighted: bool
    weights: np.ndarray
    reason: str

    @property
    def method(self) -> str:
        return "weighted least squares (weights 1/se²)" if self.weighted else "ordinary least squares"


@dataclass
class LawFit:
    """A fitted growth law with its covariance and goodness of fit."""

    law: str
    #: Parameter names and values: (a, b) for the log law, (c, p) for the power law.
    names: tuple[str, str]
    params: np.ndarray
    covariance: np.ndarray
    method: str
    #: Residual sum of squares, weighted when the fit is weighted.
    rss: float
    #: Unweighted residual sum of squares, in nats².
    rss_unweighted: float
    aic: float
    n: int
    #: χ²/dof of a weighted fit (the factor applied to its covariance when > 1); NaN for OLS.
    reduced_chi2: float
    #: Whether the covariance comes from the residuals (Student's t for intervals).
    covariance_from_residuals: bool

    def stderr(self, name: str) -> float:
        index = self.names.index(name)
        return float(math.sqrt(self.covariance[index, index])) if np.isfinite(self.covariance[index, index]) else math.nan

    def value(self, name: str) -> float:
        return float(self.params[self.names.index(name)])

    def interval(self, name: str, confidence: float = 0.95) -> tuple[float, float]:
        """Two-sided confidence interval of one parameter."""
        dof = self.n - 2
        if self.covariance_from_residuals:
            quantile = stats.t.ppf(0.5 + confidence / 2, dof) if dof > 0 else math.nan
        else:
            quantile = stats.norm.ppf(0.5 + confidence / 2)
        half = quantile * self.stderr(name)
        return self.value(name) - half, self.value(name) + half

    def predict(self, n_train: np.ndarray) -> np.ndarray:
        n_train = np.asarray(n_train, dtype=np.float64)
        if self.law == "log":
            return self.params[0] + self.params[1] * np.log(n_train)
        return self.params[0] * n_train ** self.params[1]


def _clean(n_train, s_nn, stderr) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    n_train = np.asarray(n_train, dtype=np.float64).ravel()
    s_nn = np.asarray(s_nn, dtype=np.float64).ravel()
    keep = np.isfinite(n_train) & np.isfinite(s_nn) & (n_train > 0)
    se = None
    if stderr is not None:
        se = np.asarray(stderr, dtype=np.float64).ravel()
        keep &= np.isfinite(se)
        se = se[keep]
    return n_train[keep], s_nn[keep], se


def choose_weighting(n_train, s_nn, stderr=None) -> Weighting:
    """Decide between weighted and ordinary least squares (see the module docstring)."""
    n_train, s_nn, se = _clean(n_train, s_nn, stderr)
    ones = np.ones_like(s_nn)
    if se is None:
        return Weighting(False, ones, "no standard errors given")
    if np.any(se <= 0):
        return Weighting(False, ones, "some standard errors are zero")
    design = np.column_stack([ones, np.log(n_train)])
    residuals = s_nn - design @ np.linalg.lstsq(design, s_nn, rcond=None)[0]
    dof = s_nn.size - 2
    scatter = math.sqrt(float(residuals @ residuals) / dof) if dof > 0 else math.inf
    typical = float(np.sqrt(np.mean(se**2)))
    if typical < NEGLIGIBLE_STDERR_FRACTION * scatter:
        return Weighting(
            False, ones,
            f"standard errors (rms {typical:.3g}) are below {NEGLIGIBLE_STDERR_FRACTION:g} of the residual scatter ({scatter:.3g})",
        )
    return Weighting(True, 1.0 / se**2, f"standard errors (rms {typical:.3g}) against residual scatter {scatter:.3g}")


def _information(rss_weighted: float, rss: float, n: int, weighted: bool) -> float:
    if weighted:
        return rss_weighted + 2 * 2
    return n * math.log(max(rss, np.finfo(float).tiny) / n) + 2 * 3


def _fit_points(n_train, s_nn, stderr, weighting: Optional[Weighting]):
    """Return the finite points of a growth-law fit and its weighting; raise with fewer than two sizes."""
    weighting = weighting or choose_weighting(n_train, s_nn, stderr)
    n_train, s_nn, _ = _clean(n_train, s_nn, stderr)
    if np.unique(n_train).size < 2:
        raise ValueError("a growth law needs S_NN at two or more distinct N")
    return n_train, s_nn, weighting


def fit_log_law(n_train, s_nn, stderr=None, weighting: Optional[Weighting] = None) -> LawFit:
    """Fit S = a + b ln N; see the module docstring for the weighting and the covariance."""
    n_train, s_nn, weighting = _fit_points(n_train, s_nn, stderr, weighting)
    w = weighting.weights
    design = np.column_stack([np.ones_like(s_nn), np.log(n_train)])
    normal = design.T @ (w[:, None] * design)
    params = np.linalg.solve(normal, design.T @ (w * s_nn))
    residuals = s_nn - design @ params
    return _finish("log", ("a", "b"), params, np.linalg.inv(normal), residuals, w, weighting)


def fit_power_law(n_train, s_nn, stderr=None, weighting: Optional[Weighting] = None) -> LawFit:
    """Fit S = c N^p by nonlinear least squares, started from a straight line in log-log."""
    n_train, s_nn, weighting = _fit_points(n_train, s_nn, stderr, weighting)
    w = weighting.weights
    if np.all(s_nn > 0):
        slope, intercept = np.polyfit(np.log(n_train), np.log(s_nn), 1)
        start = [math.exp(intercept), slope]
    else:
        start = [float(np.mean(s_nn)), 0.0]

    def law(n, c, p):
        return c * n**p

    sigma = 1.0 / np.sqrt(w)
    params, _ = optimize.curve_fit(law, n_train, s_nn, p0=start, sigma=sigma, absolute_sigma=True, maxfev=20000)
    residuals = s_nn - law(n_train, *params)
    jacobian = np.column_stack([n_train ** params[1], params[0] * n_train ** params[1] * np.log(n_train)])
    normal = jacobian.T @ (w[:, None] * jacobian)
    covariance = np.linalg.pinv(normal)
    return _finish("power", ("c", "p"), np.asarray(params), covariance, residuals, w, weighting)


def _finish(law, names, params, covariance, residuals, w, weighting: Weighting) -> LawFit:
    n = residuals.size
    dof = n - 2
    rss_weighted = float(np.sum(w * residuals**2))
    rss = float(residuals @ residuals)
    if weighting.weighted:
        reduced = rss_weighted / dof if dof > 0 else math.nan
        from_residuals = bool(dof > 0 and reduced > 1.0)
        if from_residuals:
            covariance = covariance * reduced
    else:
        reduced = math.nan
        from_residuals = True
        covariance = covariance * (rss / dof) if dof > 0 else np.full_like(covariance, math.nan)
    method = weighting.method
    if weighting.weighted and from_residuals:
        method += f", covariance scaled by χ²/dof = {reduced:.3g}"
    elif not weighting.weighted:
        method += ", covariance from the residual variance"
    return LawFit(
        law, names, np.asarray(params, dtype=np.float64), covariance, method, rss_weighted if weighting.weighted else rss,
        rss, _information(rss_weighted, rss, n, weighting.weighted), n, reduced, from_residuals,
    )


@dataclass
class GrowthComparison:
    """Log law and power law fitted to the same points with the same weighting."""

    log: LawFit
    power: LawFit
    weighting: Weighting

    @property
    def delta_aic(self) -> float:
        """AIC(power) − AIC(log): positive favours the log law."""
        return self.power.aic - self.log.aic

    @property
    def preferred(self) -> str:
        """'log law', 'power law', or 'neither' when |ΔAIC| < 2."""
        if abs(self.delta_aic) < 2:
            return "neither"
        return "log law" if self.delta_aic > 0 else "power law"


def compare_growth_laws(n_train, s_nn, stderr=None) -> GrowthComparison:
    weighting = choose_weighting(n_train, s_nn, stderr)
    return GrowthComparison(
        fit_log_law(n_train, s_nn, stderr, weighting), fit_power_law(n_train, s_nn, stderr, weighting), weighting
    )


def format_growth(comparison: GrowthComparison, confidence: float = 0.95) -> list[str]:
    log, power = comparison.log, comparison.power
    low, high = log.interval("b", confidence)
    return [
        f"  log law   S_NN = a + b ln N: a = {log.value('a'):.4g} ± {log.stderr('a'):.2g}, "
        f"b = {log.value('b'):.4g} nats ({confidence:.0%} interval {low:.4g} to {high:.4g}); RSS {log.rss_unweighted:.4g} nats², AIC {log.aic:.4g}",
        f"  power law S_NN = c N^p:    c = {power.value('c'):.4g}, p = {power.value('p'):.4g} ± {power.stderr('p'):.2g}; "
        f"RSS {power.rss_unweighted:.4g} nats², AIC {power.aic:.4g}",
        f"  ΔAIC = AIC(power) − AIC(log) = {comparison.delta_aic:.3g}: "
        + ("no clear preference (|ΔAIC| < 2)" if comparison.preferred == "neither" else f"the {comparison.preferred} is preferred"),
        f"  fit: {log.method}; {comparison.weighting.reason}; {log.n} points",
    ]


# --- views of a combined Dataset --------------------------------------------------------------

def last_epoch(dataset: xr.Dataset, name: str) -> xr.DataArray:
    """Select each item's value at its own last measured epoch (items may differ in epochs)."""
    array = dataset[name]
    if "epoch" not in array.dims:
        return array
    valid = array.notnull()
    index = (valid * xr.DataArray(np.arange(dataset.sizes["epoch"]), dims="epoch")).argmax("epoch")
    return array.isel(epoch=index)


def _last_measured_epoch(dataset: xr.Dataset, where: dict[str, Any], default: int) -> int:
    """Return the last epoch at which any seed of the selected items has an S_NN value."""
    measured = dataset["s_nn"].sel(where).notnull()
    other_dims = [name for name in measured.dims if name != "epoch"]
    if other_dims:
        measured = measured.any(other_dims)
    epochs = dataset["epoch"].values[measured.values]
    return int(epochs[-1]) if len(epochs) else default


def seed_mean(array: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Mean over seeds and its standard error (0 with one seed)."""
    if "seed" not in array.dims:
        return array, xr.zeros_like(array)
    mean = array.mean("seed")
    count = array.count("seed")
    spread = array.std("seed", ddof=1) / np.sqrt(count)
    return mean, spread.where(count > 1, 0.0)


def growth_points(dataset: xr.Dataset, process: Optional[str] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, S_NN, se) of every item of a training-size study at its last epoch, seeds as separate points."""
    s_nn = last_epoch(dataset, "s_nn")
    stderr = last_epoch(dataset, "s_nn_stderr")
    if process is not None and "process" in s_nn.dims:
        s_nn, stderr = s_nn.sel(process=process), stderr.sel(process=process)
    size = "n_train" if "n_train" in dataset.coords else "n_c"
    n_train = dataset[size].broadcast_like(s_nn)
    return n_train.values.ravel(), s_nn.values.ravel(), stderr.values.ravel()


def summarize_study(dataset: xr.Dataset) -> str:
    """Text summary of a combined reproduce Dataset: the numbers behind its figures."""
    attrs = dataset.attrs
    lines = [
        f"recipe {attrs.get('recipe')} at scale {attrs.get('scale')} ({attrs.get('analysis')} study)",
        f"estimate: {attrs.get('nodes')} nodes ({attrs.get('quadrature_rule')}) × {attrs.get('samples_per_node')} samples, seed {attrs.get('seed')}",
    ]
    missing = attrs.get("items_missing", "[]")
    if missing not in ("[]", ""):
        lines.append(f"missing items: {missing}")
    if attrs.get("analysis") == "epochs":
        lines += _summarize_epochs(dataset)
    else:
        lines += _summarize_sizes(dataset)
    return "\n".join(lines)


def _summarize_epochs(dataset: xr.Dataset) -> list[str]:
    seeds = dataset.sizes.get("seed", 1)
    if seeds > 1:
        heading = "S_NN at the last epoch (mean ± standard error over seeds) against the exact-law S_tot [nats]:"
        s_nn, s_nn_se = seed_mean(last_epoch(dataset, "s_nn"))
    else:
        # With one seed the spread over seeds is unknown, so the Monte Carlo error is shown.
        heading = "S_NN at the last epoch (± Monte Carlo standard error, one seed) against the exact-law S_tot [nats]:"
        s_nn = last_epoch(dataset, "s_nn")
        s_nn_se = last_epoch(dataset, "s_nn_stderr") if "s_nn_stderr" in dataset else xr.zeros_like(s_nn)
        if "seed" in s_nn.dims:
            s_nn, s_nn_se = s_nn.squeeze("seed", drop=True), s_nn_se.squeeze("seed", drop=True)
    lines = ["", heading]
    has_tot = "s_tot" in dataset
    last = int(dataset["epoch"].values[-1])
    for process in dataset["process"].values if "process" in dataset.dims else [None]:
        for dim in dataset["dim"].values if "dim" in dataset.dims else [None]:
            where = {k: v for k, v in (("process", process), ("dim", dim)) if v is not None}
            value = float(s_nn.sel(where))
            spread = float(s_nn_se.sel(where))
            text = f"  {process or ''} d={dim}: S_NN(epoch {_last_measured_epoch(dataset, where, last)}) = {value:.4g} ± {spread:.2g}"
            if has_tot:
                tot = dataset["s_tot"].sel({k: v for k, v in where.items() if k in dataset["s_tot"].dims})
                tot_value = float(tot.mean()) if tot.size > 1 else float(tot)
                text += f", S_tot = {tot_value:.4g}, ratio {value / tot_value:.3f}"
            lines.append(text)
    return lines


def _summarize_sizes(dataset: xr.Dataset) -> list[str]:
    lines = []
    size = "n_train" if "n_train" in dataset.coords else "n_c"
    processes = dataset["process"].values if "process" in dataset.dims else [None]
    for process in processes:
        n_train, s_nn, se = growth_points(dataset, process)
        lines.append("")
        lines.append(f"process {process}: S_NN at the last epoch of each item [nats]")
        for n, s, e in sorted(zip(n_train, s_nn, se)):
            lines.append(f"  {size} = {n:g}: S_NN = {s:.5g} ± {e:.2g}")
        finite = np.isfinite(s_nn)
        if np.unique(n_train[finite]).size >= 3:
            lines += format_growth(compare_growth_laws(n_train, s_nn, se))
        else:
            lines.append("  (fewer than 3 sizes: no growth law fitted)")
    return lines
