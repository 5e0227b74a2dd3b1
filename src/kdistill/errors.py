"""User-facing errors: the CLI prints these as one line and exits with code 2."""
from __future__ import annotations


class KdistillError(Exception):
    """A problem with the user's input or environment, not a bug in kdistill.

    ``hint`` says what to do about it; the CLI prints ``error: <message> (<hint>)``.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(KdistillError):
    """A config file, preset, key or value that cannot be used."""


class DataError(KdistillError):
    """A dataset that cannot be found, read or verified."""


class CheckpointError(KdistillError):
    """A weights file that is missing, corrupt, foreign or does not fit the model."""


class RunInterrupted(KdistillError):
    """The user stopped a run (Ctrl-C); its checkpoints are kept for ``--resume``."""


def one_line(value: object, *, named: bool = False) -> str:
    """``value`` (an exception or text) on one line, for an error message; ``named`` puts an
    exception's type first. An exception with no text is its type's name."""
    text = " ".join(str(value).split())
    if isinstance(value, BaseException) and (named or not text):
        return f"{type(value).__name__}: {text}" if text else type(value).__name__
    return text
