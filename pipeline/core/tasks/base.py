"""The `Task` object: how to load a dataset, split it like the paper, format it text-to-text, score it.

A *formatter* maps one raw row (a dict in the dataset's own column schema) to a dict with
``source`` (the input text, ``field: value`` pairs joined by spaces) and one of

* ``label`` (int class id, classification; the target is ``label_strings[label]``),
* ``value`` (float, regression; the target is the value rounded to ``round_to``),
* ``answers`` (non-empty list of strings, generation; the target is ``answers[0]``),

plus an optional ``group`` (int; MultiRC question id). ``Task.get_split`` returns a
`datasets.Dataset` with the columns ``source`` (str), ``target`` (str), ``answers`` (list[str],
all gold strings; ``[target]`` outside QA) and ``group`` (int, -1 when unused).

Split protocols (DePT ``src/tasks.py``; every shuffle is ``torch.randperm`` seeded with ``seed``):

* ``official``: train/validation/test are the official splits named in the `SplitSpec`
  (MNLI: validation = ``validation_mismatched``, test = ``validation_matched``).
* ``small``: train = official train; the official ``validation`` split is shuffled, its first
  ⌊n/2⌋ rows become validation and the rest test.
* ``large``: official train is shuffled, its first ``validation_size`` (1,000) rows become
  validation and the rest train; test = the official ``validation`` split.
* ``holdout``: only a train split exists; shuffled, the first v rows are validation, the next v
  test, the rest train, with v = min(``validation_size``, max(1, n // 10)).

``max_train`` keeps the first N train rows after splitting (Yelp: 100,000).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from pipeline.core import code_eval
from pipeline.core import metrics as M
from pipeline.core.errors import UserError
from pipeline.core.task_spec import PROTOCOLS, TASK_TYPES  # defined with the light custom-task spec

SPLITS = ("train", "validation", "test")
FORMATTED_FEATURES = datasets.Features(
    {
        "source": datasets.Value("string"),
        "target": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "group": datasets.Value("int64"),
    }
)
Formatter = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def join_fields(*pairs: tuple[str, Any]) -> str:
    """``join_fields(("premise", "A"), ("hypothesis", "B"))`` → ``"premise: A hypothesis: B"``."""
    return " ".join(f"{name}: {value}" for name, value in pairs)


@dataclass(frozen=True)
class FieldsFormatter:
    """Formatter for the common case: source = ``col: value`` for each column, class id from ``label``.

    A class rather than a closure: `datasets` hashes the formatter to fingerprint its cache, and dill
    hashes a closure by disassembling its bytecode to stdout, which Ray workers then print.
    """

    columns: tuple[str, ...]
    label: str = "label"

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {"source": join_fields(*((c, row[c]) for c in self.columns)), "label": row[self.label]}


def fields_formatter(*columns: str, label: str = "label") -> Formatter:
    return FieldsFormatter(tuple(columns), label)


def format_number(value: float, round_to: float | None) -> str:
    """Round to the nearest multiple of ``round_to`` (half to even, like T5's ``tf.round``) and print it
    with as many decimals as ``round_to`` has: ``format_number(3.1, 0.2)`` → ``"3.2"``."""
    if round_to is None:
        return f"{value:g}"
    if round_to <= 0:
        raise UserError(f"round_to={round_to}; use a positive step such as 0.2, or None for no rounding")
    decimals = len(f"{round_to:.10f}".rstrip("0").split(".")[1])
    inverse = 1.0 / round_to  # 2.3 * 5 = 11.5 exactly (→ 12), whereas 2.3 / 0.2 = 11.4999…
    return f"{float(np.round(value * inverse) / inverse):.{decimals}f}"


def permutation(n: int, seed: int) -> list[int]:
    """The reference's shuffle: ``torch.randperm(n)`` with a generator seeded at ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


@dataclass(frozen=True)
class SplitSpec:
    """How train/validation/test are built from the official splits (see the module docstring).

    Attributes:
        protocol: one of ``official``, ``small``, ``large``, ``holdout``.
        train / validation / test: official split names. ``small`` halves ``validation``;
            ``large`` uses ``validation`` as the test set (Yelp: ``"test"``).
        validation_size: rows taken from train for validation (``large``), or the cap on the
            validation and test sizes (``holdout``).
        max_train: keep only the first N train rows after splitting (None = all).
        seed: shuffle seed; the paper's data seed is 42 whatever the training seed.
    """

    protocol: str = "official"
    train: str = "train"
    validation: str = "validation"
    test: str = "test"
    validation_size: int = 1000
    max_train: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise UserError(f"SplitSpec.protocol={self.protocol!r}; choose one of {PROTOCOLS}")
        if self.validation_size < 1:
            raise UserError(f"SplitSpec.validation_size={self.validation_size}; it must be >= 1")
        if self.max_train is not None and self.max_train < 1:
            raise UserError(f"SplitSpec.max_train={self.max_train}; use None for no cap or a positive count")


@dataclass(frozen=True)
class Task:
    """A registered task. See the module docstring for the formatter contract and split protocols.

    Attributes:
        name: lower-case registry name (``rte``, ``movie-sentiment``).
        task_type: ``classification`` | ``regression`` | ``generation``.
        formatter: raw row → ``{"source", "label" | "value" | "answers", ["group"]}``.
        metrics: metric names (see `pipeline.core.metrics`); the first selects the best checkpoint.
        label_strings: class id → target string (the verbalizer). Regression tasks may list the
            candidate strings for rank classification (STS-B: "0.0", "0.2", …, "5.0").
        hub_id / hub_config: arguments of ``datasets.load_dataset`` for the official splits.
        splits: the `SplitSpec`.
        loader: optional ``official_split_name -> datasets.Dataset`` replacing the hub load.
        raw_filter: optional ``Dataset -> Dataset`` applied to every loaded split (MRQA subset).
        explode_train: one training row per gold answer (ReCoRD); eval splits keep one row.
        round_to: regression target rounding step (STS-B: 0.2).
        max_new_tokens: default generation budget at evaluation.
        code_tests: generation tasks whose targets are Python code (MBPP): source → the asserts a predicted
            program must pass. Lets `with_code_execution` add the ``pass_at_1`` metric.
    """

    name: str
    task_type: str
    formatter: Formatter
    metrics: tuple[str, ...]
    label_strings: tuple[str, ...] = ()
    hub_id: str | None = None
    hub_config: str | None = None
    splits: SplitSpec = field(default_factory=SplitSpec)
    loader: Callable[[str], datasets.Dataset] | None = None
    raw_filter: Callable[[datasets.Dataset], datasets.Dataset] | None = None
    explode_train: bool = False
    round_to: float | None = None
    max_new_tokens: int = 20
    description: str = ""
    code_tests: Callable[[str], list[str]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "label_strings", tuple(str(s) for s in self.label_strings))
        if not self.name or self.name != self.name.lower():
            raise UserError(f"Task.name={self.name!r}; use a non-empty lower-case name")
        if self.task_type not in TASK_TYPES:
            raise UserError(f"Task {self.name}: task_type={self.task_type!r}; choose one of {TASK_TYPES}")
        if not self.metrics:
            raise UserError(f"Task {self.name}: metrics is empty; give at least one of {M.METRIC_NAMES}")
        allowed = {
            "classification": M.CLASS_METRICS + ("exact_match",),
            "regression": M.REGRESSION_METRICS + ("exact_match",),
            "generation": M.TEXT_METRICS + (M.CODE_METRICS if self.code_tests is not None else ()),
        }[self.task_type]
        bad = [m for m in self.metrics if m not in allowed]
        if bad:
            raise UserError(f"Task {self.name}: metrics {bad} do not fit a {self.task_type} task; choose from {allowed}")
        if any(m in self.metrics for m in ("f1", "mcc")) and len(self.label_strings) != 2:
            raise UserError(
                f"Task {self.name}: metrics 'f1' and 'mcc' are binary, but there are {len(self.label_strings)} "
                "label strings; use 'macro_f1' / 'accuracy' for more classes"
            )
        if self.task_type == "classification" and len(self.label_strings) < 2:
            raise UserError(f"Task {self.name}: a classification task needs >= 2 label_strings, got {self.label_strings}")
        if len(set(self.label_strings)) != len(self.label_strings) or any(not s.strip() for s in self.label_strings):
            raise UserError(f"Task {self.name}: label_strings {self.label_strings} must be distinct and non-blank")
        if self.hub_id is None and self.loader is None:
            raise ValueError(f"Task {self.name}: give hub_id (for datasets.load_dataset) or a loader function")
        if self.max_new_tokens < 1:
            raise UserError(f"Task {self.name}: max_new_tokens={self.max_new_tokens}; it must be >= 1")

    # ------------------------------------------------------------------ variants
    @property
    def primary_metric(self) -> str:
        """The model-selection metric (the paper's first metric)."""
        return self.metrics[0]

    def with_label_strings(self, label_strings: tuple[str, ...] | list[str]) -> Task:
        """A copy with another verbalizer, e.g. ``("no", "yes")`` for a causal LM instead of ``("0", "1")``."""
        if self.task_type != "classification":
            raise UserError(f"Task {self.name} is {self.task_type}; only classification tasks take a verbalizer")
        if len(label_strings) != len(self.label_strings):
            raise UserError(
                f"Task {self.name} has {len(self.label_strings)} classes {self.label_strings}; "
                f"with_label_strings got {len(label_strings)}: {list(label_strings)}"
            )
        return dataclasses.replace(self, label_strings=tuple(label_strings))

    def with_code_execution(self) -> Task:
        """A copy that also reports ``pass_at_1``: every prediction runs with its asserts in the sandbox of
        `pipeline.core.code_eval` (what it does not isolate: see there). The opt-in of ``execute_code: true``;
        call it before Ray starts: a sandbox this machine cannot build is refused here."""
        if self.code_tests is None:
            raise UserError(f"execute_code: task {self.name!r} has no tests to run generated code against; "
                            "fix: set execute_code: false (only mbpp has them)")
        try:
            code_eval.check_sandbox()
        except code_eval.SandboxUnavailable as err:
            raise UserError(f"execute_code: generated code cannot be run safely here: {err}") from err
        metrics = self.metrics if "pass_at_1" in self.metrics else (*self.metrics, "pass_at_1")
        return dataclasses.replace(self, metrics=metrics)

    def with_splits(self, **changes: Any) -> Task:
        """A copy with changed `SplitSpec` fields, e.g. ``task.with_splits(seed=1, max_train=500)``."""
        return dataclasses.replace(self, splits=dataclasses.replace(self.splits, **changes))

    # ------------------------------------------------------------------ formatting
    def format_row(self, row: Mapping[str, Any], *, explode: bool = False) -> list[dict[str, Any]]:
        """Format one raw row into one formatted row (several for ReCoRD training rows)."""
        return self._row_format().rows(row, explode)

    def _row_format(self) -> RowFormat:
        return RowFormat(self.name, self.task_type, self.formatter, self.label_strings, self.round_to)

    def format_dataset(self, raw: datasets.Dataset, *, explode: bool = False) -> datasets.Dataset:
        return raw.map(
            _format_batch,
            batched=True,
            remove_columns=raw.column_names,
            features=FORMATTED_FEATURES,
            fn_kwargs={"fmt": self._row_format(), "explode": explode},
            desc=f"format {self.name}",
        )

    # ------------------------------------------------------------------ splits
    def load_official(self, split_name: str, raw: Mapping[str, datasets.Dataset] | None = None) -> datasets.Dataset:
        """One official split, raw: from ``raw`` if given, else ``loader``, else the hub."""
        if raw is not None:
            if split_name not in raw:
                raise KeyError(f"Task {self.name}: raw data has splits {sorted(raw)}, but {split_name!r} is needed")
            data = raw[split_name]
        elif self.loader is not None:
            data = self.loader(split_name)
        else:
            data = datasets.load_dataset(self.hub_id, self.hub_config, split=split_name)
        return self.raw_filter(data) if self.raw_filter is not None else data

    def raw_split(self, split: str, raw: Mapping[str, datasets.Dataset] | None = None) -> datasets.Dataset:
        """The unformatted rows of ``train``, ``validation`` or ``test`` under the split protocol."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r}; choose one of {SPLITS}")
        spec = self.splits
        if spec.protocol == "official":
            data = self.load_official(getattr(spec, split), raw)
        elif spec.protocol == "small" and split != "train":
            held = self.load_official(spec.validation, raw)
            perm, half = permutation(len(held), spec.seed), len(held) // 2
            data = held.select(perm[:half] if split == "validation" else perm[half:])
        elif spec.protocol == "small" or (spec.protocol == "large" and split == "test"):
            data = self.load_official(spec.train if split == "train" else spec.validation, raw)
        elif spec.protocol == "large":
            full = self.load_official(spec.train, raw)
            perm, k = permutation(len(full), spec.seed), spec.validation_size
            if len(full) <= k:
                raise UserError(f"Task {self.name}: train has {len(full)} rows, not more than validation_size={k}")
            data = full.select(perm[:k] if split == "validation" else perm[k:])
        else:  # holdout
            full = self.load_official(spec.train, raw)
            if len(full) < 3:
                raise UserError(f"Task {self.name}: train has {len(full)} rows; the holdout split needs at least 3")
            perm, v = permutation(len(full), spec.seed), min(spec.validation_size, max(1, len(full) // 10))
            data = full.select({"validation": perm[:v], "test": perm[v : 2 * v], "train": perm[2 * v :]}[split])
        if split == "train" and spec.max_train is not None and len(data) > spec.max_train:
            data = data.select(range(spec.max_train))
        return data

    def get_split(
        self, split: str, raw: Mapping[str, datasets.Dataset] | None = None, max_examples: int | None = None
    ) -> datasets.Dataset:
        """Formatted ``split`` (columns source/target/answers/group); ``max_examples`` keeps the first N rows."""
        data = self.raw_split(split, raw)
        if max_examples is not None:
            data = data.select(range(min(max_examples, len(data))))
        if len(data) == 0:
            raise UserError(f"Task {self.name}: the {split} split is empty; check the data files or split settings")
        return self.format_dataset(data, explode=self.explode_train and split == "train")

    def get_splits(
        self, raw: Mapping[str, datasets.Dataset] | None = None, max_examples: int | None = None
    ) -> datasets.DatasetDict:
        """All three formatted splits."""
        return datasets.DatasetDict({s: self.get_split(s, raw, max_examples) for s in SPLITS})

    # ------------------------------------------------------------------ scoring
    def compute_metrics(
        self, predictions: Sequence[str], references: Sequence, groups: Sequence[int] | None = None,
        sources: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Score predicted strings against references (strings, or lists of gold strings for QA).

        ``groups`` (one int per example) is needed by MultiRC's ``multirc_em``; ``sources`` by ``pass_at_1``
        (each source holds the asserts its program must pass, see `code_tests`).
        """
        tests = None
        if "pass_at_1" in self.metrics:
            if sources is None:
                raise ValueError(f"Task {self.name}: metric 'pass_at_1' needs the sources (they hold the tests)")
            tests = [self.code_tests(s) for s in sources]
        return M.compute_metrics(
            self.metrics, predictions, references, label_strings=self.label_strings, groups=groups, tests=tests
        )


@dataclass(frozen=True)
class RowFormat:
    """What formatting a row needs, without the task's loader: `datasets` hashes it (see `FieldsFormatter`)."""

    name: str
    task_type: str
    formatter: Formatter
    label_strings: tuple[str, ...]
    round_to: float | None

    def rows(self, row: Mapping[str, Any], explode: bool) -> list[dict[str, Any]]:
        out = self.formatter(row)
        source, group = str(out["source"]), int(out.get("group", -1))
        if self.task_type == "classification":
            label = int(out["label"])
            if not 0 <= label < len(self.label_strings):
                raise ValueError(
                    f"Task {self.name}: label {label} is outside 0..{len(self.label_strings) - 1} "
                    "(unlabelled official test splits carry -1; evaluate on validation/test from the split protocol)"
                )
            targets = [self.label_strings[label]]
        elif self.task_type == "regression":
            targets = [format_number(float(out["value"]), self.round_to)]
        else:
            targets = [str(a) for a in out["answers"]]
            if not targets:
                raise ValueError(f"Task {self.name}: a row has no gold answer; source starts {source[:80]!r}")
        if explode:
            return [{"source": source, "target": t, "answers": targets, "group": group} for t in targets]
        return [{"source": source, "target": targets[0], "answers": targets, "group": group}]


def _format_batch(batch: Mapping[str, list], fmt: RowFormat, explode: bool) -> dict[str, list]:
    keys = list(batch)
    out: dict[str, list] = {k: [] for k in FORMATTED_FEATURES}
    for values in zip(*(batch[k] for k in keys), strict=True):
        for row in fmt.rows(dict(zip(keys, values, strict=True)), explode=explode):
            for k in out:
                out[k].append(row[k])
    return out
