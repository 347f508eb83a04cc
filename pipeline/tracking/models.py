"""Models in MLflow: reading runs back, logging a model from code, the Model Registry, loading a pyfunc model.

The mechanics only; the policy (which run is best, when `@champion` moves, versions never overwritten) is
`pipeline.serving.registry`'s. Every call names its URI: nothing here changes MLflow's process-wide
tracking or registry URI, or leaves a run active, beyond the call itself.

    reading runs    get_run, experiment_name, search_runs, list_artifacts, download_artifacts, metric_history
    writing (driver) log_to_run: tables, files and metrics at once (a sweep's summary)
    logging         string_signature, log_code_model (into an open run: `runs.open_run` / `close_run` own it)
    registry        ensure_registered_model, model_versions, create_model_version, version_by_alias, set_alias
    loading         load_model, logged_model_config, request_errors (what loading or predicting may raise)
    model code      PythonModel, set_model, bad_input (for `pipeline/serving/pyfunc.py`)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.tracking.store import client

_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def __getattr__(name: str):
    """`PythonModel` (MLflow's base of a pyfunc model), imported only when asked for: mlflow is heavy."""
    if name == "PythonModel":
        from mlflow.pyfunc import PythonModel

        return PythonModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------------ errors
def request_errors() -> tuple[type[BaseException], ...]:
    """The exception types MLflow raises for a request it refused (bad model URI, missing version, HTTP 4xx)."""
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def bad_input(message: str) -> Exception:
    """The error a pyfunc model raises for a bad request: `mlflow models serve` answers it with HTTP 400."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _message(err: BaseException) -> str:
    return str(getattr(err, "message", None) or err)


# ------------------------------------------------------------------------------------------ reading runs
def get_run(uri: str, run_id: str):
    """The run (MLflow's Run: `.info`, `.data.tags`, `.data.metrics`); LookupError with MLflow's reason if none."""
    try:
        return client(uri).get_run(run_id)
    except request_errors() as err:
        raise LookupError(_message(err)) from None


def experiment_name(uri: str, experiment_id: str) -> str:
    return client(uri).get_experiment(experiment_id).name


def search_runs(uri: str, filter_string: str = "", experiment: str | None = None,
                order_by: list[str] | None = None, max_results: int = 1000) -> list:
    """Runs matching `filter_string` in the experiment named `experiment` (None: every experiment).

    LookupError when the named experiment does not exist."""
    store = client(uri)
    if experiment is not None:
        exp = store.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"no MLflow experiment {experiment!r} in {uri}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in store.search_experiments()]
    return list(store.search_runs(ids, filter_string=filter_string, order_by=order_by, max_results=max_results))


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    """The paths of the run's artifacts directly under `path`."""
    return [f.path for f in client(uri).list_artifacts(run_id, path)]


def download_artifacts(uri: str, run_id: str, path: str, dst: str | Path) -> str:
    """Copy the run's artifact `path` (a file or a folder) under `dst`; the local path."""
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                               tracking_uri=uri)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every logged point of the metric `key` as (step, value), in step order (empty when never logged)."""
    points = sorted(client(uri).get_metric_history(run_id, key), key=lambda m: m.step)
    return [(m.step, m.value) for m in points]


# ------------------------------------------------------------------------------------------------ writing
def log_to_run(uri: str, run_id: str, *, tables: dict[str, Any] | None = None,
               files: list[tuple[str | Path, str]] | None = None, metrics: dict[str, float] | None = None) -> None:
    """Write into an open run from the driver: `tables` {artifact file (.json): DataFrame}, `files` [(local file,
    artifact folder)], `metrics` {key: value} (step 0). Synchronous; rank 0's writer is `RunLogger`."""
    store = client(uri)
    for artifact_file, table in (tables or {}).items():
        store.log_table(run_id, data=table, artifact_file=artifact_file)
    for local, folder in files or []:
        store.log_artifact(run_id, str(local), folder)
    for key, value in (metrics or {}).items():
        store.log_metric(run_id, key, float(value))


# ---------------------------------------------------------------------------------------------- logging
@contextlib.contextmanager
def _using(uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model, load_model) reads the process-wide URIs: point them at `uri` for the
    call only, then restore them and the environment variables MLflow sets alongside."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in _URI_VARS}
    saved_tracking, saved_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)
        registry_utils._registry_uri = saved_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _active(run_id: str) -> Iterator[None]:
    """Make the open run `run_id` MLflow's active run (log_model has no run argument) without giving it a status.

    MLflow's end_run always writes a status; it writes RUNNING here, which the run already has: the final
    status is `runs.close_run`'s, the one place that sets it."""
    import mlflow

    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run(status="RUNNING")


