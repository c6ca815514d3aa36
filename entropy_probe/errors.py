"""Exceptions for mistakes a user can fix.

The command line prints any `UserError` as one line and exits with a non-zero status. Other
exceptions are bugs and keep their traceback.
"""


class UserError(Exception):
    """Invalid input or a failed precondition that the user can correct."""

    exit_code = 2


class SpecError(UserError, ValueError):
    """Invalid process, data or option specification."""


class CheckpointError(UserError):
    """Missing, unreadable or inconsistent checkpoint."""


class DataError(UserError):
    """Missing or malformed data, or data that does not fit the model."""


class SigmaRangeError(UserError, ValueError):
    """Noise level outside the range a model was trained on."""


class OutputError(UserError):
    """Output path that exists already or cannot be written."""


class NonFiniteError(UserError):
    """Non-finite values in a network output or an estimate."""

    exit_code = 3
