"""Calibration of the reported standard errors: spread of repeated estimates over their errors.

Runs each estimator R times with different seeds and prints the standard deviation of the
estimates over the root mean square of the reported standard errors (1 when the errors are
calibrated, with a relative uncertainty of about 1/√(2R)), and the mean error against the
closed form of gaussian-mnist in units of the standard error of that mean.

    python bench/calibration.py --model gaussian-mnist --repeats 400
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import benchlib
from entropy_probe.probe import MeasureSettings, measure

DESIGNS = {
    "grid, 17 nodes x 8": dict(nodes=17, samples=8),
    "importance, 16 strata x 8": dict(estimator="importance", strata=16, samples=8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gaussian-mnist")
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args()
    benchlib.header("calibration of the reported standard errors")

    bench = benchlib.load(args.model)
    exact = bench.exact(bench.process.default_t_min, bench.process.default_t_max) if bench.exact else None
    print(f"model {args.model}, {args.repeats} seeds per estimator")
    for name, options in DESIGNS.items():
        values, errors = [], []
        for seed in range(args.repeats):
            settings = MeasureSettings(seed=seed, batch_size=4096, reference_samples=16, progress=False, **options)
            result = measure(bench.model, bench.process, bench.data, settings)
            values.append(float(result["s_nn"]))
            errors.append(float(result["s_nn_stderr"]))
        values, errors = np.asarray(values), np.asarray(errors)
        ratio = values.std(ddof=1) / math.sqrt(float(np.mean(errors**2)))
        line = f"{name}: spread / reported standard error {ratio:.3f}"
        if exact is not None:
            deviation = (values.mean() - exact) / (values.std(ddof=1) / math.sqrt(args.repeats))
            line += f"; mean minus exact value = {deviation:+.2f} standard errors of the mean"
        print(line)


if __name__ == "__main__":
    main()
