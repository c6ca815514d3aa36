"""The benchmark scripts run end to end at tiny sizes (their numbers are not checked here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

CASES = {
    "overhead.py": ["--model", "random-unet", "--samples", "2", "--strata", "3", "--repeats", "1", "--threads", "1"],
    "efficiency.py": ["--model", "gaussian-mnist", "--pilot-samples", "2", "--planning-samples", "2", "--check", "1"],
    "variance.py": ["--model", "gaussian-mnist", "--evaluations", "260", "--repeats", "2"],
    "memory.py": ["--model", "random-unet", "--samples", "2,4", "--nodes", "3"],
    "smoothness.py": ["--model", "gaussian-mnist", "--items", "4", "--times", "20"],
    "calibration.py": ["--model", "gaussian-mnist", "--repeats", "3"],
    "quadrature.py": ["--model", "gaussian-mnist", "--evaluations", "130"],
    "trainer_throughput.py": ["--channels", "8,16", "--batch-size", "4", "--steps", "2", "--repeats", "1", "--threads", "1"],
}

EXPECTED = {
    "overhead.py": "overhead ratio (measure / bare forward)",
    "efficiency.py": "ratio (reference-code evaluations with that bias / default evaluations)",
    "variance.py": "variance ratio uniform-t / default",
    "memory.py": "peak RSS, largest over smallest sample count",
    "smoothness.py": "relative residual: standard deviation",
    "calibration.py": "spread / reported standard error",
    "quadrature.py": "default rule (simpson, 65 nodes)",
    "trainer_throughput.py": "throughput ratio (entropy-probe / plain)",
}


@pytest.mark.parametrize("script", list(CASES))
def test_bench_script_runs(script):
    env = dict(os.environ, OMP_NUM_THREADS="1", ENTROPY_PROBE_NO_PROGRESS="1")
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *CASES[script]], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr
    assert EXPECTED[script] in done.stdout
    assert "machine:" in done.stdout
