"""How an adapter serves: `ServingConfig` (everything the model needs besides its adapter files), the load
options a user may change, and how input rows become model text.

One typed config is shared by the registry (it writes it as the pyfunc's flat `model_config`), the pyfunc
(`pipeline/serving/pyfunc.py` reads it back) and `jobs/predict.py` (it builds one for an adapter folder).
Its defaults are `TrainConfig`'s: a served adapter reads inputs exactly as it was trained and evaluated.

Load options (`mlflow.pyfunc.load_model(uri, model_config={...})`, `predict.py --option key=value` or its
flags, and for `mlflow models serve` the environment variable `MLFLOW_PYFUNC_INFERENCE_CONFIG='{"folded": true}'`,
which MLflow merges the same way):

    folded          true: fold ADePT's FFN into the input embedding table first (prompt-tuning cost)
    backbone        alias, hub id or folder to load instead of the recorded one (fingerprint-checked: another
                    backbone is refused, naming both); needed when the recorded folder moved (or bundle it:
                    jobs/register_best.py --bundle-backbone)
    max_new_tokens  generation budget (generate mode)
    batch_size      examples per forward pass
    device          "cpu", "cuda", "cuda:1" (default: cuda when available)

What is refused, and what cannot be:

* `predict.py --option bogus=1` (or a wrongly typed value) is an error listing the options (`check_options`),
  before anything loads.
* `mlflow.pyfunc.load_model(uri, model_config={"task": ...})`, or any other logged key that is not a load
  option (`backbone_fingerprint`, `label_strings`, `eval_mode`, ...), and a wrongly typed option value
  (`{"folded": "yes"}`) are refused by the model's `load_context` (`check_overrides`): it compares the
  config MLflow hands it with the one in the model's MLmodel file.
* `mlflow.pyfunc.load_model(uri, model_config={"bogus": 1})` cannot be refused by this code: MLflow
  (`mlflow.utils.model_utils._get_overridden_pyfunc_model_config`, MLflow 3.x) keeps only the keys the model
  was logged with and drops the others before the model's code runs, with only a WARNING on the
  `mlflow.pyfunc` logger ("Argument(s) bogus were ignored since they are not valid keys ..."); the model
  then loads with the logged values. The same holds for keys in `$MLFLOW_PYFUNC_INFERENCE_CONFIG`. Watch
  for that warning, or check keys with `check_options` first (jobs/predict.py does).
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.config import check_known_keys, is_custom_task
from pipeline.core.errors import UserError

LABEL_KEYS = ("label", "value", "answers", "idx", "group")  # formatter fields that only carry the gold answer
LOAD_OPTIONS = {"folded": bool, "backbone": str, "max_new_tokens": int, "batch_size": int, "device": str}


class InputError(UserError):
    """The request's rows do not fit the model's inputs (a missing column, say)."""


@dataclass
class ServingConfig:
    backbone: str  # alias, hub id or folder (see `backbone_fingerprint`)
    task: str  # registry name (its formatter builds the input text) or a custom task's name
    task_type: str
    eval_mode: str  # rank (label strings scored) | generate
    label_strings: list[str]
    input_columns: list[list[str]]  # [column, shown name]; empty: only a `source` column is accepted
    custom_format: bool  # True: "shown: value" pairs (custom tasks); False: the registered task's formatter
    max_source_length: int
    max_target_length: int
    max_new_tokens: int
    batch_size: int
    dtype: str = "float32"
    backbone_fingerprint: dict[str, Any] | None = None
    folded: bool = False
    device: str = ""  # "" = cuda when available

    def __post_init__(self) -> None:
        if self.eval_mode not in ("rank", "generate"):
            raise UserError(f"eval_mode={self.eval_mode!r}: use rank or generate.")
        if self.eval_mode == "rank" and not self.label_strings:
            raise UserError("eval_mode=rank needs label_strings; this task has none, use generate.")
        for name in ("max_source_length", "max_target_length", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name}={value!r} must be an integer >= 1.")
        if not isinstance(self.folded, bool):
            raise UserError(f"folded={self.folded!r} must be true or false.")

    # ---------------------------------------------------------------------------------- building it
    @classmethod
    def from_run(cls, train: Mapping[str, Any], backbone: str, fingerprint: dict | None = None) -> ServingConfig:
        """From a fit's resolved TrainConfig (dict): the task's format, lengths and scoring mode as trained."""
        from pipeline.core.config import TrainConfig
        from pipeline.core.resolve import resolve_task

        cfg = TrainConfig.from_resolved(dict(train))
        task = resolve_task(cfg)
        custom = is_custom_task(cfg.task)
        if custom:
            from pipeline.core.tasks import CustomTaskSpec

            columns = [list(c) for c in CustomTaskSpec.from_yaml(cfg.task).columns]
        else:
            columns = [[c, c] for c in task_input_columns(task)]
        mode = cfg.eval_mode if task.label_strings else "generate"
        return cls(backbone=backbone, task=task.name, task_type=task.task_type, eval_mode=mode,
                   label_strings=list(task.label_strings), input_columns=columns, custom_format=custom,
                   max_source_length=cfg.max_source_length, max_target_length=cfg.max_target_length,
                   max_new_tokens=task.max_new_tokens, batch_size=cfg.eval_batch_size, dtype=cfg.dtype,
                   backbone_fingerprint=fingerprint)

    def to_model_config(self) -> dict[str, Any]:
        """Flat and JSON-able: every key is one MLflow lets a loader override (it drops unknown keys)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_model_config(cls, data: Mapping[str, Any]) -> ServingConfig:
        known = sorted(f.name for f in dataclasses.fields(cls))
        check_known_keys(data, known, "model_config key", f"the serving settings are {known}.")
        return cls(**dict(data))

    def with_options(self, options: Mapping[str, Any] | None) -> ServingConfig:
        """This config with load options applied; an unknown option is an error listing the known ones."""
        options = dict(options or {})
        check_options(options)
        return dataclasses.replace(self, **options)

    # ---------------------------------------------------------------------------------- inputs
    @property
    def columns(self) -> list[str]:
        return [c for c, _ in self.input_columns]

    def sources(self, frame, dropped: list[str] | None = None) -> list[str]:
        """One model input text per row: from the task's columns, or a ready `source` column.

        `dropped`: the request's columns MLflow's schema enforcement removed before `predict` (see
        `DroppedColumns`). A frame without rows and without columns is an empty request (`[]`); columns that
        miss one of the task's are an `InputError` naming the missing and the expected ones, rows or not."""
        if "source" in frame.columns:
            check_text(frame, ["source"])
            return list(frame["source"])
        given = [str(c) for c in frame.columns] + list(dropped or [])
        if not given and len(frame) == 0:
            return []
        missing = [c for c in self.columns if c not in frame.columns]
        if missing or not self.columns:
            expected = self.columns or ["source"]
            note = f" ({dropped} dropped by MLflow: not in the model's signature)" if dropped else ""
            raise InputError(f"input is missing column(s) {missing or ['source']}; expected {expected} "
                             f"(or one 'source' column with the formatted text), got {given}{note}.")
        if len(frame) == 0:
            return []
        check_text(frame, self.columns)
        rows = frame.to_dict("records")
        if self.custom_format:
            from pipeline.core.tasks.base import join_fields

            return [join_fields(*((shown, row[c]) for c, shown in self.input_columns)) for row in rows]
        from pipeline.core.tasks import get_task

        formatter = get_task(self.task).formatter
        return [str(formatter(_Row(row))["source"]) for row in rows]


