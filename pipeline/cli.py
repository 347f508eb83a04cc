"""What every job shares: `--log-level` / `--quiet`, loopback Ray before the first `import ray`, and one way
to turn a user's mistake into `error: <field>: <what>; <fix>` with exit status 2.

Only the standard library is imported here, so `--help` answers before torch or Ray load.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.core.logs import add_arguments, configure, level_from_args
from pipeline.driver.ray_setup import use_loopback

USER_ERROR = 2


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


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong" (bad config, missing file, unreachable server): exit 2."""
    from pipeline.core.backbones import BackboneError
    from pipeline.driver.ray_setup import RayStartError
    from pipeline.worker.checkpoint import CheckpointError

    return (ValueError, KeyError, OSError, TypeError, BackboneError, CheckpointError, RayStartError)


def fail(err: BaseException) -> int:
    message = err.args[0] if isinstance(err, KeyError) and err.args else err
    print(f"error: {message}", file=sys.stderr, flush=True)
    return USER_ERROR


def flag_values(args: argparse.Namespace, flags: dict[str, str], set_items: list[str]) -> dict[str, object]:
    """The shortcut flags given (flag dest -> config key), as typed values; a key also in --set is an error."""
    set_keys = {item.partition("=")[0].strip() for item in set_items}
    values = {}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if key in set_keys:
            raise ValueError(f"{key}: given twice, as --{dest.replace('_', '-')} and as --set {key}=...; keep one.")
        values[key] = value
    return values
