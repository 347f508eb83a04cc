"""Custom tasks from local CSV / JSONL / Parquet files: round trips and every bad-input error."""

import json

import pandas as pd
import pytest

from pipeline.core.tasks import CustomTaskSpec, get_task, load_custom_task


def write_csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


NLI = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 2} for i in range(12)]


def spec(tmp_path, **changes):
    base = {"name": "My-NLI", "train": write_csv(tmp_path / "train.csv", NLI), "input_columns": ["premise", "hypothesis"],
            "label_column": "label", "verbalizer": {0: "no", 1: "yes"}}
    return {**base, **changes}


def test_csv_train_only_uses_holdout_and_verbalizer(tmp_path):
    task = load_custom_task(spec(tmp_path))
    assert (task.name, task.splits.protocol, task.label_strings, task.metrics) == ("my-nli", "holdout", ("no", "yes"), ("accuracy",))
    splits = task.get_splits()
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [10, 1, 1]  # v = max(1, 12 // 10)
    by_source = {r["source"]: r["target"] for s in splits.values() for r in s}
    assert by_source["premise: p3 hypothesis: h3"] == "yes" and by_source["premise: p4 hypothesis: h4"] == "no"
    assert len(by_source) == 12


def test_jsonl_train_and_validation_round_trip_with_shown_names(tmp_path):
    rows = [{"q": f"question {i}", "ctx": "c", "y": "pos" if i % 3 else "neg"} for i in range(8)]
    task = load_custom_task({
        "name": "qa-cls", "train": write_jsonl(tmp_path / "train.jsonl", rows), "validation": write_jsonl(tmp_path / "dev.jsonl", rows[:4]),
        "input_columns": {"q": "question", "ctx": "context"}, "label_column": "y", "metrics": ["accuracy", "f1"],
    })
    assert task.splits.protocol == "small" and task.label_strings == ("neg", "pos")  # sorted label values
    splits = task.get_splits()
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (8, 2, 2)
    assert splits["train"][1] == {"source": "question: question 1 context: c", "target": "pos", "answers": ["pos"], "group": -1}
    assert task.compute_metrics(["pos", "neg"], ["pos", "pos"]) == pytest.approx({"accuracy": 50.0, "f1": 200 / 3})


def test_parquet_three_files_regression_and_yaml_path(tmp_path):
    rows = [{"a": f"x{i}", "score": i * 0.37} for i in range(5)]
    for name in ("train", "dev", "test"):
        pd.DataFrame(rows).to_parquet(tmp_path / f"{name}.parquet")
    (tmp_path / "task.yaml").write_text(
        "name: sim\ntrain: train.parquet\nvalidation: dev.parquet\ntest: test.parquet\n"
        "input_columns: [a]\nlabel_column: score\ntask_type: regression\nround_to: 0.2\n"
    )
    task = get_task(str(tmp_path / "task.yaml"))  # relative paths resolve next to the YAML
    assert task.splits.protocol == "official" and task.metrics == ("pearson", "spearman")
    test = task.get_split("test")
    assert list(test["target"]) == ["0.0", "0.4", "0.8", "1.2", "1.4"]  # 0.37·i to the nearest 0.2
    assert task.compute_metrics(list(test["target"]), list(test["target"])) == pytest.approx({"pearson": 100.0, "spearman": 100.0})


def test_generation_task_with_list_answers(tmp_path):
    rows = [{"question": "capital of France", "answers": ["Paris", "paris city"]}, {"question": "2+2", "answers": ["4"]}] * 2
    task = load_custom_task({"name": "qa", "train": write_jsonl(tmp_path / "t.jsonl", rows), "validation": write_jsonl(tmp_path / "v.jsonl", rows),
                             "input_columns": ["question"], "label_column": "answers", "task_type": "generation"})
    val = task.get_split("train")
    assert val[0]["target"] == "Paris" and val[0]["answers"] == ["Paris", "paris city"]
    assert task.compute_metrics(["paris city", "five"], [["Paris", "paris city"], ["4"]]) == {"squad_em": 50.0, "squad_f1": 50.0}


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"validation file '.*nope.csv' does not exist; fix the 'validation' path"):
        load_custom_task(spec(tmp_path, validation=str(tmp_path / "nope.csv")))
    with pytest.raises(FileNotFoundError, match="custom task spec .* does not exist"):
        get_task(str(tmp_path / "missing.yaml"))


