"""Refusals that need no heavy library answer in seconds (issue 21, item 6).

On a loaded machine a typo used to take minutes to print `error:`: the jobs imported torch, transformers, Ray
and MLflow before checking anything. Each case here runs the job as its own process with those libraries made
unimportable (a `sitecustomize.py` on PYTHONPATH puts a finder first on `sys.meta_path` that raises ImportError
for them): the refusal must come first, name the field, exit 2, and take well under the time a heavy import
takes. The registry lookups of `pipeline/tracking/preflight.py` are checked against a real MLflow server too.
"""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.core.errors import UserError
from pipeline.tracking.preflight import check_registered_model

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "ray", "mlflow", "deepspeed", "datasets", "pandas", "numpy", "pyarrow",
         "safetensors", "tokenizers", "huggingface_hub", "requests", "sqlalchemy", "optuna", "peft", "accelerate")
VALID = {"train_adept": ["--set", "r=8"], "tune_adept": []}  # the rest of a valid config (tune: demo's budget)
SECONDS = 10  # heavy imports take 5-130 s here; a refusal before them takes about one

BLOCKER = f"""import importlib.abc
import importlib.machinery
import sys

HEAVY = {HEAVY!r}


class _Refuse(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # A spec whose loading fails: looking a package up (importlib.util.find_spec) is not importing it.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        raise ImportError(f"{{spec.name}} is blocked: the refusal must come before heavy imports")

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Refuse())
"""


@pytest.fixture
def light_env(tmp_path, monkeypatch):
    """The environment of a job process that cannot import anything heavy."""
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(site)
    return env


