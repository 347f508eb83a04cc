"""SuperGLUE (6 tasks) from ``aps/super_glue``, formatted as in DePT ``src/tasks.py`` / T5.

* MultiRC: HTML markup stripped; ``group`` = the question, for the grouped exact match.
* WSC (``wsc.fixed``): the noun span is marked ``* noun *`` and the pronoun ``# pronoun #``.
* ReCoRD: ``record query: … entities: a, b passage: …``; a training row per gold answer,
  one evaluation row per query scored against all gold answers (max over golds).
"""

from __future__ import annotations

import re

from pipeline.core.tasks.base import SplitSpec, Task, fields_formatter, join_fields

HUB = "aps/super_glue"
BINARY = ("0", "1")
SMALL = SplitSpec(protocol="small")


def remove_markup(text: str) -> str:
    """T5's MultiRC cleaning: ``<br>`` → space, ``<b>``/``</b>`` dropped."""
    return re.sub(r"<(/)?b>", "", re.sub(r"<br>", " ", text))


def _multirc(row):
    source = join_fields(
        ("question", remove_markup(row["question"])),
        ("answer", remove_markup(row["answer"])),
        ("paragraph", remove_markup(row["paragraph"])),
    )
    idx = row["idx"]
    return {"source": source, "label": row["label"], "group": int(idx["paragraph"]) * 1_000_000 + int(idx["question"])}


def mark_span(text: str, span: str, word_index: int, mark: str) -> str:
    """Surround ``span`` starting at whitespace-word ``word_index`` with ``mark`` (T5 ``_mark_span``)."""
    pattern = r"^((?:\S+\s){" + str(int(word_index)) + "})(" + re.escape(span) + ")"
    return re.sub(pattern, lambda m: f"{m.group(1)}{mark} {m.group(2)} {mark}", text, count=1)


def _wsc(row):
    text = mark_span(row["text"], row["span1_text"], row["span1_index"], "*")
    span2_index = row["span2_index"] + 2 * int(row["span1_index"] < row["span2_index"])  # the two added "*"
    text = mark_span(text, row["span2_text"], span2_index, "#")
    return {"source": join_fields(("text", text)), "label": row["label"]}


def clean_record_passage(passage: str) -> str:
    passage = re.sub(r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ", passage)
    return re.sub(r"\n@highlight\n", ". ", passage)


def _record(row):
    source = (
        f"record query: {row['query']} entities: {', '.join(row['entities'])} "
        f"passage: {clean_record_passage(row['passage'])}"
    )
    return {"source": source, "answers": list(row["answers"])}


def _has_answers(data):
    """Drop ReCoRD rows without a gold answer (none in train/validation; the official test has no labels)."""
    return data.filter(lambda answers: len(answers) > 0, input_columns="answers")


TASKS = [
    Task(
        name="multirc", task_type="classification", formatter=_multirc, metrics=("f1", "multirc_em"),
        label_strings=BINARY, hub_id=HUB, hub_config="multirc", splits=SMALL,
    ),
    Task(
        name="boolq", task_type="classification", formatter=fields_formatter("question", "passage"),
        metrics=("accuracy",), label_strings=BINARY, hub_id=HUB, hub_config="boolq", splits=SMALL,
    ),
    Task(
        name="wic", task_type="classification", formatter=fields_formatter("sentence1", "sentence2", "word"),
        metrics=("accuracy",), label_strings=BINARY, hub_id=HUB, hub_config="wic", splits=SMALL,
    ),
    Task(
        name="wsc", task_type="classification", formatter=_wsc, metrics=("accuracy",),
        label_strings=BINARY, hub_id=HUB, hub_config="wsc.fixed", splits=SMALL,
    ),
    Task(
        name="cb", task_type="classification", formatter=fields_formatter("premise", "hypothesis"),
        metrics=("macro_f1", "accuracy"), label_strings=("0", "1", "2"), hub_id=HUB, hub_config="cb",
        splits=SMALL, description="0 entailment, 1 contradiction, 2 neutral",
    ),
    Task(
        name="record", task_type="generation", formatter=_record, metrics=("squad_em", "squad_f1"),
        hub_id=HUB, hub_config="record", splits=SplitSpec(protocol="large"), explode_train=True,
        raw_filter=_has_answers,
    ),
]
