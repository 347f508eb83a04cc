"""WinoGrande, Yelp-2, SciTail, PAWS-Wiki and MBPP.

* WinoGrande (``allenai/winogrande``, ``winogrande_xl``): ``sentence: … option0: <option1> option1:
  <option2>``; target = answer - 1. The reference code shows ``option1`` twice; this shows both.
* Yelp-2 (``fancyzhx/yelp_polarity``): ``sentence: …``; large protocol with the official test
  split as test; train capped at the first 100,000 rows after the split (as the reference).
* SciTail (``allenai/scitail``, ``snli_format``): ``premise: … hypothesis: …``; "0" entailment,
  "1" neutral; small protocol (the official test split is not used, as in the reference).
* PAWS-Wiki (``google-research-datasets/paws``, ``labeled_final``): official splits.
* MBPP (``google-research-datasets/mbpp``, ``full``): ``text: <problem> tests: <asserts>`` → code,
  official train/validation/test. Its default metric is only ``exact_match``. pass@1 by execution
  (``pass_at_1``: the prediction followed by the source's asserts, run by `pipeline.core.code_eval`) is
  an explicit opt-in, ``execute_code: true`` (`Task.with_code_execution`), for disposable machines: the
  sandbox (PID and network namespaces, an unprivileged user, rlimits) does not isolate the file system,
  so generated code can still read world-readable files and write to world-writable ones. The tests are
  the ones the model sees in its source (``test_setup_code`` is not in the source, so it is not run).
"""

from __future__ import annotations

import re

from pipeline.core.tasks.base import SplitSpec, Task, fields_formatter, join_fields

BINARY = ("0", "1")
SCITAIL_LABELS = {"entailment": 0, "neutral": 1}


def _winogrande(row):
    source = join_fields(("sentence", row["sentence"]), ("option0", row["option1"]), ("option1", row["option2"]))
    return {"source": source, "label": int(row["answer"]) - 1}


def _yelp(row):
    return {"source": join_fields(("sentence", row["text"])), "label": row["label"]}


def _scitail(row):
    gold = row["gold_label"]
    if gold not in SCITAIL_LABELS:
        raise ValueError(f"scitail: gold_label {gold!r} is not one of {sorted(SCITAIL_LABELS)}")
    return {"source": join_fields(("premise", row["sentence1"]), ("hypothesis", row["sentence2"])), "label": SCITAIL_LABELS[gold]}


def _mbpp(row):
    return {"source": join_fields(("text", row["text"]), ("tests", " ".join(row["test_list"]))), "answers": [row["code"]]}


def _mbpp_tests(source: str) -> list[str]:
    """The asserts `_mbpp` joined into ``source``, one statement each: what ``pass_at_1`` runs.

    The source ends ``tests: assert … assert …``: split before every ``assert``, and join a piece to the
    next while it does not compile (an ``assert`` inside a string literal is no statement boundary).
    """
    start = re.search(r"(?:^| )tests: (?=assert\b)", source)
    pieces = re.split(r" (?=assert\b)", source[start.end():]) if start else []
    statements, pending = [], ""
    for piece in pieces:
        pending = f"{pending} {piece}" if pending else piece
        if _compiles(pending):
            statements.append(pending)
            pending = ""
    return statements + [pending] if pending else statements  # what never compiles fails in the sandbox


def _compiles(code: str) -> bool:
    try:
        compile(code, "<mbpp test>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


TASKS = [
    Task(
        name="winogrande", task_type="classification", formatter=_winogrande, metrics=("accuracy",),
        label_strings=BINARY, hub_id="allenai/winogrande", hub_config="winogrande_xl",
        splits=SplitSpec(protocol="large"),
    ),
    Task(
        name="yelp", task_type="classification", formatter=_yelp, metrics=("accuracy",), label_strings=BINARY,
        hub_id="fancyzhx/yelp_polarity", splits=SplitSpec(protocol="large", validation="test", max_train=100_000),
        description="Yelp-2 polarity: 0 negative, 1 positive",
    ),
    Task(
        name="scitail", task_type="classification", formatter=_scitail, metrics=("accuracy",),
        label_strings=BINARY, hub_id="allenai/scitail", hub_config="snli_format", splits=SplitSpec(protocol="small"),
    ),
    Task(
        name="paws", task_type="classification", formatter=fields_formatter("sentence1", "sentence2"),
        metrics=("accuracy",), label_strings=BINARY, hub_id="google-research-datasets/paws",
        hub_config="labeled_final", splits=SplitSpec(protocol="official"),
    ),
    Task(
        name="mbpp", task_type="generation", formatter=_mbpp, metrics=("exact_match",),
        hub_id="google-research-datasets/mbpp", hub_config="full", splits=SplitSpec(protocol="official"),
        max_new_tokens=256, description="code generation; pass@1 is opt-in (execute_code: true)",
        code_tests=_mbpp_tests,
    ),
]
