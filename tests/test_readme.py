"""The README's two commands: CI runs its test command, and a shortened main command works."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_lines() -> list[str]:
    """Return the lines of the README's fenced code blocks."""
    blocks = re.findall(r"```\n(.*?)```", README, flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _command(marker: str) -> str:
    """Return the one README command line that contains MARKER."""
    lines = [line for line in _code_lines() if marker in line]
    assert len(lines) == 1, f"expected one README command containing {marker!r}, found {lines}"
    return lines[0]


def test_ci_runs_readme_test_command():
    test_command = _command("-m pytest")
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


def test_readme_commands_create_venv_first():
    for marker in ("-m pytest", "--plot result.png"):
        assert _command(marker).startswith("python3 -m venv .venv && .venv/bin/pip install -e ")


def test_readme_main_command_runs_shortened(tmp_path):
    """The main command, with fewer samples, measures the default model through the console script."""
    main_command = _command("--plot result.png")
    measure = main_command.split("&&")[-1].strip()
    words = shlex.split(measure)
    assert words[:2] == [".venv/bin/entropy-probe", "measure"]
    # The main command measures the default model, so it names no checkpoint.
    checkpoints = [word for word in words[2:] if not word.startswith("-") and not word.startswith("result.")]
    assert checkpoints == []

    script = Path(sys.executable).with_name("entropy-probe")
    shortened = [str(script), "-q", *words[1:], "--samples", "2", "--strata", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(shortened, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    assert completed.returncode == 0, completed.stderr
    assert "S_NN" in completed.stdout
    assert (tmp_path / "result.png").stat().st_size > 0
    with xr.open_dataset(tmp_path / "result.nc") as result:
        assert result.attrs["checkpoint"] == "mnist-unet-vp"
        assert float(result["s_nn"]) > 0
        assert float(result["s_nn_stderr"]) > 0