def check_text(frame, columns: list[str], listed: int = 5) -> None:
    """Every cell of the model's input columns must be a string: a null (JSON null, an empty CSV cell: pandas
    gives None / NaN / NA) or a number would otherwise be formatted as "", "nan" or "5" and answered as if it
    were a review. An `InputError` names the first `listed` bad cells by row (counted from 0, the request's
    order) and column, and how many there are."""
    import pandas as pd

    bad = [(row, column, value) for column in columns
           for row, value in enumerate(frame[column].tolist()) if not isinstance(value, str)]
    if not bad:
        return
    bad.sort(key=lambda cell: cell[0])
    cells = "; ".join(f"row {row}, column {column!r}: "
                      + ("null" if pd.api.types.is_scalar(value) and pd.isna(value)
                         else f"{_clip(repr(value))} ({type(value).__name__}, not a string)")
                      for row, column, value in bad[:listed])
    more = f" (and {len(bad) - listed} more)" if len(bad) > listed else ""
    raise InputError(f"input {cells}{more}: every row needs a string in {columns} (rows counted from 0; "
                     'send "" for an empty text).')


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_overrides(given: Mapping[str, Any], logged: Mapping[str, Any] | None) -> None:
    """The keys a loader changed in the logged `model_config` must be load options, of the right types.

    MLflow merges `load_model(model_config=...)` (and `$MLFLOW_PYFUNC_INFERENCE_CONFIG`) into the logged config
    and lets any logged key through: without this check `{"backbone_fingerprint": None}` would skip the
    backbone check and `{"task": ...}` or `{"label_strings": [...]}` would silently change the model."""
    if logged is None:
        return
    changed = {k: v for k, v in given.items() if k not in logged or logged[k] != v}
    fixed = sorted(set(changed) - set(LOAD_OPTIONS))
    if fixed:
        raise UserError(f"model_config key(s) {fixed} describe how the adapter was trained and cannot be changed "
                        f"when loading; the load options are {sorted(LOAD_OPTIONS)} (see pipeline/serving/config.py).")
    check_options(changed)