def run_job(env, job: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, f"jobs/{job}.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, time.monotonic() - start


def assert_refused(proc, seconds: float, starts: str, *fragments: str) -> None:
    err = proc.stderr
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, err[-3000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert errors[0].startswith(f"error: {starts}"), err
    for fragment in fragments:
        assert fragment in errors[0], err
    assert seconds < SECONDS, f"{seconds:.1f} s to refuse: {errors[0]}"


def free_port() -> int:
    """A loopback port nothing listens on (bound and released): a connect is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_blocker_blocks(light_env):
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=light_env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "torch is blocked" in proc.stderr, proc.stderr


@pytest.mark.parametrize("job", ["train_adept", "tune_adept"])
def test_a_bad_config_value(job, light_env, tmp_path):
    proc, seconds = run_job(light_env, job, "--set", "max_steps=-1", "--storage-path", str(tmp_path / "runs"))
    assert_refused(proc, seconds, "max_steps=-1", "must be an integer >= 1")


@pytest.mark.parametrize("job", ["train_adept", "tune_adept"])
def test_an_unreachable_tracking_server(job, light_env, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    proc, seconds = run_job(light_env, job, *VALID[job], "--storage-path", str(tmp_path / "runs"),
                            "--mlflow-uri", uri)
    assert_refused(proc, seconds, "mlflow_uri: the tracking store", uri, "is not reachable", "start the server")
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def write_task(folder: Path, input_column: str) -> Path:
    (folder / "train.csv").write_text("text,label\na fine film,1\na dull film,0\n")
    (folder / "dev.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    spec = folder / "task.yaml"
    spec.write_text(f"name: t\ntrain: train.csv\nvalidation: dev.jsonl\ninput_columns: [{input_column}]\n"
                    "label_column: label\n")
    return spec


@pytest.mark.parametrize("job", ["train_adept", "tune_adept"])
def test_a_task_yaml_naming_a_missing_column(job, light_env, tmp_path):
    spec = write_task(tmp_path, "review")
    proc, seconds = run_job(light_env, job, "--set", f"task={spec}", *VALID[job],
                            "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db")
    assert_refused(proc, seconds, "custom task 't', train file", "missing column(s) ['review']",
                   "the file has ['text', 'label']")


def test_a_missing_column_of_a_json_lines_file(tmp_path):
    from pipeline.core.task_spec import CustomTaskSpec, check_files

    spec = write_task(tmp_path, "text")
    (tmp_path / "dev.jsonl").write_text('{"review": "good", "label": 1}\n')
    with pytest.raises(UserError, match=r"validation file .*missing column\(s\) \['text'\]"):
        check_files(CustomTaskSpec.from_yaml(spec))
    (tmp_path / "dev.jsonl").write_text('{"label": 1}\n{"text": "good", "label": 0}\n')  # a key in any row counts
    check_files(CustomTaskSpec.from_yaml(spec))


def registry_db(path: Path) -> str:
    """A sqlite file with MLflow's registry tables (the columns the check reads) and model `m` @champion v1."""
    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE registered_models (workspace TEXT, name TEXT);"
                         "CREATE TABLE registered_model_aliases (workspace TEXT, name TEXT, alias TEXT, version INT);"
                         "CREATE TABLE model_versions (workspace TEXT, name TEXT, version INT, current_stage TEXT);"
                         "INSERT INTO registered_models VALUES ('default', 'm');"
                         "INSERT INTO registered_model_aliases VALUES ('default', 'm', 'champion', 1);"
                         "INSERT INTO model_versions VALUES ('default', 'm', 1, 'None');")
    return f"sqlite:///{path}"


@pytest.mark.parametrize("store", ["no file", "registry"])
def test_predict_a_model_that_is_not_registered(store, light_env, tmp_path):
    (tmp_path / "in.csv").write_text("text\nfine\n")
    uri = registry_db(tmp_path / "m.db") if store == "registry" else f"sqlite:///{tmp_path / 'none.db'}"
    proc, seconds = run_job(light_env, "predict", "--model", "models:/nope@champion", "--input",
                            str(tmp_path / "in.csv"), "--mlflow-uri", uri)
    assert_refused(proc, seconds, "--model models:/nope@champion: no registered model 'nope'", uri)


def test_predict_on_an_unreachable_tracking_server(light_env, tmp_path):
    (tmp_path / "in.csv").write_text("text\nfine\n")
    uri = f"http://127.0.0.1:{free_port()}"
    proc, seconds = run_job(light_env, "predict", "--model", "models:/nope@champion", "--input",
                            str(tmp_path / "in.csv"), "--mlflow-uri", uri)
    assert_refused(proc, seconds, "mlflow_uri: the tracking store", uri)


def test_sqlite_registry_lookup(tmp_path):
    uri = registry_db(tmp_path / "m.db")
    for source in ("models:/m@champion", "models:/m/1", "models:/m/latest", "runs:/abc/model"):
        check_registered_model(source, uri)  # present, or a form left to MLflow
    for source, problem in (("models:/m@prod", "model 'm' has no alias @prod"),
                            ("models:/m/2", "model 'm' has no version 2"), ("models:/x/1", "no registered model 'x'")):
        with pytest.raises(UserError, match=problem):
            check_registered_model(source, uri)
    (tmp_path / "other.db").write_bytes(b"")  # a store without MLflow's tables yet
    with pytest.raises(UserError, match="no registered model 'm'"):
        check_registered_model("models:/m@champion", f"sqlite:///{tmp_path / 'other.db'}")


class _Registry(BaseHTTPRequestHandler):
    """MLflow's REST answers for a registry holding only m@champion (and its version 1)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if query.get("name") != "m":
            code, body = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                               "message": f"Registered Model with name={query.get('name')} not found"}
        elif query.get("alias", "champion") == "champion" and query.get("version", "1") == "1":
            code, body = 200, {}
        elif "alias" in query:  # what MLflow 3 answers for a missing alias
            code, body = 400, {"error_code": "INVALID_PARAMETER_VALUE",
                               "message": "Registered model alias prod not found."}
        else:
            code, body = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                               "message": "Model Version (name=m, version=2) not found"}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_rest_registry_lookup():
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        check_registered_model("models:/m@champion", uri)
        with pytest.raises(UserError, match="Registered model alias prod not found; register one"):
            check_registered_model("models:/m@prod", uri)
        with pytest.raises(UserError, match=r"--model models:/x/1: Registered Model with name=x not found"):
            check_registered_model("models:/x/1", uri)
        with pytest.raises(UserError, match=r"Model Version \(name=m, version=2\) not found"):
            check_registered_model("models:/m/2", uri)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_rest_registry_lookup_against_mlflow(mlflow_server):
    """The endpoints and the 404 body the check relies on, as a real `mlflow server` answers them."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    client.create_registered_model("adept-fast-refusal")
    with pytest.raises(UserError, match="--model models:/nope@champion: .*nope"):
        check_registered_model("models:/nope@champion", mlflow_server)
    with pytest.raises(UserError, match="alias champion not found"):
        check_registered_model("models:/adept-fast-refusal@champion", mlflow_server)
    with pytest.raises(UserError, match="--model models:/adept-fast-refusal/3: "):
        check_registered_model("models:/adept-fast-refusal/3", mlflow_server)
    check_registered_model("models:/adept-fast-refusal/latest", mlflow_server)  # a form left to MLflow
