"""Bad input through the real command line: one clear error, no traceback, no output left behind.

Every case calls the console script's entry point `entropy_probe.cli:main` with its arguments,
in-process (fast). It checks for a non-zero exit status and exactly one `error:` line on stderr
that names the bad value and the fix. It also checks that no exception other than the exit is
raised and that no output file or temporary sibling of it is left. A few cases also run the installed `entropy-probe` script in a
subprocess, where "no traceback" is checked on the real stderr, and `--debug` is shown to
bring the traceback back.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import contextlib
import io
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

def _permissions_enforced() -> bool:
    """Return whether a file with mode 0 is unreadable here (not so for root with its usual capabilities)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("x")
        os.chmod(probe, 0)
        try:
            probe.read_text()
        except PermissionError:
            return True
        return False


IS_ROOT = not _permissions_enforced()
ROOT_REASON = "file permissions are not enforced for this user (root), so chmod cannot make a path unreadable"

torch.set_num_threads(1)

#: Subprocesses at a time; each is mostly interpreter and torch start-up.
WORKERS = 2

SCRIPT = Path(sys.executable).with_name("entropy-probe")

ENV = {"OMP_NUM_THREADS": "1", "ENTROPY_PROBE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


@dataclass(frozen=True)
class Case:
    """One bad command line; `{w}` in arguments and outputs stands for the workspace, `{n}` for the name."""

    name: str
    args: tuple[str, ...]
    #: Fragments that the single `error:` line must contain (the value and the fix).
    message: tuple[str, ...]
    #: Paths that must not exist afterwards, nor any temporary or partial sibling of them.
    outputs: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    needs_permissions: bool = False


def case(name, args, message, outputs=(), env=None, needs_permissions=False) -> Case:
    message = (message,) if isinstance(message, str) else tuple(message)
    outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    return Case(name, tuple(args), message, outputs, env or {}, needs_permissions)


M = ("measure",)
#: Every case writes to its own path, so that a case that wrongly succeeds cannot break another.
OUT = ("--out", "{w}/{n}.nc")
R = "{w}/{n}.nc"

RP = ("reproduce",)
TINY = ("--scale", "tiny")
#: Output directory of a reproduce case.
D = "{w}/{n}"
DIR_OUT = ("--out", D)

CASES = [
    # --- paths -------------------------------------------------------------------------------
    case("missing-checkpoint", M + ("{w}/nothing",) + OUT, ("'{w}/nothing' not found", "catalog list"), R),
    case("unreadable-checkpoint", M + ("{w}/noaccess",) + OUT, ("{w}/noaccess", "permission"), R, needs_permissions=True),
    case("checkpoint-is-file", M + ("{w}/afile",) + OUT, ("'{w}/afile' is a file", "checkpoint directory"), R),
    case("data-folder-is-file", M + ("{w}/gmm2", "--data", "mnist-idx:dir={w}/afile") + OUT, ("{w}/afile", "is a file", "directory", "give the directory"), R),
    case("missing-data-file", M + ("{w}/gmm2", "--data", "npz:path={w}/missing.npz") + OUT, ("{w}/missing.npz", "not found", "give an existing .npz file"), R),
    case("scheduler-config-for-oracle", M + ("{w}/gmm2", "--scheduler-config", "{w}/missing.json") + OUT, ("--scheduler-config", "{w}/gmm2", "leave it out"), R),
    case("scheduler-config-for-network", M + ("{w}/net", "--scheduler-config", "{w}/missing.json") + OUT, ("--scheduler-config", "{w}/net", "leave it out"), R),
    case("revision-for-shipped-model", M + ("mnist-unet-vp", "--revision", "abc") + OUT, ("--revision abc", "'mnist-unet-vp'", "leave --revision out"), R),
    case("revision-for-local-folder", M + ("{w}/diffusers", "--revision", "abc") + OUT, ("--revision abc", "{w}/diffusers", "local folder", "leave --revision out"), R),
    # --- checkpoint contents ------------------------------------------------------------------
    case("corrupted-weights", M + ("{w}/corrupt",) + OUT, ("{w}/corrupt/model.safetensors", "corrupted", "copy the weights again"), R),
    case("truncated-weights", M + ("{w}/truncated",) + OUT, ("{w}/truncated/model.safetensors", "truncated", "copy the weights again"), R),
    case("swapped-weights", M + ("{w}/swapped",) + OUT, ("{w}/swapped/model.safetensors", "SHA-256", "restore"), R),
    case("config-invalid-json", M + ("{w}/badjson",) + OUT, ("{w}/badjson/config.json", "not valid JSON", "line 1, column 28", "fix its syntax"), R),
    case("config-missing-kind", M + ("{w}/nokind",) + OUT, ("{w}/nokind/config.json", "lacks the key 'kind'", "'oracle' or 'network'", "restore the config.json"), R),
    case("config-unknown-kind", M + ("{w}/otherkind",) + OUT, ("{w}/otherkind/config.json", "kind 'vae'", "upgrade entropy-probe"), R),
    case("config-without-format", M + ("{w}/noformat",) + OUT, ("{w}/noformat/config.json", "'format'", "'_class_name'", "--adapter"), R),
    case("training-state-as-model", M + ("{w}/net/train-state",) + OUT, ("{w}/net/train-state", "training state", "epoch-NNNN"), R),
    case("config-missing-key", M + ("{w}/nokey",) + OUT, ("{w}/nokey", "lacks the key 'architecture'", "restore the config.json"), R),
    case("config-wrong-type", M + ("{w}/wrongtype",) + OUT, ("{w}/wrongtype", "'network' must be dict", "[8, 8]", "restore the config.json"), R),
    case("config-newer-format", M + ("{w}/newer",) + OUT, ("{w}/newer", "format version 99", "upgrade entropy-probe"), R),
    case("oracle-config-wrong-type", M + ("{w}/oraclebad",) + OUT, ("{w}/oraclebad", "'data_shape' must be list", "'two'", "restore the config.json"), R),
    case("weights-do-not-fit", M + ("{w}/mismatch",) + OUT, ("{w}/mismatch", "do not fit", "(16, 8) in the network", "restore the config.json"), R),
    case("malicious-pickle", M + ("{w}/evil",) + OUT, ("{w}/evil/model.pt", "rejected", "io.open", "weights_only=True", "safetensors"), (R, "{w}/pwned")),
    case("pickle-without-config", M + ("{w}/lone.pt",) + OUT, ("{w}/lone.pt", "config.json", "directory"), R),
    # --- data that does not fit ----------------------------------------------------------------
    case("data-shape-mismatch", M + ("{w}/gmm2", "--data", "gmm:dim=5") + OUT, ("shape (5,)", "(2,)", "--data"), R),
    case("channel-mismatch", M + ("mnist-unet-vp", "--data", "npz:path={w}/rgb.npz") + OUT, ("(3, 28, 28)", "(1, 28, 28)", "--data"), R),
    case("empty-dataset", M + ("{w}/gmm2", "--data", "npz:path={w}/empty.npz") + OUT, ("{w}/empty.npz", "empty", "at least one item"), R),
    case("non-finite-data", M + ("{w}/gmm2", "--data", "npz:path={w}/nan.npz") + OUT, ("{w}/nan.npz", "non-finite", "item 1"), R),
    case("n_c-above-class-size", ("train", "--data", "digits:n_c=1000", "--out", "{w}/run-nc"), ("n_c=1000", "use n_c <= 139"), "{w}/run-nc"),
    case("n_c-zero", ("train", "--data", "digits:n_c=0", "--out", "{w}/{n}"), ("n_c=0", ">= 1", "leave n_c out"), "{w}/{n}"),
    case("n_c-negative", ("train", "--data", "digits:n_c=-2", "--out", "{w}/{n}"), ("n_c=-2", ">= 1", "leave n_c out"), "{w}/{n}"),
    case("gmm-n-negative", M + ("{w}/gmm2", "--data", "gmm:dim=2,n=-5") + OUT, ("n=-5", ">= 1", "leave n out"), R),
    case("gmm-n-zero", ("train", "--data", "gmm:dim=2,n=0", "--out", "{w}/{n}"), ("n=0", ">= 1", "leave n out"), "{w}/{n}"),
    case("unknown-data-source", M + ("{w}/gmm2", "--data", "imagenet") + OUT, ("'imagenet'", "choose one of", "gmm:dim=3"), R),
    case("reference-of-other-shape", M + ("{w}/gmm2", "--reference", "{w}/gauss3") + OUT, ("(3,)", "(2,)", "give a reference oracle"), R),
    # --- process and time range ----------------------------------------------------------------
    case("unknown-process", M + ("{w}/gmm2", "--process", "nope") + OUT, ("unknown process 'nope'", "choose one of", "'sl:sigma0=0.1'"), R),
    case("process-bad-value", M + ("{w}/gmm2", "--process", "vp:beta_min=abc") + OUT, ("'abc'", "beta_min", "expected a number", "beta_min=0.1"), R),
    case("process-unknown-parameter", M + ("{w}/gmm2", "--process", "vp:gamma=1") + OUT, ("'gamma'", "allowed parameters", "beta_min, beta_max"), R),
    case("process-inconsistent", M + ("{w}/gmm2", "--process", "vp:beta_min=1,beta_max=0.5") + OUT, ("beta_max=0.5", "'vp:beta_min=0.1,beta_max=16'"), R),
    case("t-min-zero", M + ("{w}/gmm2", "--t-min", "0") + OUT, ("t_min=0.0", "--t-min 0.001"), R),
    case("t-min-negative", M + ("{w}/gmm2", "--t-min", "-0.1") + OUT, ("t_min=-0.1", "--t-min 0.001"), R),
    case("t-min-above-t-max", M + ("{w}/gmm2", "--t-min", "0.5", "--t-max", "0.2") + OUT, ("T=0.2", "--t-max"), R),
    case("t-max-beyond-sl", M + ("{w}/gmm2", "--process", "sl", "--t-max", "1") + OUT, ("T=1.0", "--t-max 0.99999"), R),
    case("sigma-outside-model", M + ("{w}/net", "--t-min", "1e-9") + OUT, ("t from 1e-09 to", "valid only for t from", "(σ/α from", "or larger"), R),
    # --- counts ----------------------------------------------------------------------------
    case("samples-zero", M + ("{w}/gmm2", "--samples", "0") + OUT, ("samples 0", "--samples"), R),
    case("samples-negative", M + ("{w}/gmm2", "--samples", "-4") + OUT, ("samples -4", ">= 2", "--samples 256"), R),
    case("nodes-zero", M + ("{w}/gmm2", "--nodes", "0") + OUT, ("nodes 0", "--nodes"), R),
    case("strata-zero", M + ("{w}/gmm2", "--strata", "0") + OUT, ("strata 0", "--strata"), R),
    case("strata-too-many", M + ("{w}/gmm2", "--strata", "100000000") + OUT, ("strata 100000000", "<= 1048576", "--strata 64"), R),
    case("nodes-too-many", M + ("{w}/gmm2", "--nodes", "100000001") + OUT, ("nodes 100000001", "<= 1048576", "--nodes 65"), R),
    case("batch-size-zero", M + ("{w}/gmm2", "--batch-size", "0") + OUT, ("0", "batch size", ">= 1 or 'auto'"), R),
    case("target-stderr-above-one", M + ("{w}/gmm2", "--target-stderr", "2") + OUT, ("2.0", "--target-stderr", "(0, 1)"), R),
    case("sample-count-zero", ("sample", "{w}/gmm2", "-n", "0", "--out", "{w}/s.npz"), ("-n", "0", ">= 1"), "{w}/s.npz"),
    case("sample-steps-zero", ("sample", "{w}/gmm2", "--steps", "0", "--out", "{w}/s.npz"), ("--steps", "0", ">= 1"), "{w}/s.npz"),
    case("train-epochs-zero", ("train", "--data", "gmm:dim=2,n=16", "--epochs", "0", "--out", "{w}/run0"), ("--epochs 0", ">= 1"), "{w}/run0"),
    case("train-lr-negative", ("train", "--data", "gmm:dim=2,n=16", "--lr", "-1", "--out", "{w}/run0"), ("--lr -1", "such as 1e-4"), "{w}/run0"),
    case("oracle-dim-zero", ("oracle", "gaussian", "--dim", "0", "--out", "{w}/o0"), ("--dim 0", ">= 1"), "{w}/o0"),
    case("oracle-negative-std", ("oracle", "gaussian", "--std", "-1", "--out", "{w}/o0"), ("std -1", "> 0", "--std 1"), "{w}/o0"),
    case("oracle-components-zero", ("oracle", "gmm", "--components", "0", "--out", "{w}/o0"), ("components=0", ">= 1", "--components 5"), "{w}/o0"),
    case("oracle-pickled-npz", ("oracle", "gmm", "--from-file", "{w}/objects.npz", "--out", "{w}/o0"), ("{w}/objects.npz", "numeric arrays", "object arrays", "never loaded"), "{w}/o0"),
    # --- outputs ---------------------------------------------------------------------------
    case("output-folder-missing", M + ("{w}/gmm2", "--out", "{w}/nodir/r.nc"), ("{w}/nodir", "does not exist", "create it first"), "{w}/nodir"),
    case("output-folder-unwritable", M + ("{w}/gmm2", "--out", "{w}/ro/r.nc"), ("{w}/ro", "not writable"), "{w}/ro/r.nc", needs_permissions=True),
    # Root ignores permissions, but not a file system that refuses new files.
    case("output-folder-refuses-files", M + ("{w}/gmm2", "--out", "/proc/{n}.nc"), ("cannot write '/proc/{n}.nc'", "choose another folder"), "/proc/{n}.nc"),
    case("train-out-refuses-files", ("train", "--data", "gmm:dim=2,n=16", "--epochs", "1", "--out", "/proc/{n}"), ("'/proc/{n}'", "--out", "choose a writable --out"), "/proc/{n}"),
    case("oracle-out-refuses-files", ("oracle", "gaussian", "--out", "/proc/{n}"), ("'/proc'", "--out", "choose a writable --out"), "/proc/{n}"),
    case("output-exists", M + ("{w}/gmm2", "--out", "{w}/exists.nc"), ("{w}/exists.nc", "--overwrite", "choose another path"), ()),
    case("output-is-directory", M + ("{w}/gmm2", "--out", "{w}/adir"), ("{w}/adir", "directory", "give a file name"), ()),
    case("output-not-netcdf", M + ("{w}/gmm2", "--out", "{w}/{n}.txt"), ("{w}/{n}.txt", "does not end in .nc", "'{w}/{n}.nc'"), ("{w}/{n}.txt", R)),
    case("compare-output-not-netcdf", ("compare", "{w}/gmm2", "--process", "vp", "--out", "{w}/{n}.txt"), ("{w}/{n}.txt", ".nc", "name it '{w}/{n}.nc'"), "{w}/{n}.txt"),
    case("plot-output-exists", M + ("{w}/gmm2", "--plot", "{w}/exists.png") + OUT, ("{w}/exists.png", "--overwrite"), R),
    case("train-out-is-file", ("train", "--data", "gmm:dim=2,n=16", "--out", "{w}/afile"), ("{w}/afile", "is a file", "give a directory for --out"), ()),
    case("train-out-unwritable", ("train", "--data", "gmm:dim=2,n=16", "--out", "{w}/ro/run"), ("{w}/ro", "run"), "{w}/ro/run", needs_permissions=True),
    case("oracle-out-exists", ("oracle", "gaussian", "--out", "{w}/gmm2"), ("{w}/gmm2", "--overwrite", "choose another --out"), ()),
    case("compare-output-exists", ("compare", "{w}/gmm2", "--process", "vp", "--out", "{w}/exists.nc"), ("{w}/exists.nc", "--overwrite", "choose another path"), ()),
    case("sample-output-exists", ("sample", "{w}/gmm2", "--out", "{w}/exists.npz"), ("{w}/exists.npz", "--overwrite", "choose another path"), ()),
    case("export-output-exists", ("export", "{w}/unet", "--out", "{w}/adir"), ("{w}/adir", "--overwrite", "choose another --out"), ()),
    # --- names -----------------------------------------------------------------------------
    case("unknown-catalog-name", ("catalog", "show", "no-such-model"), ("'no-such-model'", "catalog list"), ()),
    case("unknown-model-name", M + ("no-such-model",) + OUT, ("'no-such-model'", "catalog list"), R),
    case(
        "hub-id-not-cached", M + ("google/ddpm-cifar10-32",) + OUT, ("'google/ddpm-cifar10-32'", "not in the local cache", "hf download"), R,
        env={"HF_HOME": "{w}/hf-home", "HF_HUB_CACHE": ""},
    ),
    case("invalid-adapter", M + ("{w}/gmm2", "--adapter", "no_such_module:load") + OUT, ("'no_such_module'", "PYTHONPATH", "No module named"), R),
    case("cuda-without-gpu", M + ("{w}/gmm2", "--device", "cuda") + OUT, ("--device cuda", "--device cpu"), R),
    # --- recipe files in a catalog folder ($ENTROPY_PROBE_CATALOG) ------------------------------
    case("catalog-folder-missing", ("catalog", "list"), ("{w}/nocatalog", "does not exist", "$ENTROPY_PROBE_CATALOG"), env={"ENTROPY_PROBE_CATALOG": "{w}/nocatalog"}),
    case("recipe-invalid-json", ("catalog", "show", "my-recipe"), ("{w}/cat-json/my-recipe.json", "cannot read", "fix the file"), env={"ENTROPY_PROBE_CATALOG": "{w}/cat-json"}),
    case("recipe-missing-field", ("catalog", "show", "my-recipe"), ("my-recipe.json", "lacks the field 'recipe'", "fix the file"), env={"ENTROPY_PROBE_CATALOG": "{w}/cat-missing"}),
    case("recipe-wrong-type", ("catalog", "show", "my-recipe"), ("my-recipe.json", "'recipe' must be dict, not str", "fix the file"), env={"ENTROPY_PROBE_CATALOG": "{w}/cat-type"}),
    case("recipe-newer-schema", ("catalog", "show", "my-recipe"), ("my-recipe.json", "schema_version 2", "upgrade entropy-probe"), env={"ENTROPY_PROBE_CATALOG": "{w}/cat-newer"}),
    case("recipe-bad-process", ("catalog", "show", "my-recipe"), ("my-recipe.json", "'nope'", "fix the file"), env={"ENTROPY_PROBE_CATALOG": "{w}/cat-process"}),
    case("recipe-name-mismatch", ("catalog", "list"), ("my-recipe.json", "'other-name'", "must equal the file name", "fix the file"), env={"ENTROPY_PROBE_CATALOG": "{w}/cat-name"}),
    case("recipe-as-checkpoint", M + ("paper-cifar10-unet-vp",) + OUT, ("'paper-cifar10-unet-vp'", "recipe without weights", "entropy-probe train"), R),
    # --- reproduce and plot ------------------------------------------------------------------
    case("reproduce-unknown-recipe", RP + ("no-such-recipe",) + TINY + DIR_OUT, ("unknown recipe 'no-such-recipe'", "paper-gmm", "catalog list"), D),
    case("reproduce-not-a-recipe", RP + ("mnist-unet-vp",) + TINY + DIR_OUT, ("'mnist-unet-vp'", "no reproduce section", "paper-gmm"), D),
    case("reproduce-unknown-scale", RP + ("paper-gmm", "--scale", "huge") + DIR_OUT, ("no scale 'huge'", "tiny, cpu, paper", "choose one of"), D),
    case("reproduce-recipe-invalid-json", RP + ("my-recipe",) + TINY + DIR_OUT, ("{w}/cat-json/my-recipe.json", "cannot read", "fix the file"), D, env={"ENTROPY_PROBE_CATALOG": "{w}/cat-json"}),
    case(
        "reproduce-scale-wrong-type", RP + ("my-recipe",) + TINY + DIR_OUT,
        ("{w}/cat-scale/my-recipe.json", "reproduce.scales.tiny", "not str 'fast'", "fix the file"), D, env={"ENTROPY_PROBE_CATALOG": "{w}/cat-scale"},
    ),
    case(
        "reproduce-axis-without-values", RP + ("my-recipe",) + TINY + DIR_OUT,
        ("axis 'dim'", "non-empty list of values, not []", "fix the file '{w}/cat-axis/my-recipe.json'"), D, env={"ENTROPY_PROBE_CATALOG": "{w}/cat-axis"},
    ),
    case("reproduce-out-is-file", RP + ("paper-gmm",) + TINY + ("--out", "{w}/afile"), ("'{w}/afile' is a file", "--out"), ()),
    case("reproduce-out-unwritable", RP + ("paper-gmm",) + TINY + ("--out", "{w}/ro/{n}"), ("'{w}/ro/{n}'", "Permission denied", "--out"), "{w}/ro/{n}", needs_permissions=True),
    # Root ignores permissions, but not a file system that refuses new folders.
    case("reproduce-out-refuses-files", RP + ("paper-gmm",) + TINY + ("--out", "/proc/{n}"), ("cannot create output directory '/proc/{n}'", "--out"), "/proc/{n}"),
    case("reproduce-jobs-zero", RP + ("paper-gmm",) + TINY + DIR_OUT + ("--jobs", "0"), ("--jobs", "0 is invalid", ">= 1"), D),
    case("plot-missing-result", ("plot", "{w}/missing.nc", "--out", "{w}/{n}.png"), ("'{w}/missing.nc' not found", "measure, compare or reproduce"), "{w}/{n}.png"),
    case(
        "plot-foreign-netcdf", ("plot", "{w}/foreign.nc", "--out", "{w}/{n}.png"),
        ("'{w}/foreign.nc'", "not a result of measure, compare or reproduce", "give a file written by one of them"), "{w}/{n}.png",
    ),
    # --- other commands ----------------------------------------------------------------------
    case("compare-bad-process", ("compare", "{w}/gmm2", "--process", "vp", "--process", "nope", "--out", "{w}/c.nc"), ("'nope'", "choose one of"), "{w}/c.nc"),
    case("audit-infinite-train-set", ("audit", "{w}/gmm2", "--train", "gmm:dim=2", "--heldout", "gmm:dim=2", "--out", "{w}/a.nc"), ("gmm:dim=2", "n=", "give the finite training set"), "{w}/a.nc"),
    case("export-non-unet", ("export", "{w}/net", "--out", "{w}/exported"), ("{w}/net", "U-Net", "use the checkpoint folder itself"), "{w}/exported"),
    case("export-out-unwritable", ("export", "{w}/unet", "--out", "{w}/ro/exported"), ("{w}/ro", "not writable", "--out"), "{w}/ro/exported", needs_permissions=True),
    case("export-out-refuses-files", ("export", "{w}/unet", "--out", "/proc/{n}"), ("cannot write '/proc/{n}'", "--out"), "/proc/{n}"),
    case("export-hub-id", ("export", "google/ddpm-cifar10-32", "--out", "{w}/{n}"), ("'google/ddpm-cifar10-32'", "needs no export", "entropy-probe train"), "{w}/{n}"),
    # --- figure paths: checked before the computation --------------------------------------
    case("plot-not-image", M + ("{w}/gmm2", "--plot", "{w}/{n}.txt") + OUT, ("--plot '{w}/{n}.txt'", "'.txt' is not a figure format", "'{w}/{n}.png'"), (R, "{w}/{n}.txt")),
    case("plot-same-as-out", M + ("{w}/gmm2", "--plot", R) + OUT, ("--plot '{w}/{n}.nc'", "not a figure format", "'{w}/{n}.png'"), R),
    case("plot-without-extension", M + ("{w}/gmm2", "--plot", "{w}/{n}") + OUT, ("--plot '{w}/{n}'", "no extension", "'{w}/{n}.png'"), (R, "{w}/{n}")),
    case("sample-grid-not-image", ("sample", "{w}/gmm2", "-n", "4", "--out", "{w}/{n}.npz", "--grid", "{w}/{n}.nc"), ("--grid '{w}/{n}.nc'", "not a figure format", "'{w}/{n}.png'"), ("{w}/{n}.npz", "{w}/{n}.nc")),
    case(
        "audit-report-not-image",
        ("audit", "{w}/gmm2", "--train", "gmm:dim=2,n=8", "--heldout", "gmm:dim=2,n=8,sample_seed=1", "--out", R, "--report", "{w}/{n}.txt"),
        ("--report '{w}/{n}.txt'", "not a figure format", "'{w}/{n}.png'"), (R, "{w}/{n}.txt"),
    ),
    case("compare-plot-not-image", ("compare", "{w}/gmm2", "--process", "vp", "--out", R, "--plot", "{w}/{n}.npz"), ("--plot '{w}/{n}.npz'", "not a figure format", "'{w}/{n}.png'"), (R, "{w}/{n}.npz")),
    case("plot-command-not-image", ("plot", "{w}/result.nc", "--out", "{w}/{n}.nc"), ("--out '{w}/{n}.nc'", "not a figure format", "'{w}/{n}.png'"), "{w}/{n}.nc"),
    case("plot-result-is-folder", ("plot", "{w}/adir", "--out", "{w}/{n}.png"), ("'{w}/adir' is a folder", "combined.nc"), "{w}/{n}.png"),
    case("plot-result-is-checkpoint", ("plot", "{w}/gmm2", "--out", "{w}/{n}.png"), ("'{w}/gmm2' is a folder", "give a .nc file"), "{w}/{n}.png"),
    case("sample-output-not-npz", ("sample", "{w}/gmm2", "-n", "4", "--out", "{w}/{n}.txt"), ("'{w}/{n}.txt'", "does not end in .npz", "'{w}/{n}.npz'"), ("{w}/{n}.txt", "{w}/{n}.npz")),
    case("output-folder-is-file", M + ("{w}/gmm2", "--out", "{w}/afile/{n}.nc"), ("'{w}/afile' is a file, not a folder", "existing folder"), ()),
    # --- seeds: checked before the computation ---------------------------------------------
    case("measure-seed-negative", M + ("{w}/gmm2", "--seed", "-1") + OUT, ("--seed", "-1 is invalid", "2**63 - 1", "--seed 0"), R),
    case("measure-seed-huge", M + ("{w}/gmm2", "--seed", "99999999999999999999999") + OUT, ("99999999999999999999999 is invalid", "--seed 0"), R),
    case("measure-seed-2-to-63", M + ("{w}/gmm2", "--seed", "9223372036854775808") + OUT, ("9223372036854775808 is invalid", "--seed 0"), R),
    case("sample-seed-negative", ("sample", "{w}/gmm2", "--seed", "-1", "--out", "{w}/{n}.npz"), ("-1 is invalid", "--seed 0"), "{w}/{n}.npz"),
    case("train-seed-negative", ("train", "--data", "gmm:dim=2,n=16", "--seed", "-1", "--out", "{w}/{n}"), ("-1 is invalid", "--seed 0"), "{w}/{n}"),
    case("oracle-seed-negative", ("oracle", "gmm", "--seed", "-1", "--out", "{w}/{n}"), ("-1 is invalid", "--seed 0"), "{w}/{n}"),
    case("audit-seed-huge", ("audit", "{w}/gmm2", "--train", "gmm:dim=2,n=8", "--heldout", "gmm:dim=2", "--seed", "99999999999999999999999", "--out", R), ("99999999999999999999999 is invalid", "--seed 0"), R),
    case("compare-seed-negative", ("compare", "{w}/gmm2", "--process", "vp", "--seed", "-1", "--out", R), ("-1 is invalid", "--seed 0"), R),
    case("data-seed-negative", M + ("{w}/gmm2", "--data", "gmm:dim=2,seed=-1") + OUT, ("'-1' for seed", "2**63 - 1", "seed=0"), R),
    case("data-sample-seed-negative", M + ("{w}/gmm2", "--data", "gmm:dim=2,n=4,sample_seed=-2") + OUT, ("'-2' for sample_seed", "2**63 - 1", "sample_seed=0"), R),
    case("data-parameter-not-integer", M + ("{w}/gmm2", "--data", "gmm:dim=two") + OUT, ("'two' for dim", "expected an integer", "dim=3"), R),
    # --- names, resume and data files --------------------------------------------------------
    case("measure-empty-checkpoint", M + ("",) + OUT, ("CHECKPOINT ''", "empty", "leave it out"), R),
    case("measure-empty-reference", M + ("{w}/gmm2", "--reference", "") + OUT, ("--reference ''", "empty", "leave out --reference"), R),
    case("train-resume-without-run", ("train", "--data", "gmm:dim=2,n=16", "--resume", "--out", "{w}/{n}"), ("--resume", "'{w}/{n}'", "contains no training run", "without --resume"), "{w}/{n}"),
    case("train-resume-empty-folder", ("train", "--data", "gmm:dim=2,n=16", "--resume", "--out", "{w}/emptydir"), ("'{w}/emptydir'", "no training run", "without --resume"), ()),
    case("train-out-is-oracle", ("train", "--data", "gmm:dim=2,n=16", "--out", "{w}/gmm2"), ("'{w}/gmm2'", "oracle checkpoint", "choose another --out"), ()),
    case("train-overwrite-oracle", ("train", "--data", "gmm:dim=2,n=16", "--overwrite", "--out", "{w}/gmm2"), ("'{w}/gmm2'", "oracle checkpoint", "choose another --out"), ()),
    case("train-preset-attention", ("train", "--model", "unet", "--data", "digits:n_c=2", "--preset", "cifar", "--dry-run", "--out", "{w}/{n}"), ("--preset cifar", "[16]", "8 × 8", "--attention 8"), "{w}/{n}"),
    case("oracle-out-is-file", ("oracle", "gmm", "--out", "{w}/exists.nc"), ("'{w}/exists.nc' is an existing file", "choose another --out"), ()),
    case("data-npz-not-archive", M + ("{w}/gmm2", "--data", "npz:path={w}/junk.npz") + OUT, ("'{w}/junk.npz'", "not a NumPy .npz archive", "numpy.savez"), R),
    case("oracle-empirical-npz-not-archive", ("oracle", "empirical", "--data", "npz:path={w}/junk.npz", "--out", "{w}/{n}"), ("'{w}/junk.npz'", "not a NumPy .npz archive", "numpy.savez"), "{w}/{n}"),
    case("oracle-gmm-npz-not-archive", ("oracle", "gmm", "--from-file", "{w}/junk.npz", "--out", "{w}/{n}"), ("'{w}/junk.npz'", "not a NumPy .npz archive", "numeric arrays weights"), "{w}/{n}"),
    case("oracle-shape-mismatch", M + ("{w}/wrongshape",) + OUT, ("{w}/wrongshape", "(5,)", "dimension 2", "restore"), R),
    case("reference-is-network", M + ("{w}/gmm2", "--reference", "{w}/net") + OUT, ("'{w}/net' is not an oracle checkpoint", "entropy-probe oracle"), R),
    case("reproduce-data-dir-missing", RP + ("paper-mnist-unet",) + TINY + ("--data-dir", "{w}/nodata") + DIR_OUT, ("--data-dir '{w}/nodata' not found", "leave --data-dir out"), D),
    case("reproduce-data-dir-unused", RP + ("paper-mnist-unet",) + TINY + ("--data-dir", "{w}/adir") + DIR_OUT, ("'paper-mnist-unet'", "ignore --data-dir '{w}/adir'", "leave --data-dir out"), D),
    case("options-file-exists", M + ("{w}/gmm2", "--out", "{w}/taken.nc"), ("'{w}/taken.options.json'", "exists already", "--overwrite"), ()),
    case("train-resume-other-settings", ("train", "--resume", "--lr", "0.5", "--out", "{w}/net"), ("lr=0.5", "--resume", "may change only --epochs"), ()),
    case("train-missing-data", ("train", "--out", "{w}/run0"), ("--data", "for example --data digits:n_c=10"), "{w}/run0"),
]

#: Cases that only a fresh process can show: the hub cache location is read when
#: huggingface_hub is imported.
SUBPROCESS_ONLY = {"hub-id-not-cached"}
#: Cases that also run through the installed script, for the real stderr and exit status.
SUBPROCESS_TOO = {"missing-checkpoint", "unknown-process", "malicious-pickle", "output-exists", "reproduce-unknown-recipe"}
#: --debug runs of the installed script, which must print the traceback.
SCRIPT_DEBUG_CASES = [("measure", "{w}/nothing", "--out", R), ("train", "--data", "imagenet", "--out", "{w}/run0")]

#: Commands whose --debug run must let the UserError through (the script then prints its traceback).
DEBUG_CASES = [
    ("measure", "{w}/nothing", "--out", R),
    ("compare", "{w}/nothing", "--process", "vp", "--out", R),
    ("train", "--data", "imagenet", "--out", "{w}/run0"),
    ("sample", "{w}/nothing", "--out", "{w}/s.npz"),
    ("audit", "{w}/nothing", "--train", "gmm:dim=2,n=8", "--heldout", "gmm:dim=2", "--out", R),
    ("export", "{w}/nothing", "--out", "{w}/exported"),
    ("oracle", "gmm", "--from-file", "{w}/missing.npz", "--out", "{w}/o0"),
    ("catalog", "show", "no-such-model"),
    ("reproduce", "no-such-recipe", "--scale", "tiny", "--out", "{w}/run0"),
    ("plot", "{w}/missing.nc", "--out", "{w}/missing.png"),
]


# --- the workspace ---------------------------------------------------------------------------

def _write_json(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, indent=2))


