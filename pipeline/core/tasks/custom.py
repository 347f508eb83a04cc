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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from pipeline.core.config import check_known_keys, load_yaml
from pipeline.core.errors import MissingFile, UserError
from pipeline.core.tasks.base import PROTOCOLS, TASK_TYPES, SplitSpec, Task, join_fields

BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DEFAULT_METRICS = {"classification": ("accuracy",), "regression": ("pearson", "spearman"), "generation": ("squad_em", "squad_f1")}
LARGE_TRAIN = 10_000


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "train": (str,), "input_columns": (list, dict), "label_column": (str,), "task_type": (str,),
    "validation": (str, type(None)), "test": (str, type(None)), "verbalizer": (dict, type(None)),
    "metrics": (list, type(None)), "round_to": (int, float, type(None)), "split_protocol": (str,), "seed": (int,),
    "validation_size": (int,), "max_train": (int, type(None)), "max_new_tokens": (int,),
}


def _label_key(value: Any) -> str:
    """Canonical string of a label value: ``1``, ``1.0`` and ``"1"`` all become ``"1"``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


@dataclass
class CustomTaskSpec:
    """A local-file task. See the module docstring for the YAML form."""

    name: str
    train: str
    input_columns: list[str] | dict[str, str]
    label_column: str
    task_type: str = "classification"
    validation: str | None = None
    test: str | None = None
    verbalizer: dict[Any, str] | None = None
    metrics: list[str] | None = None
    round_to: float | None = None
    split_protocol: str = "auto"
    seed: int = 42
    validation_size: int = 1000
    max_train: int | None = None
    max_new_tokens: int = 20
    base_dir: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.input_columns, str):
            self.input_columns = [self.input_columns]
        for key, kinds in _FIELD_TYPES.items():  # YAML can give a list or a mapping anywhere
            value = getattr(self, key)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
                raise UserError(f"custom task {self.name!r}: {key}={value!r} must be {names}; fix it in the task YAML")
        if self.task_type not in TASK_TYPES:
            raise UserError(f"custom task {self.name!r}: task_type={self.task_type!r}; choose one of {TASK_TYPES}")
        if not self.input_columns:
            raise UserError(f"custom task {self.name!r}: input_columns is empty; list the columns that form the input")
        if self.split_protocol not in ("auto", *PROTOCOLS):
            raise UserError(f"custom task {self.name!r}: split_protocol={self.split_protocol!r}; choose auto or one of {PROTOCOLS}")
        if self.verbalizer is not None and self.task_type != "classification":
            raise UserError(f"custom task {self.name!r}: verbalizer only applies to task_type=classification")
        if self.verbalizer is not None and len(self.verbalizer) < 2:
            raise UserError(f"custom task {self.name!r}: verbalizer needs at least 2 labels, got {self.verbalizer}")
        for key, value in (self.verbalizer or {}).items():
            if not isinstance(value, str):  # YAML reads unquoted yes/no/true as booleans
                raise UserError(
                    f"custom task {self.name!r}: verbalizer value for {key!r} is {value!r} ({type(value).__name__}), "
                    "not a string; quote it in YAML, e.g. 1: \"yes\""
                )
        for key in ("train", "validation", "test"):
            path = self.path(key)
            if path is not None and not path.is_file():
                raise MissingFile(f"custom task {self.name!r}: {key} file {str(path)!r} does not exist; fix the '{key}' path")
            if path is not None and path.suffix.lower() not in BUILDERS:
                raise UserError(f"custom task {self.name!r}: {key} file {path.name!r} must end in one of {sorted(BUILDERS)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | Path | None = None) -> CustomTaskSpec:
        known = sorted(set(cls.__dataclass_fields__) - {"base_dir"})
        check_known_keys(data, known, "key", f"allowed keys are {known}", where="custom task spec")
        missing = [k for k in ("name", "train", "input_columns", "label_column") if k not in data]
        if missing:
            raise UserError(f"custom task spec: missing required key(s) {missing}")
        return cls(**data, base_dir=None if base_dir is None else str(base_dir))

    @classmethod
    def from_yaml(cls, path: str | Path) -> CustomTaskSpec:
        """Relative data paths in the YAML are resolved against the YAML file's folder."""
        path = Path(path)
        if not path.is_file():
            raise MissingFile(f"custom task spec {str(path)!r} does not exist")
        data = load_yaml(path.read_text(), f"custom task spec {str(path)!r}")
        if not isinstance(data, dict):
            raise UserError(f"custom task spec {str(path)!r} must be a YAML mapping of keys to values")
        return cls.from_dict(data, base_dir=path.parent)

    def path(self, key: str) -> Path | None:
        value = getattr(self, key)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() or self.base_dir is None else Path(self.base_dir) / p

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(column, shown name) pairs in input order."""
        if isinstance(self.input_columns, Mapping):
            return [(str(c), str(n)) for c, n in self.input_columns.items()]
        return [(str(c), str(c)) for c in self.input_columns]


def _has_rows(path: Path) -> bool:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows > 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        lines = (line for line in f if line.strip())
        needed = 2 if path.suffix.lower() == ".csv" else 1  # a CSV header is not a row
        return sum(1 for _, _ in zip(range(needed), lines, strict=False)) >= needed


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
