"""The project's one error type for "the input is wrong": a job prints `error: <field>: <what>; <fix>` and exits 2.

Checks raise `UserError` (or a subclass) and nothing else reaches the user as a one-line error: any other
exception is a bug in this project or a library, and the job shows its traceback (exit 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad config value, a missing file, an unreachable store: something the user fixes, named with the fix.

    A ValueError, so `except ValueError` around a library call and `pytest.raises(ValueError)` keep working.
    """
