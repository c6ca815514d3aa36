"""Log levels of the command line: warnings by default, -q and -v before or after the command."""

from __future__ import annotations

import pytest

INFO_LINE = "INFO entropy_probe.api: the model records no process"


@pytest.mark.parametrize(
    "before, after, info_shown",
    [((), (), False), (("-v",), (), True), ((), ("-v",), True), (("-v",), ("-q",), False)],
    ids=["default", "verbose-before", "verbose-after", "quiet-after-overrides"],
)
def test_measure_log_level(cli_run, mixture_dir, tmp_path, before, after, info_shown):
    out = tmp_path / "r.nc"
    done = cli_run(*before, "measure", str(mixture_dir), "--samples", "2", "--strata", "2", "--out", str(out), *after, env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert (INFO_LINE in done.stderr) is info_shown, done.stderr
    assert out.is_file()


def test_subgroup_command_accepts_quiet(cli_run, tmp_path):
    done = cli_run("oracle", "gaussian", "--dim", "2", "--out", str(tmp_path / "g"), "-q")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "g" / "config.json").is_file()


def test_debug_after_command_shows_traceback(cli_run, tmp_path):
    done = cli_run("measure", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.nc"), "--debug")
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr, done.stderr
    assert "No such option" not in done.stderr


def test_reproduce_workers_keep_default_level(cli_run, tmp_path):
    out = tmp_path / "study"
    done = cli_run("reproduce", "paper-gmm", "--scale", "tiny", "--jobs", "2", "--no-figures", "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    # Spawned workers set up logging afresh; without -v they must not print INFO lines.
    assert "INFO" not in done.stderr, done.stderr
