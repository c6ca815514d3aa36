"""The estimator and throughput options of `measure` through the real command line."""

from __future__ import annotations

import json

import pytest

from entropy_probe.results import read_dataset


def test_measure_importance_until_target(cli_run, mixture_dir, tmp_path):
    out = tmp_path / "r.nc"
    done = cli_run(
        "measure", str(mixture_dir), "--process", "vp", "--estimator", "importance", "--strata", "16",
        "--target-stderr", "0.02", "--batch-size", "auto", "--precision", "bf16", "--out", str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "strata of the gaussian proposal" in done.stdout
    result = read_dataset(out)
    assert float(result["s_nn_stderr"]) <= 0.02 * float(result["s_nn"])
    assert result.attrs["target_met"] == "true"
    assert result.attrs["precision"] == "fp32"
    options = json.loads((tmp_path / "r.options.json").read_text())["options"]
    assert options["samples"] == 8
    assert options["batch_size"] == "auto"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-size", "0"], "must be >= 1 or 'auto'"),
        (["--batch-size", "big"], "'big' is invalid"),
        (["--target-stderr", "2"], "target standard error 2.0"),
        (["--max-evaluations", "10"], "--max-evaluations 10"),
        (["--strata", "0", "--estimator", "importance"], "strata 0"),
        (["--proposal", "nope"], "nope"),
        (["--memory-budget", "-1", "--batch-size", "auto"], "memory budget -1.0"),
    ],
)
def test_invalid_estimation_options(cli_run, mixture_dir, tmp_path, args, fragment):
    out = tmp_path / "r.nc"
    done = cli_run("measure", str(mixture_dir), *args, "--out", str(out))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert fragment in errors[0]
    assert not out.exists()
