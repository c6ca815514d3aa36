"""Network evaluations each estimator needs to land within 1 % of a high-precision S_NN.

Both estimators measure the same integral, over [t_2, 1] with t_2 the second node of
linspace(1e-5, 1, 500):

- the Neural Entropy reference code's estimator, emulated with this package's own grid code:
  the trapezoid rule uniform in t on the 499 nodes from t_2 to 1, M images per node (the
  paper uses M = 1000, so 500 000 evaluations counting the unused first node);
- the default estimator of `entropy-probe measure`: composite Simpson on 65 nodes uniform in
  log σ̃, sampling in rounds until its standard error reaches the precision needed.

"Lands within 1 %" means |bias| + 1.96 σ ≤ 1 % of the reference (95 % of runs land). For the
reference-code estimator σ² = V₁/M, with V₁ = Σ_k w_k² s_k² from a pilot run with a few samples
per node, and its bias is its quadrature error Σ_k w_k Ṡ(t_k) − S, taken from the closed-form
rate (gaussian-mnist) or from the reference run's rate curve interpolated in log σ̃. The
default estimator is run with --target-stderr (1 % − |its quadrature bias|)/1.96 and its
evaluations are counted; `--check R` repeats it R times and reports how many land within 1 %.

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
    """The rate Ṡ_NN(t): closed form when known, else a spline of the reference curve in log σ̃."""
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
    parser.add_argument("--first-round", type=int, default=8, help="samples per node in the first round of the default estimator")
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
        reference_result = run(bench, nodes=129, samples=16, target_stderr=args.reference_target, seed=1000, **common)
        reference, reference_se = float(reference_result["s_nn"]), float(reference_result["s_nn_stderr"])
        how = f"default estimator with 129 nodes, {reference_result.attrs['network_evaluations']} evaluations"
    print(f"reference S_NN = {reference:.6g} ± {reference_se:.2g} nats ({how})")
    rate, rate_how = rate_function(bench, reference_result)

    # The reference code's estimator: 499 trapezoid nodes uniform in t from t_2.
    paper_grid = make_grid(bench.process, t_min, t_max, benchlib.PAPER_NODES - 1, "trapezoid-t")
    pilot = run(bench, nodes=benchlib.PAPER_NODES - 1, rule="trapezoid-t", samples=args.pilot_samples, seed=1, **common)
    v1 = float((paper_grid.weights**2) @ (pilot["s_nn_rate_stderr"].values ** 2 * args.pilot_samples))
    paper_bias = quadrature_bias(bench, paper_grid, rate, reference)
    room = WITHIN * reference - abs(paper_bias)
    paper_m = math.ceil(Z95**2 * v1 / room**2) if room > 0 else math.inf
    paper_evaluations = (benchlib.PAPER_NODES - 1) * max(paper_m, 1)
    print(
        f"reference-code estimator: quadrature bias {100 * paper_bias / reference:+.3f} % ({rate_how}); "
        f"one-sample-per-node variance V1 = {v1:.4g} from a pilot of {pilot.attrs['network_evaluations']} evaluations"
    )
    if math.isinf(paper_m):
        print("  its bias alone exceeds 1 %: it never lands within 1 % at any M")
    else:
        print(f"  needs M = {paper_m} images per node: {paper_evaluations} evaluations (the paper's protocol: M = 1000, 500000)")

    # The default estimator, sampling in rounds until its error budget is met.
    default_grid = make_grid(bench.process, t_min, t_max, 65, "simpson")
    default_bias = quadrature_bias(bench, default_grid, rate, reference)
    target = (WITHIN - abs(default_bias) / reference) / Z95
    print(f"default estimator: quadrature bias {100 * default_bias / reference:+.4f} %; target relative stderr {target:.4g}")
    evaluations, landed, errors = [], 0, []
    for repeat in range(args.check):
        result = run(bench, nodes=65, samples=args.first_round, target_stderr=target, seed=2000 + repeat, **common)
        evaluations.append(int(result.attrs["network_evaluations"]))
        error = float(result["s_nn"]) / reference - 1
        errors.append(error)
        landed += abs(error) <= WITHIN
    print(
        f"  evaluations: {benchlib.summary([float(e) for e in evaluations])}; errors "
        f"{', '.join(f'{100 * e:+.2f} %' for e in errors)}; {landed} of {args.check} within 1 %"
    )
    ours = float(np.median(evaluations))
    if math.isinf(paper_m):
        print("ratio (reference-code evaluations / default evaluations): unbounded (the reference code's bias exceeds 1 %)")
    else:
        print(f"ratio (reference-code evaluations / default evaluations): {paper_evaluations / ours:.1f}   target >= 10")
    print(f"ratio against the paper's 500000 evaluations: {500000 / ours:.0f}")


if __name__ == "__main__":
    main()
