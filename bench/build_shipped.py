"""Rebuild the shipped reference checkpoints and their catalog entries from scratch.

For every recipe below the script

1. trains the network with `entropy-probe train` (the exact command goes into the entry),
2. writes a float16 copy of the final checkpoint to catalog/shipped/NAME
   (`entropy_probe.train.io.write_float16_copy`; loaders cast it back to float32),
3. measures that copy with `entropy-probe measure` on the model's held-out data, and
4. writes catalog/NAME.json: files and their SHA-256, the recorded S_NN and cross-entropy bound
   with standard errors and the measurement settings, and the training provenance.

The recorded numbers are measured on exactly the shipped float16 weights. On the CPU, training
with a given seed and thread count is deterministic, so a rebuild on the same kind of machine
should reproduce the weights. On other hardware the weights differ by round-off, which training
can amplify, so a rebuilt network has numbers close to the recorded ones but not equal.

Usage (from the repository root, with the package installed):

    python bench/build_shipped.py                      # all recipes, one after the other
    python bench/build_shipped.py --only mnist-unet-vp --work runs/shipped
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "catalog"

#: Measurement settings of every recorded number: the defaults of `entropy-probe measure`, so
#: `entropy-probe measure NAME` with no options repeats the recorded measurement.
MEASURE = {"samples": 256, "seed": 0}

#: name -> title, description and the options of `entropy-probe train` (without --out).
RECIPES: dict[str, dict] = {
    "mnist-unet-vp": {
        "title": "MNIST U-Net, 100 training digits, VP process (the default model of 'measure')",
        "description": (
            "Unconditional U-Net of the 'mnist' preset (channels 32, 64, 64; about 1.0 M parameters) "
            "trained by entropy matching on the first 10 images of every class of the bundled MNIST "
            "digits (N = 100, pixels in [0, 1]) under vp:beta_min=0.1,beta_max=16. Short training on "
            "2 CPU cores: an early-training network, not a converged one."
        ),
        "train": [
            "--model", "unet", "--data", "mnist:n_c=10", "--process", "vp:beta_min=0.1,beta_max=16",
            "--epochs", "120", "--batch-size", "32", "--lr", "1e-3", "--seed", "0",
        ],
    },
    "mnist-unet-sl": {
        "title": "MNIST U-Net, 100 training digits, SL process",
        "description": (
            "The U-Net of mnist-unet-vp, trained the same way under sl:sigma0=0.1, whose equilibrium "
            "is N(0, 0.01 I)."
        ),
        "train": [
            "--model", "unet", "--data", "mnist:n_c=10", "--process", "sl:sigma0=0.1",
            "--epochs", "120", "--batch-size", "32", "--lr", "1e-3", "--seed", "0",
        ],
    },
    "gmm3-mlp-vp": {
        "title": "Mixture MLP, d = 3 Gaussian mixture, VP process",
        "description": (
            "The Neural Entropy paper's mixture network (random Fourier features, widths 512 and 256) "
            "trained on N = 8192 samples of the 5-component mixture gmm:dim=3,seed=0 under "
            "vp:beta_min=0.1,beta_max=16. Measured on fresh draws of the mixture, so S_tot and the "
            "score error are exact-law quantities."
        ),
        "train": [
            "--model", "mlp", "--data", "gmm:dim=3,seed=0,n=8192,sample_seed=0", "--process", "vp:beta_min=0.1,beta_max=16",
            "--epochs", "10", "--batch-size", "32", "--lr", "1e-4", "--noise-draws", "10", "--seed", "0",
        ],
    },
    "gmm3-mlp-sl": {
        "title": "Mixture MLP, d = 3 Gaussian mixture, SL process",
        "description": (
            "The network of gmm3-mlp-vp trained under sl:sigma0=0.1 with the settings of the cpu scale "
            "of the paper-gmm recipe: lr 1e-3 with an exponential moving average of the weights (decay "
            "0.99), 20 epochs. Under this process S_NN approaches S_tot slowly (the paper trains 200 "
            "epochs), so this run stays below S_tot."
        ),
        "train": [
            "--model", "mlp", "--data", "gmm:dim=3,seed=0,n=8192,sample_seed=0", "--process", "sl:sigma0=0.1",
            "--epochs", "20", "--batch-size", "32", "--lr", "1e-3", "--ema", "0.99", "--noise-draws", "10",
            "--seed", "0",
        ],
    },
}

#: Scalars of the measurement copied into the entry, each with its standard error when it has one.
RECORDED_SCALARS = ("s_nn", "cross_term", "denoising_loss", "ce_bound", "ce_bound_bpd", "s_tot", "score_error", "kl_bound")


def machine_description() -> dict:
    """CPU model, usable cores, torch threads and load: what the wall times were measured on."""
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cores_available": cores,
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def run_command(argv: list[str], log: Path) -> float:
    """Run `entropy-probe ARGV` with this interpreter, output to `log`; return the wall time in seconds."""
    env = dict(os.environ, ENTROPY_PROBE_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    with open(log, "w") as handle:
        handle.write("$ entropy-probe " + shlex.join(argv) + "\n")
        handle.flush()
        result = subprocess.run([sys.executable, "-m", "entropy_probe", *argv], stdout=handle, stderr=subprocess.STDOUT, env=env)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"'entropy-probe {shlex.join(argv)}' failed with status {result.returncode}; see {log}")
    return elapsed


def recorded_numbers(result: Path) -> dict:
    import xarray as xr

    with xr.open_dataset(result, engine="h5netcdf") as dataset:
        numbers = {}
        for name in RECORDED_SCALARS:
            if name in dataset:
                numbers[name] = float(dataset[name])
                if f"{name}_stderr" in dataset:
                    numbers[f"{name}_stderr"] = float(dataset[f"{name}_stderr"])
        attrs = dict(dataset.attrs)
    settings = {
        "process": attrs["process"],
        "t_min": float(attrs["t_min"]),
        "t_max": float(attrs["t_max"]),
        "estimator": attrs["estimator"],
        "samples": int(attrs["samples_per_node"]),
        "seed": int(attrs["seed"]),
        "data": attrs["data"],
        "batch_size": int(attrs["batch_size"]),
    }
    if attrs["estimator"] == "importance":
        settings["strata"] = int(attrs["strata"])
        settings["proposal"] = attrs["proposal"]
    else:
        settings["rule"] = attrs["quadrature_rule"]
        settings["nodes"] = int(attrs["nodes"])
    return {
        **numbers,
        "units": {"s_nn": "nats", "cross_term": "nats", "denoising_loss": "nats", "ce_bound": "nats", "ce_bound_bpd": "bits/dim",
                  "s_tot": "nats", "score_error": "nats", "kl_bound": "nats"},
        "settings": settings,
        "network_evaluations": int(attrs["network_evaluations"]),
        "wall_time_seconds": float(attrs["wall_time_seconds"]),
    }


def build(name: str, recipe: dict, work: Path, catalog: Path, reuse_runs: bool = False) -> Path:
    from entropy_probe import __version__
    from entropy_probe.checkpoint import CONFIG_NAME, WEIGHTS_NAME, sha256_file, write_json_atomic
    from entropy_probe.train.io import write_float16_copy

    run = work / name
    train_argv = ["train", *recipe["train"], "--out", str(run), "--overwrite"]
    # The training record lets --reuse-runs rebuild the entry without training again.
    record_path = work / f"{name}.train.json"
    record = json.loads(record_path.read_text()) if reuse_runs and record_path.is_file() else None
    if record is not None and record["argv"] == train_argv:
        print(f"[{name}] reusing the finished run {run}", flush=True)
    else:
        machine = machine_description()
        print(f"[{name}] training: entropy-probe {shlex.join(train_argv)}", flush=True)
        seconds = run_command(train_argv, work / f"{name}.train.log")
        record = {"argv": train_argv, "seconds": round(seconds, 1), "machine": machine}
        write_json_atomic(record_path, record)
    run_config = json.loads((run / CONFIG_NAME).read_text())
    losses = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines() if line.strip()]

    shipped = catalog / "shipped" / name
    write_float16_copy(run, shipped, overwrite=True)
    config = json.loads((shipped / CONFIG_NAME).read_text())

    result = work / f"{name}.nc"
    data = config["data"]["heldout_spec"]
    measure_options = [
        "--data", data, "--samples", str(MEASURE["samples"]), "--seed", str(MEASURE["seed"]),
    ]
    measure_argv = ["measure", str(shipped), *measure_options, "--device", "cpu", "--out", str(result), "--overwrite"]
    print(f"[{name}] measuring: entropy-probe {shlex.join(measure_argv)}", flush=True)
    run_command(measure_argv, work / f"{name}.measure.log")
    recorded = recorded_numbers(result)
    recorded["command"] = "entropy-probe measure " + shlex.join([name, *measure_options, "--out", "result.nc"])
    recorded["machine"] = machine_description()

    files = {}
    for file_name in (CONFIG_NAME, WEIGHTS_NAME):
        path = shipped / file_name
        files[file_name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    entry = {
        "schema_version": 1,
        "name": name,
        "kind": "shipped",
        "title": recipe["title"],
        "description": recipe["description"],
        "path": f"shipped/{name}",
        "process": config["process"],
        "data": config["data"]["spec"],
        "size": {
            "architecture": config["architecture"],
            "parameters": config["parameters"],
            "weights_dtype": config["weights_dtype"],
            "bytes": sum(item["bytes"] for item in files.values()),
        },
        "files": files,
        "recorded": recorded,
        "provenance": {
            "train_command": "entropy-probe " + shlex.join(["train", *recipe["train"], "--out", "RUN"]),
            "train_argv": ["train", *recipe["train"], "--out", "RUN"],
            "convert": f"python -c 'from entropy_probe.train.io import write_float16_copy; write_float16_copy(\"RUN\", \"catalog/shipped/{name}\")'",
            "seed": run_config["seed"],
            "epochs": run_config["epoch"],
            "steps": run_config["step"],
            "final_loss": run_config["loss"],
            "loss_weighting": run_config["training"]["weighting"],
            "train_wall_time_seconds": record["seconds"],
            "epoch_seconds_total": round(sum(item["seconds"] for item in losses), 1),
            "float32_weights_sha256": config["converted_from"]["weights_sha256"],
            "machine": record["machine"],
            "package_version": __version__,
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "build_script": "bench/build_shipped.py",
        },
    }
    path = catalog / f"{name}.json"
    write_json_atomic(path, entry)
    print(f"[{name}] S_NN = {recorded['s_nn']:.6g} ± {recorded['s_nn_stderr']:.2g} nats; wrote {path}", flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), help="build only these checkpoints")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "shipped", help="folder for the training runs, logs and measurements")
    parser.add_argument("--catalog", type=Path, default=CATALOG, help="catalog folder to write into")
    parser.add_argument("--reuse-runs", action="store_true", help="skip the training of a recipe whose finished run in --work has the same command")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(RECIPES):
        build(name, RECIPES[name], args.work, args.catalog, reuse_runs=args.reuse_runs)


if __name__ == "__main__":
    main()
