"""Where runs live: the default tracking URI, the pre-flight check, experiments, calls retried through outages."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pipeline.core.config import default_tracking_uri  # noqa: F401 - re-exported: tracking's default store
from pipeline.core.errors import Unreachable
from pipeline.tracking.preflight import probe_store

log = logging.getLogger("adept")
T = TypeVar("T")

# How long a fit keeps training (and keeps retrying) while the tracking server is unreachable.
DEFAULT_OUTAGE_BUDGET_S = 600.0


class TrackingOutage(ConnectionError):
    """The tracking server stayed unreachable longer than the outage budget."""


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


@contextlib.contextmanager
def fail_fast_http() -> Iterator[None]:
    """MLflow's HTTP client retries for minutes by default; a pre-flight check should answer in seconds.

    Set only around the call and restored afterwards, so workers started later keep MLflow's defaults.
    """
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_tracking_server(uri: str) -> None:
    """Fail fast, before Ray starts, when the tracking store cannot be reached or would be created oddly."""
    probe_store(uri)  # the folder, a TCP connect: without MLflow's import (jobs run it first, see preflight)
    try:
        with fail_fast_http():
            client(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - connection, auth and schema errors all mean "not usable"
        raise Unreachable(
            f"mlflow_uri: the tracking store {uri!r} is not reachable ({type(err).__name__}: {str(err)[:300]}); "
            "start the server or fix --mlflow-uri / MLFLOW_TRACKING_URI."
        ) from err


EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_id(uri: str, name: str, artifact_root: Path | None = None) -> str:
    """The experiment's id; a new experiment gets `artifact_root` as its artifact location (local stores)."""
    mlflow_client = client(uri)
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None if is_remote(uri) or artifact_root is None else Path(artifact_root).resolve().as_uri()
    # MLflow 3's UI opens an untagged experiment on its GenAI (traces) pages; ours hold training runs
    return mlflow_client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})


def retrying(call: Callable[[], T], what: str, budget_s: float = DEFAULT_OUTAGE_BUDGET_S,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, retried with backoff (1, 2, 4 … 30 s) while the server is unreachable, for at most `budget_s`."""
    start, delay, warned = time.monotonic(), 1.0, False
    while True:
        try:
            with fail_fast_http():  # one attempt per call: this loop does the retrying, within the budget
                return call()
        except Exception as err:  # noqa: BLE001 - MlflowException wraps connection errors
            if not is_transient(err):
                raise
            waited = time.monotonic() - start
            if waited >= budget_s:
                raise TrackingOutage(f"MLflow was unreachable for {waited:.0f} s while trying to {what} "
                                     f"({type(err).__name__}: {str(err)[:200]}).") from err
            if not warned:
                log.warning(f"[adept] MLflow unreachable ({what}); retrying for up to {budget_s:.0f} s")
                warned = True
            sleep(min(delay, max(0.0, budget_s - waited)))
            delay = min(delay * 2, 30.0)


def is_transient(err: BaseException) -> bool:
    """Connection trouble (retry) as opposed to a request the server refused (do not).

    A status counts only as a status (MLflow's error code, or "error code 503" of a non-JSON reply), never as digits
    anywhere in the text: a refusal naming a run id or port with "503" in it would be retried for the whole budget.
    """
    import requests

    if isinstance(err, requests.exceptions.HTTPError):  # a reply: transient only when the server side is in trouble
        status = getattr(err.response, "status_code", None)
        return status is None or status >= 500 or status == 429
    if isinstance(err, (ConnectionError, TimeoutError, requests.exceptions.RequestException)):
        return True
    status = getattr(err, "get_http_status_code", None)  # MlflowException: TEMPORARILY_UNAVAILABLE -> 503, ...
    if callable(status) and status() in (429, 503, 504):
        return True
    text = f"{type(err).__name__} {err}"
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "ConnectionError", "timed out",
                                   "RemoteDisconnected", "Connection reset", "Connection aborted",
                                   "error code 502", "error code 503", "error code 504"))