def _edit_config(directory: Path, change) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    _write_json(directory / "config.json", config)


class _CreatesFile:
    """Unpickling this object opens (and so creates) the file at `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def build_workspace(root: Path) -> None:
    """Create the checkpoints, data files and folders that the cases refer to."""
    from entropy_probe.checkpoint import save_oracle
    from entropy_probe.oracles import GaussianOracle, paper_mixture
    from entropy_probe.train import TrainSettings, train

    save_oracle(paper_mixture(2, seed=3), root / "gmm2")
    save_oracle(GaussianOracle(np.zeros(3), np.ones(3)), root / "gauss3")
    settings = TrainSettings(
        architecture="mlp", data="gmm:dim=2,n=32", epochs=1, batch_size=32,
        network={"widths": [8, 8], "fourier_features": 4}, progress=False,
    )
    train(settings, root / "net")
    from entropy_probe.api import measure_checkpoint
    from entropy_probe.probe import MeasureSettings
    from entropy_probe.results import write_dataset

    quick = MeasureSettings(estimator="grid", nodes=5, samples=4, progress=False)
    write_dataset(measure_checkpoint(str(root / "gmm2"), settings=quick), root / "result.nc")

    (root / "afile").write_text("not a checkpoint\n")
    (root / "adir").mkdir()
    (root / "exists.nc").write_text("an earlier result\n")
    (root / "exists.png").write_text("an earlier plot\n")
    (root / "exists.npz").write_text("earlier samples\n")
    (root / "emptydir").mkdir()
    (root / "junk.npz").write_text("not an archive\n")
    (root / "taken.options.json").write_text('{"note": "a file of the user"}\n')

    shutil.copytree(root / "gmm2", root / "corrupt")
    (root / "corrupt" / "model.safetensors").write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00garbage bytes here")
    shutil.copytree(root / "gmm2", root / "truncated")
    weights = (root / "gmm2" / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    # Without a recorded SHA-256 the damage shows when the file is parsed.
    for name in ("corrupt", "truncated"):
        _edit_config(root / name, lambda c: c.pop("weights_sha256"))
    shutil.copytree(root / "gmm2", root / "swapped")
    shutil.copyfile(root / "gauss3" / "model.safetensors", root / "swapped" / "model.safetensors")
    shutil.copytree(root / "gmm2", root / "badjson")
    (root / "badjson" / "config.json").write_text('{"format": "entropy-probe",')
    for name in ("nokind", "otherkind", "noformat"):
        shutil.copytree(root / "gmm2", root / name)
    _edit_config(root / "nokind", lambda c: c.pop("kind"))
    _edit_config(root / "otherkind", lambda c: c.update(kind="vae"))
    _edit_config(root / "noformat", lambda c: c.pop("format"))
    shutil.copytree(root / "gmm2", root / "oraclebad")
    shutil.copytree(root / "gmm2", root / "wrongshape")
    _edit_config(root / "wrongshape", lambda c: c.update(data_shape=[5]))
    _edit_config(root / "oraclebad", lambda c: c.update(data_shape="two"))

    for name in ("nokey", "wrongtype", "newer", "mismatch", "evil"):
        shutil.copytree(root / "net", root / name, ignore=shutil.ignore_patterns("epoch-*", "train-state", "*.jsonl", "options.json"))
    _edit_config(root / "nokey", lambda c: c.pop("architecture"))
    _edit_config(root / "wrongtype", lambda c: c.update(network=[8, 8]))
    _edit_config(root / "newer", lambda c: c.update(format_version=99))
    _edit_config(root / "mismatch", lambda c: c["network"].update(widths=[16, 16]))
    (root / "evil" / "model.safetensors").unlink()
    _edit_config(root / "evil", lambda c: c.pop("weights_sha256"))
    torch.save({"weight": _CreatesFile(str(root / "pwned"))}, root / "evil" / "model.pt")
    (root / "lone.pt").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))

    shutil.copytree(root / "gmm2", root / "noaccess")
    os.chmod(root / "noaccess", 0)
    (root / "ro").mkdir()
    os.chmod(root / "ro", 0o555)

    np.savez(root / "rgb.npz", x=np.zeros((4, 3, 28, 28)))
    np.savez(root / "empty.npz", x=np.zeros((0, 2)))
    np.savez(root / "nan.npz", x=np.array([[0.0, 1.0], [np.nan, 2.0]]))
    xr.Dataset({"v": ("x", np.arange(3.0))}, attrs={"title": "another program's data"}).to_netcdf(root / "foreign.nc", engine="h5netcdf")
    np.savez(root / "objects.npz", weights=np.array([{"a": 1}], dtype=object), means=np.zeros((1, 2)), stds=np.ones((1, 2)))

    shutil.copytree(_shipped("mnist-unet-vp"), root / "unet")
    from entropy_probe.export import export_checkpoint

    export_checkpoint(root / "unet", root / "diffusers")

    recipe = {
        "schema_version": 1, "name": "my-recipe", "kind": "recipe", "title": "A recipe",
        "process": "vp", "recipe": {"data": "gmm:dim=2", "epochs": 5},
    }
    variants = {
        "cat-missing": {key: value for key, value in recipe.items() if key != "recipe"},
        "cat-type": {**recipe, "recipe": "train for five epochs"},
        "cat-newer": {**recipe, "schema_version": 2},
        "cat-process": {**recipe, "process": "nope"},
        "cat-name": {**recipe, "name": "other-name"},
    }
    for folder, fields in variants.items():
        (root / folder).mkdir()
        _write_json(root / folder / "my-recipe.json", fields)
    reproducible = {
        **recipe,
        "reproduce": {
            "analysis": "epochs",
            "axes": [{"name": "dim", "values": [2]}],
            "train": {"model": "mlp", "data": "gmm:dim={dim},n=16", "epochs": 1},
            "scales": {"tiny": {}},
        },
    }
    scale_wrong_type = json.loads(json.dumps(reproducible))
    scale_wrong_type["reproduce"]["scales"]["tiny"] = "fast"
    axis_without_values = json.loads(json.dumps(reproducible))
    axis_without_values["reproduce"]["axes"][0]["values"] = []
    for folder, fields in {"cat-scale": scale_wrong_type, "cat-axis": axis_without_values}.items():
        (root / folder).mkdir()
        _write_json(root / folder / "my-recipe.json", fields)
    (root / "cat-json").mkdir()
    (root / "cat-json" / "my-recipe.json").write_text('{"schema_version": 1, "name": "my-recipe",\n')


def _shipped(name: str) -> Path:
    from entropy_probe.catalog import get_entry

    entry = get_entry(name)
    return entry.folder / entry.fields["path"]


def _format(values, workspace: Path, name: str):
    return [value.format(w=workspace, n=name) for value in values]


def _run_script(args, env: dict, workspace: Path, name: str = "debug") -> subprocess.CompletedProcess:
    """Run the installed console script in a subprocess."""
    full_env = dict(os.environ)
    full_env.update(ENV)
    full_env.update({key: value.format(w=workspace, n=name) for key, value in env.items()})
    return subprocess.run(
        [str(SCRIPT), *_format(args, workspace, name)],
        cwd=workspace, env=full_env, capture_output=True, text=True, timeout=300,
    )


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    #: An exception other than SystemExit that escaped the entry point.
    escaped: BaseException | None = None


def _run_in_process(args, env: dict, workspace: Path, name: str) -> Outcome:
    """Call the console script's entry point `main(argv)` with redirected output and environment."""
    from entropy_probe.cli import main

    changes = {**ENV, **{key: value.format(w=workspace, n=name) for key, value in env.items()}}
    saved = {key: os.environ.get(key) for key in changes}
    stdout, stderr = io.StringIO(), io.StringIO()
    code, escaped = 0, None
    os.environ.update(changes)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main(_format(args, workspace, name))
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    except BaseException as error:  # noqa: BLE001 - the test reports it
        escaped = error
        code = -1
        stderr.write("".join(traceback.format_exception(error)))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Outcome(code, stdout.getvalue(), stderr.getvalue(), escaped)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    build_workspace(root)
    yield root
    for name in ("noaccess", "ro"):
        os.chmod(root / name, 0o755)