def check_options(options: Mapping[str, Any]) -> None:
    check_known_keys(options, LOAD_OPTIONS, "load option",
                     f"the options are {sorted(LOAD_OPTIONS)} (see pipeline/serving/config.py).")
    for key, value in options.items():
        kind = LOAD_OPTIONS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"load option {key}={value!r} must be {kind.__name__}.")


class DroppedColumns(logging.Filter):
    """MLflow's schema enforcement drops the columns the signature does not name (the inputs are all optional,
    so both forms - the task's columns or `source` - pass) and only logs a warning on `mlflow.models.utils`. A
    request whose columns were all unknown then reaches `predict` as a (0, 0) frame - rows gone too (MLflow
    3.17) - exactly like a truly empty request: this filter remembers, per thread, which columns MLflow
    dropped for the call in progress.

    It sees the warning only while that logger lets WARNING through (MLflow's default); with the `mlflow`
    loggers raised to ERROR, such a request answers `[]` instead of HTTP 400."""

    def __init__(self):
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "extra inputs" in message and "`" in message:
            try:
                self.local.dropped = [str(c) for c in ast.literal_eval(message.split("`")[1])]
            except (ValueError, SyntaxError):
                self.local.dropped = [message.split("`")[1]]
        return True

    def take(self) -> list[str]:
        dropped, self.local.dropped = getattr(self.local, "dropped", None), None
        return dropped or []


DROPPED_COLUMNS = DroppedColumns()


def watch_dropped_columns() -> DroppedColumns:
    """Install `DROPPED_COLUMNS` on MLflow's logger once per process (each model load re-runs the model's code
    file as a new module: a filter created there would pile up)."""
    logger = logging.getLogger("mlflow.models.utils")
    if DROPPED_COLUMNS not in logger.filters:
        logger.addFilter(DROPPED_COLUMNS)
    return DROPPED_COLUMNS


def task_input_columns(task) -> list[str]:
    """The raw columns a registered task's formatter reads (probed with an empty row), gold-only fields left out."""
    probe = _Row({})
    try:
        task.formatter(probe)
    except Exception:  # noqa: BLE001 - a formatter that needs real values: a `source` column only
        return []
    return [k for k in dict.fromkeys(probe.missing) if k not in LABEL_KEYS]


class _Row(Mapping):
    """A row for a task formatter: gold-answer fields it asks for but inputs lack read as 0 (and are noted)."""

    def __init__(self, data: dict):
        self.data, self.missing = data, []

    def __getitem__(self, key):
        if key in self.data:
            return self.data[key]
        self.missing.append(key)
        return 0

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
