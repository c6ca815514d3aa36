"""Network evaluations each estimator needs to land within 1 % of a high-precision S_NN.

All estimators measure the same integral, over [t_2, 1] with t_2 the second node of
linspace(1e-5, 1, 500):

- the Neural Entropy reference code's estimator, emulated with this package's own grid code:
  the trapezoid rule uniform in t on the 499 nodes from t_2 to 1, M images per node. The paper
  uses M = 1000, so 500 000 evaluations counting the unused first node;
- the default of `entropy-probe measure`: importance sampling with the gaussian proposal in 64
  strata, run with --target-stderr (a pilot round plans, a fresh round estimates);
- the grid estimator (Simpson's rule on 65 nodes uniform in log σ̃), run the same way.

"Lands within 1 %" means |bias| + 1.96 σ ≤ 1 % of the reference, so that 95 % of runs land. For
the reference-code estimator σ² = V₁/M, with V₁ = Σ_k w_k² s_k² from a pilot run with a few
samples per node. Its bias is its quadrature error Σ_k w_k Ṡ(t_k) − S, taken from the
closed-form rate (gaussian-mnist) or from the reference run's binned rate curve interpolated
in log σ̃ (which misses structure finer than the strata); the script also prints the budget
for zero bias, a lower bound. The other estimators are run with --target-stderr 1 %/1.96, and
their evaluations, pilot included, are counted over `--check` repeats, together with how many
of the repeats land within 1 %.

    python bench/efficiency.py --model gaussian-mnist
    python bench/efficiency.py --model runs/mnist --reference-target 0.001
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.interpolate import CubicSpline

import benchlib
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.quadrature import make_grid

WITHIN = 0.01
Z95 = 1.96


def run(bench, **options):
    options.setdefault("progress", False)
    return measure(bench.model, bench.process, bench.data, MeasureSettings(**options))


def rate_function(bench, reference_result):
    """Return the rate Ṡ_NN(t): the closed form when known, else a spline of the reference curve in log σ̃.

    The curve of an importance-sampled reference holds stratum averages at the stratum medians.
    """
    if bench.exact_rate is not None:
        return bench.exact_rate, "closed form"
    process = bench.process
    t = reference_result["t"].values
    u = process.log_sigma_tilde(t)
    per_u = reference_result["s_nn_rate"].values / process.dlog_sigma_tilde_dt(t)
    spline = CubicSpline(u, per_u)
    return (lambda times: spline(process.log_sigma_tilde(times)) * process.dlog_sigma_tilde_dt(times)), "spline of the reference rate curve"


def quadrature_bias(bench, grid, rate, reference: float) -> float:
    return float(grid.integrate(rate(grid.t))) - reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gaussian-mnist")
    parser.add_argument("--process", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--reference-target", type=float, default=0.001, help="relative standard error of the reference run (networks)")
    parser.add_argument("--pilot-samples", type=int, default=4, help="samples per node of the reference-code pilot")
    parser.add_argument("--planning-samples", type=int, default=4, help="samples per cell of the pilot round that plans the sampling")
    parser.add_argument("--check", type=int, default=5, help="repeats of the default estimator at its budget")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    benchlib.header("evaluations to land within 1 % of the reference S_NN")

    bench = benchlib.load(args.model, args.process, args.data)
    t_min, t_max = benchlib.paper_t_min(), 1.0
    common = dict(t_min=t_min, t_max=t_max, batch_size=args.batch_size, device=args.device)
    print(f"model {args.model}, process {bench.process.spec}, data {bench.data.spec}, t in [{t_min:.6g}, {t_max:g}]")

    # Reference value and rate curve.
    if bench.exact is not None:
        reference, reference_se = bench.exact(t_min, t_max), 0.0
        reference_result = None
        how = "closed form"
    else:
        reference_result = run(
            bench, estimator="importance", strata=128, samples=8, target_stderr=args.reference_target, seed=1000, **common
        )
        reference, reference_se = float(reference_result["s_nn"]), float(reference_result["s_nn_stderr"])
        how = f"importance sampling with 128 strata, {reference_result.attrs['network_evaluations']} evaluations"
    print(f"reference S_NN = {reference:.6g} ± {reference_se:.2g} nats ({how})")
    rate, rate_how = rate_function(bench, reference_result)

    # The reference code's estimator: 499 trapezoid nodes uniform in t from t_2.
    paper_grid = make_grid(bench.process, t_min, t_max, benchlib.PAPER_NODES - 1, "trapezoid-t")
    pilot = run(bench, nodes=benchlib.PAPER_NODES - 1, rule="trapezoid-t", samples=args.pilot_samples, seed=1, **common)
    v1 = float((paper_grid.weights**2) @ (pilot["s_nn_rate_stderr"].values ** 2 * args.pilot_samples))
    paper_bias = quadrature_bias(bench, paper_grid, rate, reference)
    print(
        f"reference-code estimator: quadrature bias {100 * paper_bias / reference:+.3f} % ({rate_how}); "
        f"one-sample-per-node variance V1 = {v1:.4g} from a pilot of {pilot.attrs['network_evaluations']} evaluations"
    )
    budgets = {}
    cases = [("with that bias", paper_bias)]
    if bench.exact_rate is None:
        cases.append(("with zero bias (lower bound)", 0.0))
    for label, bias in cases:
        room = WITHIN * reference - abs(bias)
        per_node = math.ceil(Z95**2 * v1 / room**2) if room > 0 else math.inf
        budgets[label] = (benchlib.PAPER_NODES - 1) * max(per_node, 1) if room > 0 else math.inf
        if math.isinf(per_node):
            print(f"  {label}: its bias alone exceeds 1 %, so it never lands within 1 %")
        else:
            print(f"  {label}: M = {per_node} images per node, {budgets[label]} evaluations")
    print("  the paper's protocol: M = 1000, 500000 evaluations")

    # This package's estimators, sampling towards the error budget.
    target = WITHIN / Z95
    estimators = {
        "default (importance, gaussian proposal, 64 strata)": dict(estimator="importance", strata=64),
        "grid (simpson, 65 nodes in log σ̃)": dict(nodes=65),
    }
    medians = {}
    for name, options in estimators.items():
        evaluations, errors = [], []
        for repeat in range(args.check):
            result = run(bench, samples=args.planning_samples, target_stderr=target, seed=2000 + repeat, **options, **common)
            evaluations.append(float(result.attrs["network_evaluations"]))
            errors.append(float(result["s_nn"]) / reference - 1)
        landed = sum(abs(error) <= WITHIN for error in errors)
        medians[name] = float(np.median(evaluations))
        print(f"{name}: target relative stderr {target:.4g}")
        print(f"  evaluations {benchlib.summary(evaluations)}; {landed} of {args.check} within 1 %")
        print(f"  errors {', '.join(f'{100 * e:+.2f} %' for e in errors)}; mean {100 * np.mean(errors):+.2f} %")

    ours = medians["default (importance, gaussian proposal, 64 strata)"]
    for label, budget in budgets.items():
        ratio = "unbounded" if math.isinf(budget) else f"{budget / ours:.1f}"
        print(f"ratio (reference-code evaluations {label} / default evaluations): {ratio}   target >= 10")
    print(f"ratio against the paper's 500000 evaluations: {500000 / ours:.0f}")

if __name__ == "__main__":
    main()
