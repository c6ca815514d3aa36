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


def describe_npz_error(path, error: Exception) -> str:
    """Say why `np.load(path, allow_pickle=False)` failed, without NumPy's advice to load pickles.

    NumPy reports a file that is neither a .npz (zip) archive nor a .npy array as possibly pickled
    data, and suggests `allow_pickle=True`, which would run code from the file. This project never
    loads pickles from data files, so the message names what the file is instead.
    """
    import zipfile

    text = str(error)
    if isinstance(error, ValueError) and "pickle" in text.lower():
        try:
            is_archive = zipfile.is_zipfile(path)
        except OSError:
            is_archive = False
        if not is_archive:
            return "it is not a NumPy .npz archive (a zip file of .npy arrays), and pickled data is never loaded"
        return "it holds object arrays, which are never loaded because that would run pickled code"
    return text
