"""A custom task's spec (its YAML) and its files' column names, read with the standard library and yaml only.

A job checks a custom task twice: here first, in a second, before torch, datasets or Ray are imported (a missing
file or column used to be refused only after minutes of imports on a loaded machine), then in full by
`pipeline.core.tasks.custom`, which builds the `Task` from the same `CustomTaskSpec` and checks every row. This
module lives outside `pipeline.core.tasks` because that package imports datasets and torch when it loads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import check_known_keys, load_yaml
from pipeline.core.errors import MissingFile, UserError

TASK_TYPES = ("classification", "regression", "generation")
PROTOCOLS = ("official", "small", "large", "holdout")
BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# A JSON-lines file's columns are the union of its rows' keys: read whole up to this many lines; a longer file's
# columns are left to the full check (reading gigabytes here would undo the point of a fast first pass).
JSON_LINES_READ = 10_000
JSON_ARRAY_BYTES = 16 << 20

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "train": (str,), "input_columns": (list, dict), "label_column": (str,), "task_type": (str,),
    "validation": (str, type(None)), "test": (str, type(None)), "verbalizer": (dict, type(None)),
    "metrics": (list, type(None)), "round_to": (int, float, type(None)), "split_protocol": (str,), "seed": (int,),
    "validation_size": (int,), "max_train": (int, type(None)), "max_new_tokens": (int,),
}


@dataclass
class CustomTaskSpec:
    """A local-file task. See pipeline.core.tasks.custom for the YAML form."""

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


def has_rows(path: Path) -> bool:
    """Whether a data file holds at least one row (a CSV header alone is not a row)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq  # its footer only: ~0.5 s, no pandas

        return pq.ParquetFile(path).metadata.num_rows > 0
    with path.open("r", encoding="utf-8", errors="replace") as f:
        lines = (line for line in f if line.strip())
        needed = 2 if path.suffix.lower() == ".csv" else 1
        return sum(1 for _, _ in zip(range(needed), lines, strict=False)) >= needed


def file_columns(path: Path) -> list[str] | None:
    """The column names a data file has, as datasets' builder will see them; None when that takes more than a
    header (a long or malformed JSON file: the full check reads it)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    if suffix == ".csv":
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as f:
            for row in csv.reader(f):
                if any(cell.strip() for cell in row):  # pandas skips blank lines before the header too
                    return row
        return []
    if suffix == ".json" and path.stat().st_size <= JSON_ARRAY_BYTES:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = None  # not one JSON document: JSON lines, as datasets reads it too
        if isinstance(data, list):
            return _union(data)
        if data is not None:
            return None
    return _json_lines_columns(path)


def _json_lines_columns(path: Path) -> list[str] | None:
    rows = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i >= JSON_LINES_READ:
                return None
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    return None
    return _union(rows)


def _union(rows: list) -> list[str] | None:
    if not all(isinstance(row, dict) for row in rows):
        return None
    return list(dict.fromkeys(key for row in rows for key in row))


def check_files(spec: CustomTaskSpec) -> None:
    """Each of the spec's files has a row and the columns the spec names (from its header: no rows are read)."""
    for key in ("train", "validation", "test"):
        path = spec.path(key)
        if path is None:
            continue
        where = f"custom task {spec.name!r}, {key} file {str(path)!r}"
        try:
            empty, columns = not has_rows(path), file_columns(path)
        except (OSError, ValueError):  # unreadable, or not Parquet after all (ArrowInvalid): the full check says
            continue
        if empty:
            raise UserError(f"{where}: the split is empty; give a file with at least one row")
        if columns is None:
            continue
        needed = [c for c, _ in spec.columns] + [spec.label_column]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise UserError(f"{where}: missing column(s) {missing}; the file has {columns}")
