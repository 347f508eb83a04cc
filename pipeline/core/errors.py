"""The project's one error type for "the input is wrong": a job prints `error: <field>: <what>; <fix>` and exits 2.

Checks raise `UserError` (or a subclass) and nothing else reaches the user as a one-line error: any other
exception is a bug in this project or a library, and the job shows its traceback (exit 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad config value, a missing file, an unreachable store: something the user fixes, named with the fix.

    A ValueError, so `except ValueError` around a library call and `pytest.raises(ValueError)` keep working.
    """


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named does not exist; still a FileNotFoundError for `except OSError` callers."""


class UnknownName(UserError, KeyError):
    """A name the user gave is not registered (a task, say); still a KeyError for a lookup's callers."""

    def __str__(self) -> str:  # KeyError's str() quotes its argument: the message reads as written
        return str(self.args[0]) if self.args else ""


class Unreachable(UserError, ConnectionError):
    """A server or store the user named does not answer (an MLflow tracking URI, say); still a ConnectionError."""
