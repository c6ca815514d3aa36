"""Probe overhead: wall time of `measure` over the bare forward passes of its network.

The script records the inputs of every forward call of the network module during one
measurement. It then times, in alternation, (a) the whole measurement (draws, rates, sums, the
Dataset) and (b) the same forward calls on the recorded inputs and nothing else. The ratio
a/b is the cost of everything the probe adds; 1.00 would be free. The module timed is the
model's `network` (its `core` when it has one, which leaves the adapter's own arithmetic on
the probe's side of the ratio).

    python bench/overhead.py --model random-unet --samples 64 --strata 16 --repeats 5
"""

from __future__ import annotations

import argparse

import torch

import benchlib
from entropy_probe.probe import MeasureSettings, measure


def network_module(model) -> torch.nn.Module:
    module = getattr(model, "network", None)
    if not isinstance(module, torch.nn.Module):
        raise SystemExit(f"error: model {type(model).__name__} runs no torch module; choose a network, for example --model random-unet")
    core = getattr(module, "core", None)
    return core if isinstance(core, torch.nn.Module) else module


def record_inputs(module: torch.nn.Module, run) -> list:
    """Run `run()` and return copies of the arguments of every forward call of `module`."""
    calls = []

    def keep(_module, args, kwargs):
        copy = lambda value: value.detach().clone() if torch.is_tensor(value) else value  # noqa: E731
        calls.append(([copy(a) for a in args], {name: copy(v) for name, v in kwargs.items()}))

    handle = module.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-unet", help="checkpoint path or random-unet")
    parser.add_argument("--process", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--samples", type=int, default=64, help="samples per stratum")
    parser.add_argument("--strata", type=int, default=16, help="strata of the default (importance) estimator")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    benchlib.add_threads_option(parser)
    args = parser.parse_args()
    benchlib.apply_threads(args.threads)
    benchlib.header("probe overhead: measure time / bare network forward time")

    bench = benchlib.load(args.model, args.process, args.data)
    module = network_module(bench.model)

    def run(prefetch: bool = True):
        settings = MeasureSettings(
            estimator="importance", samples=args.samples, strata=args.strata, batch_size=args.batch_size,
            device=args.device, seed=0, progress=False, prefetch=prefetch,
        )
        return measure(bench.model, bench.process, bench.data, settings)

    calls = record_inputs(module, run)
    evaluations = sum(call[0][0].shape[0] for call in calls)
    print(f"model {args.model}: {evaluations} network evaluations in {len(calls)} forward calls per measurement")

    def bare():
        with torch.inference_mode():
            for call_args, call_kwargs in calls:
                module(*call_args, **call_kwargs)

    wall, cpu, wall_serial, cpu_serial, bare_times = [], [], [], [], []
    for _ in range(args.repeats):
        measured = benchlib.clocked(run)
        forward = benchlib.clocked(bare)
        serial = benchlib.clocked(lambda: run(prefetch=False))
        wall.append(measured[0] / forward[0])
        cpu.append(measured[1] / forward[1])
        wall_serial.append(serial[0] / forward[0])
        cpu_serial.append(serial[1] / forward[1])
        bare_times.append(forward[0])
        print(
            f"  measure {measured[0]:.3f} s ({measured[1]:.3f} s CPU), without prefetch {serial[0]:.3f} s "
            f"({serial[1]:.3f} s CPU), bare forward {forward[0]:.3f} s ({forward[1]:.3f} s CPU)"
        )
    print(f"bare forward per evaluation: {benchlib.summary([1e3 * t / evaluations for t in bare_times])} ms")
    print(f"overhead ratio (measure / bare forward), wall clock: {benchlib.summary(wall)}   target <= 1.10")
    print(f"overhead ratio, CPU time:                            {benchlib.summary(cpu)}")
    print(f"overhead ratio without prefetch, wall clock:         {benchlib.summary(wall_serial)}")
    print(f"overhead ratio without prefetch, CPU time:           {benchlib.summary(cpu_serial)}")

if __name__ == "__main__":
    main()
