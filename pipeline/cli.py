"""What every job shares: `--log-level` / `--quiet`, loopback Ray before the first `import ray`, and one way
to end a job that failed (`@cli.job` on its main):

    a UserError (pipeline.core.errors)   `error: <field>: <what>; <fix>`, exit status 2, no traceback
    a TrackingOutage                    `error: <what happened; how to send the rest>`, exit status 1
    anything else: a bug                the traceback, then a line saying so, exit status 1
    KeyboardInterrupt (Ctrl-C)          `interrupted[ at step N]; <how to resume>`, exit status 130 (128 + SIGINT)
    SystemExit                          as Python handles it (argparse, --help)

Only the standard library is imported here, so `--help` answers before torch or Ray load.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import traceback
from collections.abc import Callable

from pipeline.core.errors import UserError
from pipeline.core.logs import add_arguments, configure, level_from_args
from pipeline.driver.ray_setup import use_loopback

USER_ERROR = 2
BUG = 1
INTERRUPTED = 130  # what a shell reports for a command that SIGINT stopped
BUG_HINT = "adept: this is a bug, not a problem with your input; please report it with the traceback above"


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def logger() -> logging.Logger:
    """The project's logger: `[adept]` lines at the job's level (see pipeline.core.logs)."""
    return logging.getLogger("adept")


def start(args: argparse.Namespace) -> None:
    """After parsing: the log level (also for Ray workers), and loopback-only Ray for a local cluster."""
    configure(level_from_args(args))
    use_loopback()


def fail(err: UserError) -> int:
    """A user's mistake: `error: <message>` on stderr, no traceback; the job's exit status (2)."""
    message = err.args[0] if err.args else str(err)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return USER_ERROR


def interrupted(what: str = "interrupted; re-run the same command to start again") -> int:
    """The user pressed Ctrl-C: one line saying where the job stopped and how to go on; the exit status (130)."""
    print(what, file=sys.stderr, flush=True)
    return INTERRUPTED


def report_bug(err: BaseException) -> int:
    """Not the user's mistake: the traceback, then one line saying it is a bug; the job's exit status (1)."""
    traceback.print_exception(err, file=sys.stderr)
    print(BUG_HINT, file=sys.stderr, flush=True)
    return BUG


def job(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a job's `main(argv)`: a UserError anywhere in it ends the job with `fail` (exit 2), any other
    exception with `report_bug` (exit 1); a TrackingOutage (MLflow away too long) prints its `error:` line and
    exits 1. A KeyboardInterrupt the job did not turn into its own resume line ends with `interrupted()` (exit
    130, no traceback); SystemExit (argparse, --help) passes through unchanged."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            return fail(err)
        except KeyboardInterrupt:
            return interrupted()
        except Exception as err:  # noqa: BLE001 - the one place a job's unexpected failure is reported
            if _tracking_outage(err):
                print(f"error: {err}", file=sys.stderr, flush=True)
                return 1
            return report_bug(err)

    return run


def _tracking_outage(err: BaseException) -> bool:
    """Whether `err` is pipeline.tracking's TrackingOutage (its module is loaded if one was raised; not imported
    here, so a broken MLflow install cannot fail the report of another error)."""
    store = sys.modules.get("pipeline.tracking.store")
    return store is not None and isinstance(err, store.TrackingOutage)


def flag_values(args: argparse.Namespace, flags: dict[str, str], set_items: list[str]) -> dict[str, object]:
    """The shortcut flags given (flag dest -> config key), as typed values; a key also in --set is an error."""
    set_keys = {item.partition("=")[0].strip() for item in set_items}
    values = {}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if key in set_keys:
            raise UserError(f"{key}: given twice, as --{dest.replace('_', '-')} and as --set {key}=...; keep one.")
        values[key] = value
    return values
