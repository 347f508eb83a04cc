"""Task registry: ``get_task(name)``, ``list_tasks()``, ``register_task(task)``.

Registered: the paper's 23 tasks (GLUE 8, SuperGLUE 6, MRQA 4, WinoGrande, Yelp-2, SciTail,
PAWS-Wiki, MBPP) and the offline ``movie-sentiment``. ``get_task`` also accepts the path of a
custom-task YAML (see `pipeline.core.tasks.custom`). Looking a task up never downloads anything; data
is loaded by ``Task.get_split``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from pipeline.core.config import is_custom_task
from pipeline.core.errors import UnknownName
from pipeline.core.tasks import glue, mrqa, others, superglue
from pipeline.core.tasks.base import SplitSpec, Task
from pipeline.core.tasks.custom import CustomTaskSpec, load_custom_task
from pipeline.core.tasks.movie_sentiment import TASK as MOVIE_SENTIMENT

__all__ = ["CustomTaskSpec", "SplitSpec", "Task", "get_task", "list_tasks", "load_custom_task", "register_task"]

_REGISTRY: dict[str, Task] = {}
ALIASES = {
    "sst-2": "sst2", "sts-b": "stsb", "yelp-2": "yelp", "yelp_polarity": "yelp", "paws-wiki": "paws",
    "naturalquestions": "nq", "wsc.fixed": "wsc", "superglue-boolq": "boolq", "superglue-cb": "cb",
    "superglue-multirc": "multirc", "superglue-wic": "wic", "superglue-wsc": "wsc", "superglue-record": "record",
}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add ``task`` under ``task.name``; re-registering a name needs ``overwrite=True``."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task expects a pipeline.core.tasks.Task, got {type(task).__name__}")
    if task.name in _REGISTRY and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[task.name] = task
    return task


def list_tasks() -> list[str]:
    """Registered task names (lower-case), in registration order."""
    return list(_REGISTRY)


def get_task(name: str) -> Task:
    """The registered task ``name`` (case-insensitive, common aliases accepted), or a custom task
    built from a ``.yaml`` / ``.yml`` spec path."""
    if is_custom_task(name):
        return load_custom_task(Path(name))
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise UnknownName(f"unknown task {name!r}{hint} Registered: {list_tasks()}, or pass a custom-task .yaml path")
    return _REGISTRY[key]


for _task in [*glue.TASKS, *superglue.TASKS, *mrqa.TASKS, *others.TASKS, MOVIE_SENTIMENT]:
    register_task(_task)
