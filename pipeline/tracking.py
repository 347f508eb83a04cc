"""MLflow for one fit: the driver creates (or resumes) the run, rank 0 of the workers logs into it.

One MLflow run per Ray Train run name: re-running the same name (a resume) logs into the same run.
The experiment gets an absolute artifact location, so workers whose working directory Ray moved
still write the artifacts where the driver expects them (use an `http://` tracking server on clusters).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

RUN_NAME_TAG = "adept.run_name"
PARENT_TAG = "mlflow.parentRunId"


def check_tracking_server(uri: str) -> None:
    """Fail fast, before Ray starts, when the tracking store cannot be reached."""
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - connection, auth and schema errors all mean "not usable"
        raise ConnectionError(
            f"MLflow tracking store {uri!r} is not reachable ({type(err).__name__}: {str(err)[:300]}). "
            "Start the server or fix mlflow_uri / MLFLOW_TRACKING_URI."
        ) from err


def start_or_resume_run(uri: str, experiment: str, run_name: str, params: dict[str, Any],
                        tags: dict[str, str], artifact_root: Path, parent_run_id: str | None = None) -> str:
    """The id of the run for `run_name`: the existing one (resume) or a new one with params and tags.

    `parent_run_id` nests the run under another one (a sweep's trial under the sweep's run): the
    `mlflow.parentRunId` tag the MLflow UI groups by.
    """
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment_id = get_or_create_experiment(uri, experiment, artifact_root)
    existing = find_run(client, experiment_id, run_name)
    if existing is not None:
        run_id = existing.info.run_id
        client.update_run(run_id, status="RUNNING")
        if parent_run_id and existing.data.tags.get(PARENT_TAG) != parent_run_id:
            client.set_tag(run_id, PARENT_TAG, parent_run_id)
        return run_id
    if parent_run_id:
        tags = {**tags, PARENT_TAG: parent_run_id}
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    from mlflow.entities import Param

    for chunk in _chunks(sorted(params.items()), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in chunk])
    return run.info.run_id


def get_or_create_experiment(uri: str, experiment: str, artifact_root: Path) -> str:
    """The experiment's id; a new experiment gets `artifact_root` as its artifact location (local stores)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    location = None if uri.startswith(("http://", "https://", "databricks")) else Path(artifact_root).resolve().as_uri()
    return client.create_experiment(experiment, artifact_location=location)


def find_run(client, experiment_id: str, run_name: str):
    """The newest run of the experiment tagged with `run_name`, or None."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def finish_run(uri: str, run_id: str, ok: bool) -> None:
    from mlflow import MlflowClient

    MlflowClient(uri).set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RankZeroLogger:
    """Metrics, tables and artifacts from rank 0 into the driver's run; a no-op on other ranks."""

    def __init__(self, uri: str | None, run_id: str | None, rank: int):
        self.enabled = bool(uri and run_id and rank == 0)
        self.run_id = run_id
        if self.enabled:
            import mlflow

            mlflow.set_tracking_uri(uri)
            self._client = mlflow.MlflowClient(uri)
            # Reattaching to the run also restarts CPU/GPU/memory sampling (psutil; pynvml on GPUs).
            self._active = mlflow.start_run(run_id=run_id, log_system_metrics=True)

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step, run_id=self.run_id)

    def table(self, columns: dict[str, list], artifact_file: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_table(data=columns, artifact_file=artifact_file, run_id=self.run_id)

    def dict(self, data: dict, artifact_file: str) -> None:
        if self.enabled:
            self._client.log_dict(self.run_id, data, artifact_file)

    def artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        if self.enabled:
            self._client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def close(self) -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run()
            self.enabled = False


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
