"""`mlflow models serve -m models:/<name>@champion --env-manager local` end to end (issue 13): the scoring server
answers dataframe_split and dataframe_records with jobs/predict.py's predictions, a wrong column is HTTP 400
naming the missing and the expected columns, so is a null or non-string cell (naming its row and column), an
empty request is `{"predictions": []}`; the model version carries a signature with the task's columns and an
input example. The server binds 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow_server import free_port
from registry_helpers import fake_sweep, make_store

from jobs.predict import main as predict_main
from jobs.register_best import main as register_main

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # starts `mlflow models serve` (~20-40 s to /ping)

NAME = "adept-synthetic-sentiment"
TEXTS = ["good great movie", "awful bad plot", "the film a acting", "great acting", "bad movie the"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory, synthetic_task, tiny_backbone):
    root = tmp_path_factory.mktemp("models-serve")
    store = make_store(root, synthetic_task, tiny_backbone)
    fake_sweep(store, "sweep", 75.0)
    assert register_main(["--mlflow-uri", store["uri"], "--sweep", "sweep"]) == 0
    return store


@pytest.fixture(scope="module")
def server(registered):
    """The scoring server in its own session (uvicorn is its child): the whole session is killed at the end."""
    root, uri, port = registered["root"], registered["uri"], free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    env.pop("MLFLOW_PYFUNC_INFERENCE_CONFIG", None)
    log = root / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
                                 "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                if urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow models serve did not answer /ping (exit {proc.poll()}):\n"
                                   + log.read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue


def invoke(url: str, body) -> tuple[int, dict]:
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_served_predictions_equal_predict_py(server, registered, tmp_path):
    inputs, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    pd.DataFrame({"sentence": TEXTS}).to_csv(inputs, index=False)
    assert predict_main(["--model", f"models:/{NAME}@champion", "--mlflow-uri", registered["uri"],
                         "--input", str(inputs), "--output", str(out)]) == 0
    expected = [json.loads(line)["prediction"] for line in out.read_text().splitlines()]
    assert set(expected) == {"negative", "positive"}

    split = {"dataframe_split": {"columns": ["sentence"], "data": [[t] for t in TEXTS]}}
    records = {"dataframe_records": [{"sentence": t} for t in TEXTS]}
    sources = {"dataframe_records": [{"source": f"sentence: {t}"} for t in TEXTS]}
    for body in (split, records, sources):
        assert invoke(server, body) == (200, {"predictions": expected})


def test_wrong_column_is_400_naming_missing_and_expected(server):
    for body in ({"dataframe_records": [{"text": TEXTS[0]}]},  # MLflow drops the unknown column first
                 {"dataframe_split": {"columns": ["text", "other"], "data": [[TEXTS[0], "x"]]}}):
        status, answer = invoke(server, body)
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer
        assert "input is missing column(s) ['sentence']; expected ['sentence']" in answer["message"], answer
    status, answer = invoke(server, {"dataframe_records": [{"text": TEXTS[0]}]})
    assert "got ['text'] (['text'] dropped by MLflow: not in the model's signature)" in answer["message"]
    status, answer = invoke(server, "not json")  # MLflow's own 400s keep their shape
    assert status == 400 and answer["error_code"] == "BAD_REQUEST"


@pytest.mark.faults
def test_null_or_non_string_cell_is_400_naming_row_and_column(server):
    """It used to answer {"predictions": ["positive"]} for a null review (issue 21)."""
    records = {"dataframe_records": [{"sentence": TEXTS[0]}, {"sentence": None}]}
    split = {"dataframe_split": {"columns": ["sentence"], "data": [[TEXTS[0]], [TEXTS[1]], [None]]}}
    mixed = {"dataframe_records": [{"sentence": TEXTS[0]}, {"sentence": 5}]}
    for body, cell in ((records, "row 1, column 'sentence': null"), (split, "row 2, column 'sentence': null"),
                       (mixed, "row 1, column 'sentence': 5 (int, not a string)")):
        status, answer = invoke(server, body)
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", answer
        assert f"input {cell}: every row needs a string in ['sentence']" in answer["message"], answer
    status, answer = invoke(server, {"dataframe_records": [{"sentence": 5}]})  # MLflow's own type check
    assert status == 400 and "sentence" in answer["message"], answer


def test_empty_request_is_an_empty_answer(server):
    assert invoke(server, {"dataframe_records": []}) == (200, {"predictions": []})
    assert invoke(server, {"dataframe_split": {"columns": ["sentence"], "data": []}}) == (200, {"predictions": []})


def test_version_carries_signature_and_input_example(registered, tmp_path):
    client = MlflowClient(registered["uri"], registry_uri=registered["uri"])
    version = client.get_model_version_by_alias(NAME, "champion")
    mlflow.set_tracking_uri(registered["uri"])
    mlflow.set_registry_uri(registered["uri"])
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version.version}", dst_path=str(tmp_path)))
    serving = json.loads((local / "serving_input_example.json").read_text())
    assert serving["dataframe_split"]["columns"] == ["sentence"] and len(serving["dataframe_split"]["data"]) == 2
    assert json.loads((local / "input_example.json").read_text())["columns"] == ["sentence"]
    info = mlflow.models.get_model_info(f"models:/{NAME}/{version.version}")
    inputs = {c.name: c for c in info.signature.inputs.inputs}
    assert list(inputs) == ["sentence", "source"] and not any(c.required for c in inputs.values())
    assert [c.name for c in info.signature.outputs.inputs] == ["prediction"]
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version.version}")  # the example predicts
    example = pd.DataFrame(serving["dataframe_split"]["data"], columns=serving["dataframe_split"]["columns"])
    assert set(model.predict(example)) <= {"negative", "positive"}
