"""Smoothness of a model's rate in time, seen with common random numbers.

The script evaluates σ² E|e_θ|² (the rate per unit log σ̃) at many times on a geometric grid,
with the same `--items` pairs (x_0, ε) at every time, so the Monte Carlo noise is nearly the
same function of t everywhere and what changes from one time to the next is the model.
It fits a degree-6 polynomial in log t and prints the relative residual: wiggles of a few per
cent with a period of a few node spacings make a quadrature rule's error larger than its
standard error, which is why `measure` defaults to importance sampling.

    python bench/smoothness.py --model runs/mnist --t-low 0.002 --t-high 0.06
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import benchlib
from entropy_probe.estimators import sample_rates
from entropy_probe.field import Coefficients, EntropyMatchingField


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gaussian-mnist")
    parser.add_argument("--process", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--times", type=int, default=160)
    parser.add_argument("--t-low", type=float, default=0.002)
    parser.add_argument("--t-high", type=float, default=0.06)
    benchlib.add_threads_option(parser)
    args = parser.parse_args()
    benchlib.apply_threads(args.threads)
    benchlib.header("smoothness of the rate in time (common random numbers)")

    bench = benchlib.load(args.model, args.process, args.data)
    generator = torch.Generator().manual_seed(0)
    if bench.data.finite:
        x0, labels = bench.data.get(np.arange(min(args.items, len(bench.data))))
    else:
        x0, labels = bench.data.sample(args.items, generator)
    x0 = x0.to(torch.float64)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    field = EntropyMatchingField(bench.model, bench.process)
    times = np.geomspace(args.t_low, args.t_high, args.times)
    per_u = []
    with torch.inference_mode():
        for t in times:
            coeffs = Coefficients.at(bench.process, np.full(x0.shape[0], t))
            rate = sample_rates(field, None, x0, noise, coeffs, labels)["nn"].numpy().mean()
            per_u.append(rate / float(bench.process.dlog_sigma_tilde_dt(t)))
    per_u = np.asarray(per_u)
    log_t = np.log(times)
    residual = per_u / np.polyval(np.polyfit(log_t, per_u, 6), log_t) - 1
    spacing = float(np.diff(log_t)[0])
    print(f"model {args.model}, {x0.shape[0]} pairs (x_0, ε) at {args.times} times in [{args.t_low:g}, {args.t_high:g}]")
    print(f"{'t':>10s} {'rate per unit log σ̃':>20s} {'relative residual':>18s}")
    for index in range(0, args.times, max(1, args.times // 20)):
        print(f"{times[index]:10.4g} {per_u[index]:20.5g} {residual[index]:+18.4f}")
    crossings = int(np.sum(np.diff(np.sign(residual)) != 0))
    print(f"relative residual: standard deviation {residual.std():.4f}, largest {np.abs(residual).max():.4f}")
    print(f"sign changes of the residual: {crossings} over {args.times} times ({spacing:.4f} apart in log t)")


if __name__ == "__main__":
    main()
