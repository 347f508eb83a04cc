"""Split protocols: sizes, exact indices (torch.randperm seeded 42, as the reference), determinism."""

import datasets
import pytest
import torch

from pipeline.core.tasks import base as task_base
from pipeline.core.tasks import get_task


def numbered(n, prefix="s"):
    return datasets.Dataset.from_list([{"sentence1": f"{prefix}{i}", "sentence2": "x", "label": i % 2, "idx": i} for i in range(n)])


def ids(split):
    return [int(s.split()[1][1:]) for s in split["source"]]  # "sentence1: v7 sentence2: x" → 7


def randperm(n, seed=42):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def test_small_protocol_halves_shuffled_validation():
    raw = {"train": numbered(10, "t"), "validation": numbered(9, "v")}
    splits = get_task("rte").get_splits(raw)
    perm = randperm(9)
    assert ids(splits["validation"]) == perm[:4] and ids(splits["test"]) == perm[4:]  # ⌊9/2⌋ = 4
    assert ids(splits["train"]) == list(range(10))  # official train, untouched
    again = get_task("rte").get_splits(raw)
    assert ids(again["test"]) == ids(splits["test"])
    other_seed = get_task("rte").with_splits(seed=7).get_splits(raw)
    assert ids(other_seed["validation"]) == randperm(9, 7)[:4] != perm[:4]


def test_large_protocol_takes_1000_train_rows_for_validation():
    raw = {"train": numbered(1010, "t"), "validation": numbered(5, "v")}
    splits = get_task("qnli").get_splits({k: v.rename_columns({"sentence1": "question", "sentence2": "sentence"}) for k, v in raw.items()})
    perm = randperm(1010)
    as_ids = [int(s.split()[1][1:]) for s in splits["validation"]["source"]]
    assert len(splits["validation"]) == 1000 and as_ids == perm[:1000]
    assert [int(s.split()[1][1:]) for s in splits["train"]["source"]] == perm[1000:]
    assert len(splits["test"]) == 5  # the official validation split


def test_yelp_caps_train_and_tests_on_official_test():
    task = get_task("yelp-2")
    assert task.name == "yelp" and task.splits.max_train == 100_000 and task.splits.validation == "test"
    small = task.with_splits(validation_size=3, max_train=4)
    raw = {"train": datasets.Dataset.from_list([{"text": f"r{i}", "label": i % 2} for i in range(10)]),
           "test": datasets.Dataset.from_list([{"text": "t", "label": 0}] * 2)}
    splits = small.get_splits(raw)
    perm = randperm(10)
    assert [s.split()[1] for s in splits["train"]["source"]] == [f"r{i}" for i in perm[3:7]]  # first 4 after the split
    assert (len(splits["validation"]), len(splits["test"])) == (3, 2)


def test_mnli_uses_mismatched_for_validation_and_matched_for_test(monkeypatch):
    calls = []

    def fake_load(hub_id, config, split):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list([{"premise": split, "hypothesis": "h", "label": 0, "idx": 0}])

    monkeypatch.setattr(task_base.datasets, "load_dataset", fake_load)
    splits = get_task("MNLI").get_splits()
    assert calls == [("nyu-mll/glue", "mnli", "train"), ("nyu-mll/glue", "mnli", "validation_mismatched"), ("nyu-mll/glue", "mnli", "validation_matched")]
    assert splits["validation"][0]["source"] == "premise: validation_mismatched hypothesis: h"
    assert splits["test"][0]["source"] == "premise: validation_matched hypothesis: h"


def test_holdout_protocol_sizes_disjoint_and_complete():
    task = get_task("movie-sentiment")
    rows = [{"id": str(i), "rating": 1.0, "text": f"w{i}", "label": 1} for i in range(35)]
    splits = task.get_splits({"train": datasets.Dataset.from_list(rows)})
    # v = min(1000, max(1, 35 // 10)) = 3
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [29, 3, 3]
    seen = [s for split in splits.values() for s in split["source"]]
    assert sorted(seen) == sorted(f"sentence: w{i}" for i in range(35))
    assert splits["validation"]["source"] == [f"sentence: w{i}" for i in randperm(35)[:3]]


def test_max_examples_and_empty_split_errors():
    raw = {"train": numbered(10), "validation": numbered(6)}
    assert len(get_task("rte").get_split("test", raw, max_examples=2)) == 2
    with pytest.raises(ValueError, match="the validation split is empty"):
        get_task("rte").get_split("validation", {"train": numbered(1), "validation": numbered(1)})
    with pytest.raises(ValueError, match="split='dev'"):
        get_task("rte").get_split("dev", raw)
    with pytest.raises(KeyError, match="'validation' is needed"):
        get_task("rte").get_split("test", {"train": numbered(3)})
    with pytest.raises(ValueError, match="not more than validation_size=1000"):
        get_task("qqp").get_split("validation", {"train": numbered(5).rename_columns({"sentence1": "question1", "sentence2": "question2"})})


def test_unlabelled_rows_are_rejected_with_a_hint():
    with pytest.raises(ValueError, match="outside 0..1 .*unlabelled official test"):
        get_task("rte").format_row({"sentence1": "a", "sentence2": "b", "label": -1, "idx": 0})


def test_split_spec_validation():
    with pytest.raises(ValueError, match="SplitSpec.protocol='tiny'"):
        task_base.SplitSpec(protocol="tiny")
    with pytest.raises(ValueError, match="max_train=0"):
        task_base.SplitSpec(max_train=0)
