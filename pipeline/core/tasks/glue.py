"""GLUE (8 tasks) from ``nyu-mll/glue``, formatted as in DePT ``src/tasks.py`` (no task prefix).

Targets are the label ids as strings ("0", "1", "2"); use ``Task.with_label_strings`` for word
verbalizers. STS-B targets are rounded to the nearest 0.2 (T5), not 0.1 (the reference's bug).
"""

from __future__ import annotations

from pipeline.core.tasks.base import SplitSpec, Task, fields_formatter, format_number, join_fields

HUB = "nyu-mll/glue"
BINARY = ("0", "1")
SMALL = SplitSpec(protocol="small")
LARGE = SplitSpec(protocol="large")
STSB_LABELS = tuple(format_number(i * 0.2, 0.2) for i in range(26))  # "0.0", "0.2", …, "5.0"


def _stsb(row):
    return {"source": join_fields(("sentence1", row["sentence1"]), ("sentence2", row["sentence2"])), "value": row["label"]}


TASKS = [
    Task(
        name="mnli", task_type="classification", formatter=fields_formatter("premise", "hypothesis"),
        metrics=("accuracy",), label_strings=("0", "1", "2"), hub_id=HUB, hub_config="mnli",
        splits=SplitSpec(protocol="official", validation="validation_mismatched", test="validation_matched"),
        description="0 entailment, 1 neutral, 2 contradiction",
    ),
    Task(
        name="qqp", task_type="classification", formatter=fields_formatter("question1", "question2"),
        metrics=("accuracy", "f1"), label_strings=BINARY, hub_id=HUB, hub_config="qqp", splits=LARGE,
    ),
    Task(
        name="qnli", task_type="classification", formatter=fields_formatter("question", "sentence"),
        metrics=("accuracy",), label_strings=BINARY, hub_id=HUB, hub_config="qnli", splits=LARGE,
    ),
    Task(
        name="sst2", task_type="classification", formatter=fields_formatter("sentence"),
        metrics=("accuracy",), label_strings=BINARY, hub_id=HUB, hub_config="sst2", splits=LARGE,
        description="0 negative, 1 positive",
    ),
    Task(
        name="stsb", task_type="regression", formatter=_stsb, metrics=("pearson", "spearman"),
        label_strings=STSB_LABELS, hub_id=HUB, hub_config="stsb", splits=SMALL, round_to=0.2,
    ),
    Task(
        name="mrpc", task_type="classification", formatter=fields_formatter("sentence1", "sentence2"),
        metrics=("accuracy", "f1"), label_strings=BINARY, hub_id=HUB, hub_config="mrpc", splits=SMALL,
    ),
    Task(
        name="rte", task_type="classification", formatter=fields_formatter("sentence1", "sentence2"),
        metrics=("accuracy",), label_strings=BINARY, hub_id=HUB, hub_config="rte", splits=SMALL,
        description="0 entailment, 1 not entailment",
    ),
    Task(
        name="cola", task_type="classification", formatter=fields_formatter("sentence"),
        metrics=("mcc",), label_strings=BINARY, hub_id=HUB, hub_config="cola", splits=SMALL,
    ),
]
