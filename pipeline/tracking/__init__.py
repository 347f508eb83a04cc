"""MLflow for this project: one package owns every run's life-cycle and everything written into runs.

    store    the default tracking URI, the pre-flight check, experiments, calls retried through outages
    runs     open_run / close_run: create or resume, nest, name, tag, final status (FINISHED/FAILED/KILLED)
    logger   RunLogger: rank 0's buffered, outage-tolerant writer (metrics, tables, artifacts, datasets)
    names    metric keys (train/, val/, test/, perf/) and short run names

Nothing outside this package creates an MLflow run or sets a run's status.
"""

from pipeline.tracking.logger import JOURNAL, RunLogger, relog
from pipeline.tracking.names import fit_run_name, metric_key, ray_key, trial_run_name
from pipeline.tracking.runs import (
    FAILED,
    FINISHED,
    KILLED,
    KIND_TAG,
    PARENT_TAG,
    RUN_KEY_TAG,
    RunRef,
    close_open_children,
    close_run,
    find_run,
    git_commit,
    open_run,
    status_of_error,
)
from pipeline.tracking.store import (
    DEFAULT_OUTAGE_BUDGET_S,
    TrackingOutage,
    check_tracking_server,
    client,
    default_tracking_uri,
    experiment_id,
    is_remote,
)

__all__ = ["DEFAULT_OUTAGE_BUDGET_S", "FAILED", "FINISHED", "JOURNAL", "KILLED", "KIND_TAG", "PARENT_TAG",
           "RUN_KEY_TAG", "RunLogger", "RunRef", "TrackingOutage", "check_tracking_server", "client", "close_open_children", "close_run",
           "default_tracking_uri", "experiment_id", "find_run", "fit_run_name", "git_commit", "is_remote",
           "metric_key", "open_run", "ray_key", "relog", "status_of_error", "trial_run_name"]