def test_missing_column(tmp_path):
    with pytest.raises(ValueError, match=r"train file .*: missing column\(s\) \['premis'\]; the file has \['premise', 'hypothesis', 'label'\]"):
        load_custom_task(spec(tmp_path, input_columns=["premis", "hypothesis"]))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['gold'\]"):
        load_custom_task(spec(tmp_path, label_column="gold", verbalizer=None))


def test_unknown_label_value(tmp_path):
    bad = write_csv(tmp_path / "dev.csv", [{"premise": "p", "hypothesis": "h", "label": 0}, {"premise": "p", "hypothesis": "h", "label": 2}])
    with pytest.raises(ValueError, match=r"validation file .*, row 1: label value 2 is not in the label set \['0', '1'\]; add it to 'verbalizer'"):
        load_custom_task(spec(tmp_path, validation=bad))
    with pytest.raises(ValueError, match="label value 2 is not in the label set"):  # no verbalizer: set comes from train
        load_custom_task(spec(tmp_path, validation=bad, verbalizer=None))


def test_empty_split(tmp_path):
    (tmp_path / "empty.csv").write_text("premise,hypothesis,label\n")
    (tmp_path / "empty.jsonl").write_text("\n")
    for name in ("empty.csv", "empty.jsonl"):
        with pytest.raises(ValueError, match="test file .*: the split is empty"):
            load_custom_task(spec(tmp_path, validation=str(tmp_path / "train.csv"), test=str(tmp_path / name)))


def test_non_numeric_regression_target(tmp_path):
    rows = [{"a": "x", "score": "1.5"}, {"a": "y", "score": "high"}]
    with pytest.raises(ValueError, match=r"train file .*, row 1: regression target 'high' is not a finite number"):
        load_custom_task({"name": "r", "train": write_jsonl(tmp_path / "r.jsonl", rows), "input_columns": ["a"],
                          "label_column": "score", "task_type": "regression"})


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"task_type": "ranking"}, ValueError, "task_type='ranking'"),
        ({"input_columns": []}, ValueError, "input_columns is empty"),
        ({"verbalizer": {0: "no"}}, ValueError, "verbalizer needs at least 2"),
        ({"split_protocol": "large"}, ValueError, "split_protocol='large' needs files for \\['train', 'validation'\\]"),
        ({"metrics": ["squad_em"]}, ValueError, "do not fit a classification task"),
        ({"colour": "red"}, ValueError, r"unknown key\(s\) \['colour'\]"),
        ({"verbalizer": {0: False, 1: True}}, ValueError, "verbalizer value for 0 is False \\(bool\\), not a string; quote it"),
    ],
)
def test_spec_errors(tmp_path, changes, error, message):
    with pytest.raises(error, match=message):
        load_custom_task(spec(tmp_path, **changes))


def test_yaml_unquoted_yes_no_is_caught_and_single_column_accepted(tmp_path):
    write_csv(tmp_path / "train.csv", NLI)
    (tmp_path / "t.yaml").write_text("name: t\ntrain: train.csv\ninput_columns: premise\nlabel_column: label\nverbalizer: {0: no, 1: yes}\n")
    with pytest.raises(ValueError, match="verbalizer value for 0 is False"):
        get_task(str(tmp_path / "t.yaml"))
    (tmp_path / "t.yaml").write_text("name: t\ntrain: train.csv\ninput_columns: premise\nlabel_column: label\nverbalizer: {0: 'no', 1: 'yes'}\n")
    assert get_task(str(tmp_path / "t.yaml")).format_row(NLI[1]) == [{"source": "premise: p1", "target": "yes", "answers": ["yes"], "group": -1}]


def test_wrong_suffix_and_required_keys(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="must end in one of"):
        load_custom_task(spec(tmp_path, train=str(tmp_path / "data.txt")))
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['label_column'\]"):
        CustomTaskSpec.from_dict({"name": "x", "train": "a.csv", "input_columns": ["a"]})