def string_signature(inputs: list[str], outputs: list[str]):
    """A model signature of string columns: the inputs optional (any subset may be sent), the outputs as named."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", c, required=False) for c in inputs]),
                          outputs=Schema([ColSpec("string", c) for c in outputs]))


def log_code_model(uri: str, run_id: str, *, name: str, code: str | Path, artifacts: dict[str, str],
                   model_config: dict[str, Any], code_paths: list[str], pip_requirements: list[str],
                   signature=None, input_example=None, tags: dict[str, str] | None = None):
    """Log a pyfunc "model from code" (`code`: the file that calls `set_model`) into the open run `run_id`.

    `code_paths` are copied beside it and put on sys.path when it loads; `artifacts` are local files or
    folders, given to the model's `load_context`. Returns MLflow's ModelInfo (`.model_uri`, `.model_id`)."""
    import mlflow.pyfunc

    with _using(uri), _active(run_id):
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(code), artifacts=artifacts, model_config=model_config,
            signature=signature, input_example=input_example, code_paths=[str(p) for p in code_paths],
            pip_requirements=pip_requirements, tags=tags)


# --------------------------------------------------------------------------------------------- registry
def ensure_registered_model(uri: str, name: str, description: str | None = None) -> bool:
    """Create the registered model `name` unless it exists; True when it was created."""
    store = client(uri)
    try:
        store.get_registered_model(name)
        return False
    except request_errors():
        store.create_registered_model(name, description=description)
        return True


def model_versions(uri: str, name: str, tags: dict[str, str] | None = None) -> list:
    """The versions of `name` (MLflow's ModelVersion: `.version`, `.tags`) carrying all of `tags`, oldest first."""
    query = " and ".join([f"name = '{name}'", *(f"tags.{k} = '{v}'" for k, v in (tags or {}).items())])
    return sorted(client(uri).search_model_versions(query), key=lambda v: int(v.version))


def create_model_version(uri: str, name: str, model_info, run_id: str, tags: dict[str, str]):
    """A new version of `name` for the model `log_code_model` logged (never replaces an existing version)."""
    with _using(uri):  # a registry store resolves the source `models:/<model id>` through the global tracking URI
        return client(uri).create_model_version(name, source=model_info.model_uri, run_id=run_id, tags=tags,
                                                model_id=model_info.model_id)


def version_by_alias(uri: str, name: str, alias: str):
    """The version `name@alias` points to, or None (no such model or alias)."""
    try:
        return client(uri).get_model_version_by_alias(name, alias)
    except request_errors():
        return None


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    """Point `name@alias` at `version` (an alias names one version; the version it left keeps everything)."""
    client(uri).set_registered_model_alias(name, alias, version)


# ---------------------------------------------------------------------------------------------- loading
def load_model(source: str, model_config: dict[str, Any] | None = None, uri: str | None = None):
    """A pyfunc model from `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/...` (read from `uri`) or a
    model folder; `model_config` overrides its load options."""
    import mlflow.pyfunc

    with _using(uri) if uri else contextlib.nullcontext():
        return mlflow.pyfunc.load_model(source, model_config=model_config or None)


def logged_model_config(folder: str | Path) -> dict | None:
    """The pyfunc `model_config` recorded in the model folder's MLmodel file (None without one)."""
    from mlflow.models import Model

    return Model.load(str(folder)).flavors.get("python_function", {}).get("config")


def set_model(model) -> None:
    """Declare `model` the model of the code file being logged or loaded (MLflow's models from code)."""
    import mlflow.models

    mlflow.models.set_model(model)
