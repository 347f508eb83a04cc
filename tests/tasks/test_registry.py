"""Registry look-ups, aliases, registration and Task validation errors."""

import dataclasses

import datasets
import pytest

from pipeline.core.tasks import base as task_base
from pipeline.core.tasks import get_task, list_tasks, mrqa, register_task


def test_names_are_lower_case_and_include_the_documented_ones():
    names = list_tasks()
    assert all(n == n.lower() for n in names)
    assert {"rte", "mnli", "boolq", "nq", "movie-sentiment"} <= set(names)


@pytest.mark.parametrize("alias, name", [("SST-2", "sst2"), ("sts-b", "stsb"), ("PAWS-Wiki", "paws"), ("wsc.fixed", "wsc"), ("RTE", "rte")])
def test_aliases(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_suggests_close_names():
    with pytest.raises(KeyError, match=r"unknown task 'rtee'; did you mean \['rte'"):
        get_task("rtee")


def test_register_task_refuses_duplicates_unless_overwrite():
    task = dataclasses.replace(get_task("rte"), name="rte-copy-for-test")
    register_task(task)
    try:
        assert get_task("rte-copy-for-test") is task
        with pytest.raises(ValueError, match="already registered"):
            register_task(task)
        register_task(task, overwrite=True)
        with pytest.raises(TypeError, match="expects a pipeline.core.tasks.Task"):
            register_task("rte")
    finally:
        from pipeline.core.tasks import _REGISTRY

        _REGISTRY.pop("rte-copy-for-test")


def test_with_label_strings_changes_targets_and_metrics():
    task = get_task("rte").with_label_strings(["yes", "no"])
    row = {"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0}
    assert task.format_row(row)[0]["target"] == "no"
    assert task.compute_metrics(["no", "1"], ["no", "yes"]) == {"accuracy": 50.0}
    with pytest.raises(ValueError, match="has 2 classes"):
        get_task("rte").with_label_strings(["yes"])
    with pytest.raises(ValueError, match="only classification tasks"):
        get_task("nq").with_label_strings(["a", "b"])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": "RTE"}, "lower-case"),
        ({"task_type": "ranking"}, "task_type='ranking'"),
        ({"metrics": ()}, "metrics is empty"),
        ({"metrics": ("squad_em",)}, "do not fit a classification task"),
        ({"label_strings": ("0",)}, "needs >= 2 label_strings"),
        ({"label_strings": ("a", "a")}, "must be distinct"),
        ({"hub_id": None, "loader": None}, "give hub_id"),
        ({"label_strings": ("a", "b", "c"), "metrics": ("f1",)}, "'f1' and 'mcc' are binary"),
    ],
)
def test_task_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_task("rte"), **changes)


def test_mrqa_loads_the_hub_dataset_and_keeps_one_subset(monkeypatch):
    def fake_load(hub_id, config, split):
        assert (hub_id, config) == ("mrqa-workshop/mrqa", None)
        rows = [{"subset": s, "question": "Q?", "context": f"{s} c", "answers": ["c"]} for s in ("SearchQA", "NewsQA", "SearchQA")]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(task_base.datasets, "load_dataset", fake_load)
    test = get_task("searchqa").get_split("test")
    assert test["source"] == ["question: Q ? context: SearchQA c"] * 2


def test_pad_punctuation_matches_t5():
    assert mrqa.pad_punctuation("It's 5.5%, ok?") == "It ' s 5 . 5 % , ok ?"
    assert mrqa.pad_punctuation("naïve café_x") == "naïve café_x"  # letters, marks and _ untouched


def test_format_number_rounds_half_to_even_like_t5():
    assert [task_base.format_number(v, 0.2) for v in (2.3, 0.5, 4.96, 0.0)] == ["2.4", "0.4", "5.0", "0.0"]
    assert task_base.format_number(3.14159, 0.05) == "3.15" and task_base.format_number(2.5, None) == "2.5"
    with pytest.raises(ValueError, match="round_to=0"):
        task_base.format_number(1.0, 0)


def test_record_explodes_only_training_rows():
    task = get_task("record").with_splits(validation_size=1)
    row = {"passage": "p", "query": "q @placeholder", "entities": ["A", "B"], "answers": ["A", "B"]}
    raw = {"train": datasets.Dataset.from_list([row, {**row, "answers": ["C", "D"]}]), "validation": datasets.Dataset.from_list([row])}
    splits = task.get_splits(raw)
    (kept_answers,) = {tuple(a) for a in splits["train"]["answers"]}  # the one row left in train
    assert len(kept_answers) == 2 and list(splits["train"]["target"]) == list(kept_answers)  # a row per answer
    assert len(splits["validation"]) == 1
    assert splits["test"]["target"] == ["A"] and splits["test"]["answers"] == [["A", "B"]]
    no_answer = {"train": datasets.Dataset.from_list([row, row, {**row, "answers": []}]), "validation": datasets.Dataset.from_list([row])}
    assert len(task.get_split("train", no_answer)) + len(task.get_split("validation", no_answer)) == 3  # unanswerable dropped