def _leftovers(path: Path) -> list[Path]:
    """The path itself and any temporary, partial or options sibling of it that exists."""
    parent = path.parent
    if not parent.is_dir() or not os.access(parent, os.R_OK | os.X_OK):
        return [path] if path.exists() else []
    stem = path.stem if path.suffix else path.name
    found = [path] if path.exists() else []
    for sibling in parent.iterdir():
        name = sibling.name
        if name.startswith(f".{path.name}.") or name.startswith(f"{path.name}.partial") or name == f"{stem}.options.json":
            found.append(sibling)
    return found


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Return every path under `root` with the size and modification time of files, to detect writes.

    Folders count by name only: the write check of an output creates and deletes a probe file,
    which changes the modification time of its folder but leaves nothing behind.
    """
    found = {}
    for folder, folders, files in os.walk(root):
        for name in folders:
            found[os.path.relpath(os.path.join(folder, name), root)] = (0, 0)
        for name in files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


def _changes(before: dict, after: dict) -> list[str]:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(name for name in set(before) & set(after) if before[name] != after[name])
    return [f"added {name}" for name in added] + [f"removed {name}" for name in removed] + [f"changed {name}" for name in changed]


def _check(item: Case, done, workspace: Path) -> None:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode not in (0, None), done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1, done.stderr
    for fragment in item.message:
        assert fragment.format(w=workspace, n=item.name) in errors[0], errors[0]
    for output in item.outputs:
        assert _leftovers(Path(output.format(w=workspace, n=item.name))) == []


IN_PROCESS = [item for item in CASES if item.name not in SUBPROCESS_ONLY]


@pytest.mark.parametrize("item", IN_PROCESS, ids=[item.name for item in IN_PROCESS])
def test_bad_input(item: Case, workspace):
    if item.needs_permissions and IS_ROOT:
        pytest.skip(ROOT_REASON)
    before = _snapshot(workspace)
    done = _run_in_process(item.args, item.env, workspace, item.name)
    _check(item, done, workspace)
    # Nothing in the workspace may be created, changed or deleted by a rejected command.
    assert _changes(before, _snapshot(workspace)) == [], done.stderr


@pytest.fixture(scope="module")
def script_outcomes(workspace):
    """Run the subprocess cases and the --debug cases with the installed script, two at a time."""
    chosen = [item for item in CASES if item.name in SUBPROCESS_ONLY | SUBPROCESS_TOO]
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {item.name: pool.submit(_run_script, item.args, item.env, workspace, item.name) for item in chosen}
        debug = {args[0]: pool.submit(_run_script, ("--debug",) + args, {}, workspace) for args in SCRIPT_DEBUG_CASES}
        return {name: future.result() for name, future in futures.items()}, {name: f.result() for name, f in debug.items()}


SCRIPT_CASES = [item for item in CASES if item.name in SUBPROCESS_ONLY | SUBPROCESS_TOO]


@pytest.mark.parametrize("item", SCRIPT_CASES, ids=[item.name for item in SCRIPT_CASES])
def test_bad_input_console_script(item: Case, script_outcomes, workspace):
    _check(item, script_outcomes[0][item.name], workspace)


@pytest.mark.parametrize("args", SCRIPT_DEBUG_CASES, ids=[args[0] for args in SCRIPT_DEBUG_CASES])
def test_debug_shows_traceback_in_console_script(args, script_outcomes):
    done = script_outcomes[1][args[0]]
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr, done.stderr
    assert "Error" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", DEBUG_CASES, ids=[args[0] for args in DEBUG_CASES])
def test_debug_lets_the_error_through(args, workspace):
    from entropy_probe.errors import UserError

    done = _run_in_process(("--debug",) + args, {}, workspace, "debug")
    assert isinstance(done.escaped, UserError), done.stderr
