"""Variance of S_NN at equal network evaluations: each estimator against uniform-t Monte Carlo.

Every estimator runs R times with different seeds and the same number of evaluations N. The
script prints the variance of the R estimates, the mean of the reported squared standard
errors, and the ratio of the uniform-t variance to each estimator's. Uniform-t Monte Carlo
draws t uniformly on [t_min, T] for every sample and averages (T − t_min) Ṡ(t), the plain
unbiased estimator.

    python bench/variance.py --model gaussian-mnist --evaluations 4160 --repeats 20
"""

from __future__ import annotations

import argparse

import numpy as np

import benchlib
from entropy_probe.probe import MeasureSettings, measure


DEFAULT = "default: importance, gaussian, 64 strata"
GRID = "grid: simpson, 65 nodes in log σ̃"


def estimators(evaluations: int) -> dict[str, dict]:
    per_node = max(2, evaluations // 65)
    per_stratum = max(2, evaluations // 64)
    return {
        "uniform-t Monte Carlo": dict(estimator="importance", proposal="uniform-t", strata=1, samples=evaluations),
        DEFAULT: dict(estimator="importance", strata=64, samples=per_stratum),
        GRID: dict(nodes=65, samples=per_node),
        "default with antithetic pairs": dict(estimator="importance", strata=64, samples=max(2, per_stratum // 2), antithetic=True),
        "importance, pilot proposal, 64 strata": dict(estimator="importance", proposal="pilot", strata=64, samples=max(2, (evaluations - 264) // 64)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gaussian-mnist")
    parser.add_argument("--process", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--evaluations", type=int, default=65 * 64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--t-min", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    benchlib.header("variance of S_NN at equal evaluations")

    bench = benchlib.load(args.model, args.process, args.data)
    print(f"model {args.model}, process {bench.process.spec}, {args.evaluations} evaluations per estimate, {args.repeats} seeds")
    rows = {}
    for name, options in estimators(args.evaluations).items():
        values, reported, used = [], [], 0
        for seed in range(args.repeats):
            settings = MeasureSettings(t_min=args.t_min, batch_size=args.batch_size, device=args.device, seed=seed, progress=False, **options)
            result = measure(bench.model, bench.process, bench.data, settings)
            values.append(float(result["s_nn"]))
            reported.append(float(result["s_nn_stderr"]) ** 2)
            used = int(result.attrs["network_evaluations"])
        rows[name] = (np.var(values, ddof=1), float(np.mean(reported)), float(np.mean(values)), used)

    baseline = rows["uniform-t Monte Carlo"][0]
    print(f"{'estimator':40s} {'evals':>6s} {'mean S_NN':>11s} {'variance':>11s} {'reported':>11s} {'uniform-t / this':>17s}")
    for name, (variance, reported, mean, used) in rows.items():
        print(f"{name:40s} {used:6d} {mean:11.5g} {variance:11.4g} {reported:11.4g} {baseline / variance:17.1f}")
    print(f"variance ratio uniform-t / default: {baseline / rows[DEFAULT][0]:.1f}   target >= 10")
    print(f"variance ratio uniform-t / grid:    {baseline / rows[GRID][0]:.1f}")


if __name__ == "__main__":
    main()
