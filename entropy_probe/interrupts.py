"""Ctrl-C and SIGTERM: stop a long job between atomic saves of its state.

`catch_signals()` makes SIGTERM behave like Ctrl-C (it raises KeyboardInterrupt), so a job
stopped by a batch scheduler cleans up as one stopped from the keyboard. Inside `deferred()`
both signals wait until the block ends, so a state file is never left half written: the
interruption is raised right after the block, with the new state in place.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

from .errors import UserError


class Interrupted(UserError):
    """A job stopped by Ctrl-C or SIGTERM; the message states what was saved and how to resume."""

    exit_code = 130


class _State:
    depth = 0
    pending: Optional[int] = None
    #: The signal that interrupted the job, for the exit status (128 + number).
    received: Optional[int] = None


_state = _State()


def _handler(signum, frame) -> None:
    _state.received = signum
    if _state.depth > 0:
        _state.pending = signum
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def catch_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    _state.received = None
    for signum in previous:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs; raise KeyboardInterrupt after it if one came."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if _state.depth == 0 and _state.pending is not None:
        _state.pending = None
        raise KeyboardInterrupt


def exit_code() -> int:
    """Exit status of an interrupted job: 128 plus the signal number (130 for Ctrl-C)."""
    return 128 + (_state.received or signal.SIGINT)


def interrupted(message: str) -> Interrupted:
    """Return an Interrupted error with `message` and the exit status of the signal received."""
    error = Interrupted(message)
    error.exit_code = exit_code()
    return error
