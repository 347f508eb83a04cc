"""A null or non-string cell in an input column is refused, naming its row and column (issue 21, item 5).

`mlflow models serve` used to answer `{"predictions": ["positive"]}` for a `null` review: the custom-task
format turned None into "" and a registered task's formatter into "None". Now `ServingConfig.sources`
(`check_text`) refuses it, the pyfunc's `predict` turns that into MLflow's INVALID_PARAMETER_VALUE (HTTP 400
from the scoring server: tests/serving/test_models_serve.py) and jobs/predict.py into `error:` / exit 2.
Rows count from 0, in the request's order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adept import AdeptConfig, get_adept_model
from jobs.predict import main as predict_main
from pipeline.serving.config import InputError, ServingConfig

pytestmark = [pytest.mark.serving, pytest.mark.faults]

TEXTS = ["good great movie", "awful bad plot", "the film a acting"]


def config(**changes) -> ServingConfig:
    """The custom synthetic-sentiment task's serving config (as the registry would log it, no fingerprint)."""
    fields = dict(backbone="", task="synthetic-sentiment", task_type="classification", eval_mode="rank",
                  label_strings=["negative", "positive"], input_columns=[["sentence", "sentence"]],
                  custom_format=True, max_source_length=32, max_target_length=4, max_new_tokens=4, batch_size=4,
                  device="cpu")
    return ServingConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_backbone):
    out = tmp_path_factory.mktemp("null-inputs") / "adapter"
    torch.manual_seed(0)
    model = get_adept_model(AutoModelForCausalLM.from_pretrained(tiny_backbone),
                            AdeptConfig(method="adept", num_virtual_tokens=4, ffn_hidden_size=8),
                            AutoTokenizer.from_pretrained(tiny_backbone))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model(adapter, tiny_backbone):
    from pipeline.serving.pyfunc import AdeptPyfunc

    return AdeptPyfunc().load(config(backbone=str(tiny_backbone)), adapter)


def refused_by_predict(model, frame) -> str:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        model.predict(None, frame)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and err.value.get_http_status_code() == 400
    return err.value.message


@pytest.mark.parametrize(("value", "shown"), [
    (None, "null"),  # a JSON null in dataframe_records
    (float("nan"), "null"),  # an empty CSV cell; MLflow's schema enforcement also turns None into NaN
    (pd.NA, "null"),
    (5, "5 (int, not a string)"),
    (2.5, "2.5 (float, not a string)"),
    (True, "True (bool, not a string)"),
    (["a list"], "['a list'] (list, not a string)"),
])
def test_predict_refuses_a_bad_cell_naming_row_and_column(model, value, shown):
    frame = pd.DataFrame({"sentence": pd.Series([TEXTS[0], value, TEXTS[2]], dtype=object)})
    message = refused_by_predict(model, frame)
    assert message.startswith(f"input row 1, column 'sentence': {shown}: every row needs a string in ['sentence']")
    assert "rows counted from 0" in message


def test_string_dtype_nulls_and_source_column(model):
    frame = pd.DataFrame({"sentence": pd.array([None, TEXTS[1]], dtype="string")})  # what MLflow hands predict
    assert refused_by_predict(model, frame).startswith("input row 0, column 'sentence': null")
    sources = pd.DataFrame({"source": [f"sentence: {TEXTS[0]}", np.nan]})  # the pre-formatted form too
    assert refused_by_predict(model, sources).startswith("input row 1, column 'source': null")


def test_many_bad_cells_are_counted(model):
    frame = pd.DataFrame({"sentence": [None] * 8 + [TEXTS[0]]})
    message = refused_by_predict(model, frame)
    assert "row 0, column 'sentence': null; row 1," in message and "row 4, column 'sentence': null (and 3 more)" in message
    assert "row 5" not in message


def test_strings_still_predict_including_an_empty_one(model):
    predictions = model.predict(None, pd.DataFrame({"sentence": [*TEXTS, ""]}))
    assert len(predictions) == 4 and set(predictions) <= {"negative", "positive"}


def test_registered_task_format_is_checked_too():
    """A registry task's formatter would have read None as the text "None": every input column is checked."""
    rte = config(task="rte", custom_format=False, input_columns=[["sentence1", "sentence1"], ["sentence2", "sentence2"]],
                 label_strings=["entailment", "not_entailment"])
    with pytest.raises(InputError, match=r"input row 0, column 'sentence2': null: every row needs a string in "
                                         r"\['sentence1', 'sentence2'\]"):
        rte.sources(pd.DataFrame({"sentence1": ["a", "b"], "sentence2": [None, "c"]}))
    assert len(rte.sources(pd.DataFrame({"sentence1": ["a"], "sentence2": ["b"]}))) == 1


def predict_file(args_base, path, capsys):
    capsys.readouterr()
    code = predict_main([*args_base, "--input", str(path)])
    return code, capsys.readouterr()


@pytest.fixture
def predict_args(adapter, tiny_backbone, synthetic_task):
    return ["--model", str(adapter), "--task", str(synthetic_task), "--backbone", str(tiny_backbone)]


def test_predict_job_refuses_an_empty_csv_cell_and_a_jsonl_null(predict_args, tmp_path, capsys):
    csv = tmp_path / "in.csv"
    csv.write_text(f"sentence\n{TEXTS[0]}\n\"\"\n{TEXTS[1]}\n")  # row 1: an empty cell
    code, out = predict_file(predict_args, csv, capsys)
    assert code == 2 and out.err.startswith("error: input row 1, column 'sentence': null"), out.err
    assert "Traceback" not in out.err

    jsonl = tmp_path / "in.jsonl"
    rows = [{"sentence": TEXTS[0]}, {"sentence": TEXTS[1]}, {"sentence": None}, {"sentence": 7}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = predict_file(predict_args, jsonl, capsys)
    assert code == 2 and out.err.startswith("error: input row 2, column 'sentence': null; "
                                            "row 3, column 'sentence': 7 (int, not a string)"), out.err


def test_predict_job_reads_csv_cells_as_text(predict_args, tmp_path, capsys):
    """CSV has no types: "5" is a review and "NA" / "None" are words, not nulls (pandas' defaults say otherwise)."""
    csv, out_path = tmp_path / "in.csv", tmp_path / "out.jsonl"
    csv.write_text("sentence\n5\nNA\nNone\n")
    code, out = predict_file([*predict_args, "--output", str(out_path)], csv, capsys)
    assert code == 0, out.err
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["sentence"] for r in rows] == ["5", "NA", "None"] and all(r["prediction"] for r in rows)
