"""The one owner of MLflow run life-cycles: create or resume, nest, name, tag, and close with a final status.

Every run this project makes goes through `open_run` and ends through `close_run`; nothing else sets a
run's status. What each status means:

    FINISHED  the fit completed, or a sweep trial was stopped early by its scheduler (tagged
              `adept.stopped_early=<scheduler>` and `adept.stopped_at_step`) - a decision, not a failure
    FAILED    the fit or trial crashed; the error is in the tag `adept.error`
    KILLED    a user interrupted it (Ctrl-C, SIGTERM, `ray job stop`)

Kinds (`adept.kind`): `fit` (jobs/train_adept.py), `sweep` (the parent of a sweep), `trial` (one fit of a
sweep, nested under it), `registration` (a model logged for the registry, nested under its sweep; the
trial run it came from is never touched). A run is found again by its key (`adept.run_name`, the Ray
Train run name), so re-running a name resumes the same MLflow run.
"""

from __future__ import annotations

import getpass
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.tracking.store import DEFAULT_OUTAGE_BUDGET_S, client, experiment_id, retrying

RUN_KEY_TAG = "adept.run_name"
KIND_TAG = "adept.kind"
PARENT_TAG = "mlflow.parentRunId"
STOPPED_EARLY_TAG, STOPPED_AT_TAG = "adept.stopped_early", "adept.stopped_at_step"
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
STATUSES = (FINISHED, FAILED, KILLED)
SOURCE_NAMES = {"fit": "jobs/train_adept.py", "sweep": "jobs/tune_adept.py", "trial": "jobs/tune_adept.py",
                "registration": "jobs/register_best.py"}


@dataclass(frozen=True)
class RunRef:
    uri: str
    run_id: str
    experiment_id: str


def open_run(uri: str, experiment: str, key: str, *, kind: str, display_name: str | None = None,
             params: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
             artifact_root: Path | None = None, parent_run_id: str | None = None,
             description: str | None = None, budget_s: float = DEFAULT_OUTAGE_BUDGET_S) -> RunRef:
    """The run for `key`: resumed (status back to RUNNING) when it exists, else created with params and tags."""
    from mlflow.entities import Param

    mlflow_client = client(uri)
    exp = retrying(lambda: experiment_id(uri, experiment, artifact_root), "open the experiment", budget_s)
    existing = retrying(lambda: find_run(uri, exp, key), "look for the run", budget_s)
    if existing is not None:
        run_id = existing.info.run_id
        retrying(lambda: mlflow_client.update_run(run_id, status="RUNNING"), "resume the run", budget_s)
        return RunRef(uri, run_id, exp)
    all_tags = {RUN_KEY_TAG: key, KIND_TAG: kind, **standard_tags(kind), **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    if description:
        all_tags["mlflow.note.content"] = description
    # a try whose reply was lost may have created the run: every try looks for it first, or a retry makes a twin
    run = retrying(lambda: find_run(uri, exp, key) or mlflow_client.create_run(exp, run_name=display_name or key,
                                                                               tags=all_tags),
                   "create the run", budget_s)
    items = sorted((params or {}).items())
    for start in range(0, len(items), 100):  # log_batch takes at most 100 params per call
        chunk = [Param(k, str(v)[:6000]) for k, v in items[start:start + 100]]
        retrying(lambda chunk=chunk: mlflow_client.log_batch(run.info.run_id, params=chunk), "log params", budget_s)
    return RunRef(uri, run.info.run_id, exp)


def close_run(uri: str, run_id: str, status: str, *, error: str | None = None, tags: dict[str, str] | None = None,
              budget_s: float = DEFAULT_OUTAGE_BUDGET_S) -> None:
    """Give the run its final status (and tags); retried while the server is unreachable."""
    if status not in STATUSES:
        raise ValueError(f"run status {status!r} is not one of {STATUSES}")
    mlflow_client = client(uri)
    extra = dict(tags or {})
    if error:
        extra["adept.error"] = error[:5000]
    for key, value in extra.items():
        retrying(lambda key=key, value=value: mlflow_client.set_tag(run_id, key, value), "tag the run", budget_s)
    retrying(lambda: mlflow_client.set_terminated(run_id, status=status), "close the run", budget_s)


def clear_stopped_early(uri: str, run_id: str, budget_s: float = DEFAULT_OUTAGE_BUDGET_S) -> bool:
    """Drop the stopped-early tags of a run whose fit completed after all; True if it had them.

    Tune tells the scheduler's STOP to the sweep's driver before it reaches the trial's workers, so a fast
    trial can finish and log its test metrics after the driver tagged its run stopped early. Both sides
    write first, then read (the driver tags, then looks for test metrics; the worker logs them, then looks
    for the tags): whichever reads last sees the other's write, so the tags never outlive the test metrics.
    """
    mlflow_client = client(uri)
    run = retrying(lambda: mlflow_client.get_run(run_id), "read the run", budget_s)
    if STOPPED_EARLY_TAG not in run.data.tags:
        return False
    for key in (STOPPED_EARLY_TAG, STOPPED_AT_TAG):
        if key in run.data.tags:
            retrying(lambda key=key: mlflow_client.delete_tag(run_id, key), "untag the run", budget_s)
    return True


def close_open_children(uri: str, parent_run_id: str, status: str, *, error: str | None = None,
                        budget_s: float = DEFAULT_OUTAGE_BUDGET_S) -> int:
    """Close the parent's child runs still RUNNING (trials a stopped sweep never finished); returns how many.

    A trial's own driver closes its run when it can; when the sweep itself stops (Ctrl-C, a crash of the
    driver process) the trials it was running are closed here, so no run is left RUNNING for ever."""
    mlflow_client = client(uri)
    parent = retrying(lambda: mlflow_client.get_run(parent_run_id), "read the sweep run", budget_s)
    children = retrying(lambda: mlflow_client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and "
                                                   "attributes.status = 'RUNNING'"), "find open trial runs", budget_s)
    for child in children:
        close_run(uri, child.info.run_id, status, error=error, budget_s=budget_s)
    return len(children)


def find_run(uri: str, experiment_id_: str, key: str):
    """The newest run of the experiment with this key, or None."""
    runs = client(uri).search_runs([experiment_id_], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                   max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def status_of_error(err: BaseException | None) -> str:
    """FINISHED without an error, KILLED for a user's interrupt, FAILED otherwise."""
    if err is None:
        return FINISHED
    return KILLED if isinstance(err, (KeyboardInterrupt, SystemExit)) else FAILED


def standard_tags(kind: str) -> dict[str, str]:
    """The tags MLflow's UI shows as Source, User and Version."""
    return {"mlflow.source.name": SOURCE_NAMES.get(kind, "adept-ray"), "mlflow.source.type": "JOB",
            "mlflow.user": _user(), "mlflow.source.git.commit": git_commit()}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
