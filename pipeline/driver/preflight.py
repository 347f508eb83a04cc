"""The checks a job runs before it imports torch, transformers, datasets, Ray or MLflow.

On a loaded machine those imports take minutes, and a job used to stay silent that long before refusing a typo.
What needs none of them is checked here, in seconds: a custom task's files and columns (their headers), the
storage path, and the tracking store (its folder, or a TCP connect). `launch.prepare` runs the full checks
afterwards (the task's rows, the backbone, the sizes, MLflow itself) and calls this first too, so a caller of
`prepare` alone misses nothing. Only the standard library and yaml are imported (a Parquet header: pyarrow).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.config import TrainConfig, is_custom_task
from pipeline.core.errors import UserError
from pipeline.core.task_spec import CustomTaskSpec, check_files
from pipeline.tracking.preflight import probe_store


def check_early(cfg: TrainConfig, check_mlflow: bool = True) -> None:
    """Refuse, in seconds, what is wrong with the task's files, the storage path or the tracking store."""
    if is_custom_task(cfg.task):
        check_files(CustomTaskSpec.from_yaml(cfg.task))
    check_storage(cfg.storage_path)
    if check_mlflow:
        probe_store(cfg.tracking_uri, write=True)


def check_storage(storage_path: str) -> None:
    """The storage path is (or can become) a folder this user writes; nothing is created here (the first
    write is `launch.prepare`'s, after every other check passed)."""
    path = Path(storage_path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"storage_path: {str(path)!r} is not writable ({str(existing)!r} is a file); choose another.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"storage_path: {str(path)!r} is not writable (no write permission on {str(existing)!r}); "
                        "choose another.")
