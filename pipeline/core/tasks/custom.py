"""User tasks from local CSV / JSONL / Parquet files, described by a small spec (YAML or dict).

Example ``my_task.yaml``::

    name: my-nli
    train: data/train.csv          # required
    validation: data/dev.jsonl     # optional
    test: data/test.parquet        # optional
    input_columns: [premise, hypothesis]   # order of the "name: value" pairs; or {column: shown name}
    label_column: label
    task_type: classification      # classification | regression | generation
    verbalizer: {0: "no", 1: "yes"}        # label value -> target string (classification)
    metrics: [accuracy, f1]        # optional; defaults per task type, first = model selection

Split protocol (``split_protocol: auto``): all three files → official splits; train + validation
→ ``small`` (validation halved into validation/test) or, with more than 10,000 train rows,
``large`` (1,000 train rows become validation, the validation file becomes test); train only →
``holdout``. Everything is checked when the task is built, before any training starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from pipeline.core.errors import UserError

# The spec and its file checks are light (no datasets): jobs run them before the heavy imports.
from pipeline.core.task_spec import BUILDERS, CustomTaskSpec
from pipeline.core.task_spec import has_rows as _has_rows
from pipeline.core.tasks.base import SplitSpec, Task, join_fields

DEFAULT_METRICS = {"classification": ("accuracy",), "regression": ("pearson", "spearman"), "generation": ("squad_em", "squad_f1")}
LARGE_TRAIN = 10_000


def _label_key(value: Any) -> str:
    """Canonical string of a label value: ``1``, ``1.0`` and ``"1"`` all become ``"1"``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _load_file(spec: CustomTaskSpec, key: str) -> datasets.Dataset:
    path = spec.path(key)
    where = f"custom task {spec.name!r}, {key} file {str(path)!r}"
    if not _has_rows(path):
        raise UserError(f"{where}: the split is empty; give a file with at least one row")
    try:
        return datasets.load_dataset(BUILDERS[path.suffix.lower()], data_files=str(path), split="train")
    except Exception as err:  # the builders' own errors do not name the file
        raise UserError(f"{where}: could not be read as {path.suffix} ({type(err).__name__}: {err})") from err


class _CustomFormatter:
    def __init__(self, spec: CustomTaskSpec, label_index: dict[str, int] | None) -> None:
        self.columns, self.label_column = spec.columns, spec.label_column
        self.task_type, self.label_index = spec.task_type, label_index

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        source = join_fields(*((shown, "" if row[c] is None else row[c]) for c, shown in self.columns))
        value = row[self.label_column]
        if self.task_type == "classification":
            return {"source": source, "label": self.label_index[_label_key(value)]}
        if self.task_type == "regression":
            return {"source": source, "value": float(value)}
        answers = [str(a) for a in value] if isinstance(value, list) else [str(value)]
        return {"source": source, "answers": answers}


def _check(spec: CustomTaskSpec, key: str, data: datasets.Dataset, label_index: dict[str, int] | None) -> None:
    """Raise a clear error for an empty file, a missing column, an unknown label or a non-numeric target."""
    where = f"custom task {spec.name!r}, {key} file {str(spec.path(key))!r}"
    if len(data) == 0:
        raise UserError(f"{where}: the split is empty; give a file with at least one row")
    needed = [c for c, _ in spec.columns] + [spec.label_column]
    missing = [c for c in needed if c not in data.column_names]
    if missing:
        raise UserError(f"{where}: missing column(s) {missing}; the file has {data.column_names}")
    for i, value in enumerate(data[spec.label_column]):
        if spec.task_type == "classification" and _label_key(value) not in label_index:
            raise UserError(
                f"{where}, row {i}: label value {value!r} is not in the label set {sorted(label_index)}; "
                "add it to 'verbalizer' or fix the row"
            )
        if spec.task_type == "regression":
            try:
                ok = value is not None and math.isfinite(float(value))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise UserError(f"{where}, row {i}: regression target {value!r} is not a finite number")
        if spec.task_type == "generation" and (value is None or value == []):
            raise UserError(f"{where}, row {i}: the target column {spec.label_column!r} is empty")


def _check_learnable(spec: CustomTaskSpec, train: datasets.Dataset) -> None:
    """Refuse a train file nothing can be learned from: every input empty, or a single class."""
    where = f"custom task {spec.name!r}, train file {str(spec.path('train'))!r}"
    texts = [" ".join("" if row[c] is None else str(row[c]) for c, _ in spec.columns) for row in train]
    if not any(t.strip() for t in texts):
        raise UserError(f"{where}: every row's input columns {[c for c, _ in spec.columns]} are empty; "
                        "check input_columns names the columns that hold the text")
    if spec.task_type == "classification":
        seen = {_label_key(v) for v in train[spec.label_column]}
        if len(seen) < 2:
            raise UserError(f"{where}: every row has the label {sorted(seen)}; a classifier needs at least two "
                            "classes in its train split (check the label column and the split)")


def load_custom_task(spec: CustomTaskSpec | Mapping[str, Any] | str | Path) -> Task:
    """Build a validated `Task` from a spec object, a dict, or a YAML path."""
    if isinstance(spec, str | Path):
        spec = CustomTaskSpec.from_yaml(spec)
    elif isinstance(spec, Mapping):
        spec = CustomTaskSpec.from_dict(spec)
    files = {k: _load_file(spec, k) for k in ("train", "validation", "test") if spec.path(k) is not None}
    label_index: dict[str, int] | None = None
    label_strings: tuple[str, ...] = ()
    if spec.task_type == "classification":
        if spec.verbalizer is not None:
            keys = [_label_key(k) for k in spec.verbalizer]
            label_strings = tuple(str(v) for v in spec.verbalizer.values())
        else:
            if spec.label_column not in files["train"].column_names:
                _check(spec, "train", files["train"], {})
            keys = sorted({_label_key(v) for v in files["train"][spec.label_column]})
            label_strings = tuple(keys)
        label_index = {k: i for i, k in enumerate(keys)}
    for key, data in files.items():
        _check(spec, key, data, label_index)
    _check_learnable(spec, files["train"])
    protocol = spec.split_protocol
    if protocol == "auto":
        if len(files) == 3:
            protocol = "official"
        elif "validation" in files:
            protocol = "large" if len(files["train"]) > LARGE_TRAIN else "small"
        else:
            protocol = "holdout"
    needs = {"official": {"train", "validation", "test"}, "small": {"train", "validation"}, "large": {"train", "validation"}, "holdout": {"train"}}
    if not needs[protocol] <= set(files):
        raise UserError(f"custom task {spec.name!r}: split_protocol={protocol!r} needs files for {sorted(needs[protocol])}")

    def loader(split_name: str) -> datasets.Dataset:
        return files[split_name]

    return Task(
        name=spec.name.lower(), task_type=spec.task_type, formatter=_CustomFormatter(spec, label_index),
        metrics=tuple(spec.metrics or DEFAULT_METRICS[spec.task_type]), label_strings=label_strings, loader=loader,
        splits=SplitSpec(protocol=protocol, validation_size=spec.validation_size, max_train=spec.max_train, seed=spec.seed),
        round_to=spec.round_to, max_new_tokens=spec.max_new_tokens, description=f"custom task from {spec.path('train')}",
    )
