"""Peak memory of `measure` against the number of samples (it should stay flat).

Every sample count runs in a fresh process, which reports its peak resident memory
(ru_maxrss) before and after the measurement, and on CUDA the peak of
torch.cuda.max_memory_allocated. The estimator keeps only per-node sums, so the peak should not
grow with the samples; the batch size sets it.

    python bench/memory.py --model random-unet --samples 16,64,256,1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import benchlib

CHILD = """
import json, resource, sys
sys.path.insert(0, {bench!r})
import torch
import benchlib
from entropy_probe.probe import MeasureSettings, measure
bench = benchlib.load({model!r}, {process!r}, {data!r})
settings = MeasureSettings(samples={samples}, nodes={nodes}, batch_size={batch_size}, device={device!r}, progress=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = measure(bench.model, bench.process, bench.data, settings)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print(json.dumps({{"before_kb": before, "after_kb": after, "cuda_bytes": cuda,
                  "evaluations": int(result.attrs["network_evaluations"]), "seconds": result.attrs["wall_time_seconds"]}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-unet")
    parser.add_argument("--process", default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--samples", default="16,64,256,1024", help="comma-separated samples per node")
    parser.add_argument("--nodes", type=int, default=17)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per sample count")
    args = parser.parse_args()
    benchlib.header("peak memory against the number of samples")

    bench_dir = str(Path(__file__).resolve().parent)
    print(f"{'samples/node':>12s} {'evaluations':>11s} {'RSS before MB':>13s} {'peak RSS MB':>11s} {'CUDA peak MB':>12s} {'seconds':>8s}")
    peaks: dict[int, list[float]] = {}
    sizes = [int(s) for s in args.samples.split(",")]
    for _ in range(args.repeats):
        for samples in sizes:
            code = CHILD.format(
                bench=bench_dir, model=args.model, process=args.process, data=args.data, samples=samples,
                nodes=args.nodes, batch_size=args.batch_size, device=args.device,
            )
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"error: the measurement with {samples} samples failed:\n{done.stderr}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            peaks.setdefault(samples, []).append(record["after_kb"] / 1024)
            print(
                f"{samples:12d} {record['evaluations']:11d} {record['before_kb'] / 1024:13.1f} {record['after_kb'] / 1024:11.1f} "
                f"{record['cuda_bytes'] / 2**20:12.1f} {record['seconds']:8.2f}"
            )
    smallest, largest = min(peaks[sizes[0]]), min(peaks[sizes[-1]])
    print(f"peak RSS, largest over smallest sample count (lowest of the repeats): {largest / smallest:.3f} (flat = 1.00)")


if __name__ == "__main__":
    main()
