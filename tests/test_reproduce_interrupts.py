"""`entropy-probe reproduce` stopped by a signal through the installed console script.

The interrupted sweep must exit with 128 + the signal number and a one-line message on how to
continue, stop its worker processes and leave no temporary file. Running the same command again
must run only the unfinished items and end with the numbers of an uninterrupted sweep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import xarray as xr

from entropy_probe.reproduce import COMBINED_FILE, read_events
from entropy_probe.results import read_dataset

SCRIPT = Path(sys.executable).with_name("entropy-probe")

#: Three items (vp, sl, vpx), each trained for 2 epochs and measured at epochs 1 and 2.
SWEEP = ("reproduce", "paper-gmm", "--scale", "tiny", "--device", "cpu", "--no-figures")
ITEMS = {"dim=3_process=vp_seed=0", "dim=3_process=sl_seed=0", "dim=3_process=vpx_seed=0"}
LAST_EPOCH_FILE = "epoch-0002.nc"

#: Wall-time variables of the combined Dataset, which differ between any two runs.
WALL_TIME_VARIABLES = ("measure_seconds", "train_epoch_seconds")
#: Attributes of the combined Dataset that record when and where it was written.
RUN_ATTRIBUTES = ("created", "machine", "python_version")

#: sitecustomize.py for the interrupted sweeps: every measurement first waits one second, so an
#: item takes at least two seconds and the signal, sent once the first item is finished, arrives
#: while the next one runs. The numbers do not change.
SLOW_MEASUREMENTS = '''
import time

from entropy_probe import reproduce

_measure_epoch = reproduce.measure_epoch


def measure_epoch(*args, **kwargs):
    time.sleep(1.0)
    return _measure_epoch(*args, **kwargs)


reproduce.measure_epoch = measure_epoch
'''


def _env(hook: Path | None = None) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", ENTROPY_PROBE_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    if hook is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH", "")]))
    return env


@pytest.fixture(scope="module")
def slow_hook(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hook")
    (folder / "sitecustomize.py").write_text(textwrap.dedent(SLOW_MEASUREMENTS))
    return folder


def _run(out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *SWEEP, "--out", str(out), *extra], env=env or _env(), capture_output=True, text=True, timeout=300,
    )


def _finished_items(out: Path) -> set[str]:
    return {path.parent.name for path in (out / "items").glob(f"*/{LAST_EPOCH_FILE}")}


def _children(pid: int) -> set[int]:
    """Return the ids of the direct child processes of `pid` (empty once it has exited)."""
    try:
        return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _interrupt(out: Path, signum: int, hook: Path, *extra: str) -> tuple[subprocess.CompletedProcess, set[int]]:
    """Start a sweep, send `signum` once its first item is finished; return the result and child ids."""
    command = [str(SCRIPT), *SWEEP, "--out", str(out), *extra]
    process = subprocess.Popen(command, env=_env(hook), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    deadline = time.monotonic() + 180
    while not _finished_items(out):
        children |= _children(process.pid)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"no item finished before the sweep ended (status {process.returncode}):\n{stderr}")
        time.sleep(0.01)
    children |= _children(process.pid)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), children


def _check_interrupted(stopped: subprocess.CompletedProcess, out: Path, signum: int) -> None:
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stopped.stderr
    assert "reproduce was interrupted" in errors[0]
    assert f"kept in {str(out)!r}" in errors[0]
    assert "run the same command again" in errors[0]
    # Nothing half written: no combined Dataset yet, and no temporary file or folder anywhere.
    assert not (out / COMBINED_FILE).exists()
    assert sorted(out.rglob(".*")) == []


def _numbers(path: Path) -> xr.Dataset:
    return read_dataset(path).drop_vars(WALL_TIME_VARIABLES)


def test_sigint_then_rerun_equals_whole_sweep(slow_hook, tmp_path):
    whole = tmp_path / "whole"
    reference = _run(whole)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "part"
    stopped, _ = _interrupt(out, signal.SIGINT, slow_hook)
    _check_interrupted(stopped, out, signal.SIGINT)
    finished = _finished_items(out)
    assert 1 <= len(finished) < len(ITEMS)
    events_before = read_events(out)
    # One event per item: the finished items, and the rest as interrupted.
    assert sorted(event["item"] for event in events_before) == sorted(ITEMS)
    assert {event["item"] for event in events_before if event["action"] == "finished"} == finished
    assert {event["item"] for event in events_before if event["action"] == "interrupted"} == ITEMS - finished

    rerun = _run(out)
    assert rerun.returncode == 0, rerun.stderr
    events = read_events(out)[len(events_before):]
    assert {event["item"] for event in events if event["action"] == "skipped"} == finished
    assert {event["item"] for event in events if event["action"] == "finished"} == ITEMS - finished
    assert len(events) == len(ITEMS)
    assert f"{len(ITEMS - finished)} item(s) run, {len(finished)} skipped" in rerun.stdout

    expected, resumed = _numbers(whole / COMBINED_FILE), _numbers(out / COMBINED_FILE)
    xr.testing.assert_equal(resumed, expected)
    for name in resumed.variables:
        assert resumed[name].attrs == expected[name].attrs, name
    run_attributes = {key: value for key, value in expected.attrs.items() if key not in RUN_ATTRIBUTES}
    assert {key: value for key, value in resumed.attrs.items() if key not in RUN_ATTRIBUTES} == run_attributes
    assert json.loads(resumed.attrs["items_missing"]) == []


@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="the kernel does not list child processes in /proc/PID/task/PID/children",
)
def test_sigterm_stops_worker_processes(slow_hook, tmp_path):
    out = tmp_path / "sweep"
    stopped, children = _interrupt(out, signal.SIGTERM, slow_hook, "--jobs", "2")
    _check_interrupted(stopped, out, signal.SIGTERM)
    finished = _finished_items(out)
    assert len(finished) < len(ITEMS)
    events = read_events(out)
    assert {event["item"] for event in events if event["action"] == "interrupted"} == ITEMS - finished
    # The two workers (and the resource tracker of multiprocessing) were seen, and all have exited.
    assert len(children) >= 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in children if _alive(pid)] == []


def test_partial_writes_removed_or_restored(tmp_path):
    from entropy_probe.reproduce import remove_partial_writes

    item = tmp_path / "item"
    run = item / "run"
    (run / "epoch-0001").mkdir(parents=True)
    (run / "epoch-0001" / "config.json").write_text("{}")
    (item / "epoch-0001.nc").write_text("a whole result")
    (item / ".epoch-0002.nc.k2j3h4g5.tmp").write_text("half a result")
    (run / ".loss.jsonl.a1b2c3d4.tmp").write_text("half a log")
    # A staging folder of a checkpoint write that never completed.
    (run / ".epoch-0002.q9w8e7r6").mkdir()
    (run / ".epoch-0002.q9w8e7r6" / "model.safetensors").write_text("half the weights")
    # A save stopped between its two renames: only the moved-aside state exists, and returns.
    (run / ".train-state.old.z1x2c3v4").mkdir()
    (run / ".train-state.old.z1x2c3v4" / "config.json").write_text('{"epoch": 1}')
    # A moved-aside copy whose replacement is in place is obsolete.
    (run / ".epoch-0001.old.m5n6b7v8").mkdir()

    remove_partial_writes(item)

    assert sorted(str(path.relative_to(item)) for path in item.rglob("*")) == [
        "epoch-0001.nc", "run", "run/epoch-0001", "run/epoch-0001/config.json", "run/train-state", "run/train-state/config.json",
    ]
    assert (run / "train-state" / "config.json").read_text() == '{"epoch": 1}'
    assert (run / "epoch-0001" / "config.json").read_text() == "{}"
