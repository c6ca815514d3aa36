"""Quadrature error of the node rules on an image-like rate, and Monte Carlo error per evaluation.

The grid estimator's standard error leaves out the quadrature error, so a default rule must
make that error small against the Monte Carlo error of a typical run.

- gaussian-mnist: every rule is applied to the closed-form rate, so its error is exact.
- a network: one run of Simpson's rule on 129 nodes uniform in log σ̃. Simpson on 65, 33 and 17
  nodes and the trapezoid rule on 65 use every 2nd, 4th or 8th of those nodes. Their
  difference from the 129-node value is therefore computed from the same node means, with its
  own standard error Σ_k (w_k − w'_k)² var_k. That difference is the quadrature error up to the
  far smaller error of the 129-node rule. Rules on other nodes (Gauss, uniform in t) are applied
  to a cubic spline of the 129-node rate curve in log σ̃, whose Monte Carlo noise limits them.

It also prints the relative standard error the default estimator reaches with the given
evaluations (one run).

    python bench/quadrature.py --model gaussian-mnist
    python bench/quadrature.py --model runs/mnist --reference-samples 64
"""

from __future__ import annotations

import argparse

import numpy as np

import benchlib
from efficiency import rate_function
from entropy_probe.probe import MeasureSettings, measure
from entropy_probe.quadrature import make_grid

RULES = [
    ("simpson", 17), ("simpson", 33), ("simpson", 65), ("simpson", 129),
    ("trapezoid", 65), ("gauss", 33), ("trapezoid-t", 65), ("trapezoid-t", 499),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gaussian-mnist")
    parser.add_argument("--process", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--t-min", type=float, default=None, help="default: the process's")
    parser.add_argument("--evaluations", type=int, default=65 * 256, help="budget of the Monte Carlo comparison")
    parser.add_argument("--reference-samples", type=int, default=64, help="samples per node of the 129-node run (networks)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    benchlib.header("quadrature error of the node rules")

    bench = benchlib.load(args.model, args.process, args.data)
    t_min = args.t_min if args.t_min is not None else bench.process.default_t_min
    t_max = bench.process.default_t_max
    common = dict(t_min=t_min, t_max=t_max, batch_size=args.batch_size, device=args.device, progress=False)
    reference_result = None
    if bench.exact is None:
        reference_result = measure(bench.model, bench.process, bench.data, MeasureSettings(nodes=129, samples=args.reference_samples, seed=7, **common))
    rate, how = rate_function(bench, reference_result)
    if bench.exact is not None:
        exact = bench.exact(t_min, t_max)
    else:
        exact = float(reference_result["s_nn"])
    print(f"model {args.model}, process {bench.process.spec}, t in [{t_min:g}, {t_max:g}]; S = {exact:.6g} nats")

    print(f"{'rule':12s} {'nodes':>5s} {'relative quadrature error':>26s}  how")
    for rule, nodes in RULES:
        grid = make_grid(bench.process, t_min, t_max, nodes, rule)
        if reference_result is None:
            print(f"{rule:12s} {nodes:5d} {float(grid.integrate(rate(grid.t))) / exact - 1:+26.2e}  closed-form rate")
        elif rule in ("simpson", "trapezoid") and (128 % (nodes - 1)) == 0:
            step = 128 // (nodes - 1)
            fine = reference_result["quadrature_weight"].values
            weights = np.zeros(129)
            weights[::step] = grid.weights
            means = reference_result["s_nn_rate"].values
            variances = reference_result["s_nn_rate_stderr"].values ** 2
            difference = float((weights - fine) @ means)
            stderr = float(np.sqrt(((weights - fine) ** 2) @ variances))
            print(f"{rule:12s} {nodes:5d} {difference / exact:+14.2e} ± {stderr / exact:8.1e}  difference from simpson 129 on shared nodes")
        else:
            error = float(grid.integrate(rate(grid.t))) / exact - 1
            print(f"{rule:12s} {nodes:5d} {error:+26.2e}  {how} (noise of the curve included)")

    per_node = max(2, args.evaluations // 65)
    result = measure(bench.model, bench.process, bench.data, MeasureSettings(nodes=65, samples=per_node, seed=11, **common))
    relative = float(result["s_nn_stderr"]) / float(result["s_nn"])
    print(f"default rule (simpson, 65 nodes) with {65 * per_node} evaluations: relative standard error {relative:.2e}")


if __name__ == "__main__":
    main()
