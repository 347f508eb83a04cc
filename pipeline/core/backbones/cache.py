"""The backbone cache: ``<root>/models/<alias>/`` folders, made once, complete or absent.

A folder is built in a temporary sibling and renamed into place under a lock file, so concurrent workers
on a node build it once and a crash never leaves a half folder behind; ``MARKER`` is written last and its
presence means "complete".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.core.errors import UserError

MARKER = "adept_backbone.json"  # written last into a converted folder; its presence means "complete"


class BackboneError(UserError):
    """A backbone could not be resolved or loaded; the message names what failed and the fix."""


def say(msg: str) -> None:
    print(f"[backbones] {msg}", file=sys.stderr, flush=True)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$ADEPT_CACHE_DIR``, else ``platformdirs.user_cache_dir("adept")``."""
    if cache_dir is None:
        cache_dir = os.environ.get("ADEPT_CACHE_DIR")
    if not cache_dir:
        import platformdirs

        cache_dir = platformdirs.user_cache_dir("adept")
    return Path(cache_dir).expanduser()


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock on ``path`` (fcntl.flock; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process converting into the cache (lock {path}) ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _share(folder: Path) -> None:
    """mkdtemp makes 0700 folders: give the cache the usual umask permissions so a shared cache is readable."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def _cached(final: Path, spec: str | None = None) -> bool:
    if not final.exists():
        return False
    if not (final / MARKER).is_file() or not (final / "config.json").is_file():
        raise BackboneError(f"the cache folder {final} is incomplete or not made by pipeline.core.backbones "
                            f"(no {MARKER} / config.json); fix: delete it and run again")
    if spec is not None and read_marker(final).get("spec") != spec:
        raise BackboneError(f"the cache folder {final} was made by another version of pipeline.core.backbones "
                            f"(its {MARKER} has another spec than {spec}); fix: delete it and run again")
    return True


def read_marker(folder: Path) -> dict:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError) as e:
        raise BackboneError(f"cannot read {folder / MARKER}: {e}; fix: delete {folder} and run again") from e
    if not isinstance(meta, dict):
        raise BackboneError(f"{folder / MARKER} is not a JSON object; fix: delete {folder} and run again")
    return meta


def materialise(alias_name: str, build, root: Path, spec: str | None = None) -> Path:
    """The cache folder ``models/<alias_name>`` (a ":" becomes "-"), made once by ``build(stage)``.

    ``build`` writes the folder's files into ``stage`` and returns ``(marker dict, note for the log)``; the
    marker (with ``spec`` when given: a mismatch later is an error) is written last, then ``stage`` is renamed
    into place under a lock file.
    """
    folder = alias_name.replace(":", "-")
    models = root / "models"
    final = models / folder
    if _cached(final, spec):
        return final
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackboneError(f"cannot create the cache folder {models}: {e}; fix: set ADEPT_CACHE_DIR "
                            "to a writable folder") from e
    with _file_lock(models / f".{folder}.lock"):
        if _cached(final, spec):  # another worker finished while we waited
            return final
        for stale in models.glob(f".{folder}.*.tmp"):  # left by a crash; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=models))
        try:
            meta, note = build(stage)
            if spec is not None:
                meta["spec"] = spec
            (stage / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
            _share(stage)
            os.rename(stage, final)  # atomic on one filesystem: the folder appears complete or not at all
            say(f"cached {alias_name} at {final} ({note})")
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return final
