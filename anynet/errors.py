"""The errors anynet raises for problems a user can fix.

A `UserError` is a mistake or a broken input outside the program (a missing or damaged file, a bad
option value, a backend that is not installed). The command line prints its message as one line
on stderr, with no traceback, and exits with its `exit_code`. Anything else is a bug in anynet
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The message says what is wrong and what to do; exit code 2."""

    exit_code = 2


class DataError(UserError):
    """MNIST files that are missing, damaged, or cannot be fetched."""


class ModelFileError(UserError):
    """A model or checkpoint file that cannot be read or does not fit."""


class BackendError(UserError):
    """A backend that is unknown, not installed, or has no usable device."""


class MissingExtraError(UserError):
    """An optional dependency (matplotlib, Pillow, ...) that a command needs is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs {package}, which is not installed: "
            f"pip install 'anynet[{extra}]' (or pip install {package})"
        )


class DivergenceError(UserError):
    """Training diverged: a batch loss was not finite, or above the training loop's bound
    (`anynet.training.DIVERGENCE_LOSS`). The last good checkpoint is kept. Exit code 3."""

    exit_code = 3


def one_line(what: object, limit: int | None = None) -> str:
    """`what` (an exception, or any text) as one line for a message: every run of whitespace
    (newlines included) made one space, an exception without words named by its type, and cut
    to `limit` characters (with "...") when a limit is given."""
    text = " ".join(str(what).split())
    if not text and isinstance(what, BaseException):
        text = type(what).__name__
    return text if limit is None or len(text) <= limit else text[:limit] + "..."
