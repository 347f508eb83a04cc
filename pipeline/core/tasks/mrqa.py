"""MRQA 2019 shared task (4 in-domain subsets) from ``mrqa-workshop/mrqa``, filtered on ``subset``.

Extractive QA as generation: source ``question: … context: …`` after T5's ``pad_punctuation``
(spaces around every character that is not a letter, digit, mark, underscore or space), target =
the first gold answer (the tokenizer's ``max_target_length`` truncates it; DePT used 20 tokens),
scored with SQuAD EM / F1 as the max over all gold answers. Large-dataset split protocol:
1,000 shuffled train rows are validation, the official validation split is the test set.
"""

from __future__ import annotations

import regex

from pipeline.core.tasks.base import SplitSpec, Task, join_fields

HUB = "mrqa-workshop/mrqa"
SUBSETS = {"nq": "NaturalQuestionsShort", "hotpotqa": "HotpotQA", "searchqa": "SearchQA", "newsqa": "NewsQA"}
_PUNCT = regex.compile(r"([^_\s\p{N}\p{L}\p{M}])")


def pad_punctuation(text: str) -> str:
    """T5 ``pad_punctuation``: ``"it's 5."`` → ``"it ' s 5 ."``."""
    return " ".join(_PUNCT.sub(r" \1 ", str(text)).split())


def _format(row):
    source = join_fields(("question", pad_punctuation(row["question"])), ("context", pad_punctuation(row["context"])))
    return {"source": source, "answers": [pad_punctuation(a) for a in row["answers"]]}


class SubsetFilter:
    """Keep the rows of one MRQA ``subset`` (a class, so `datasets` can hash it for its cache)."""

    def __init__(self, subset: str) -> None:
        self.subset = subset

    def __call__(self, data):
        return data.filter(_is_subset, input_columns="subset", fn_kwargs={"subset": self.subset},
                           desc=f"MRQA {self.subset}")


def _is_subset(value: str, subset: str) -> bool:
    return value == subset  # a module-level function: `datasets` hashes it without disassembling bytecode


TASKS = [
    Task(
        name=name, task_type="generation", formatter=_format, metrics=("squad_em", "squad_f1"), hub_id=HUB,
        splits=SplitSpec(protocol="large"), raw_filter=SubsetFilter(subset), description=f"MRQA {subset}",
    )
    for name, subset in SUBSETS.items()
]
