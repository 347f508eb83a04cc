"""MLflow for this project: one package owns every run's life-cycle and everything written into runs.

    store    the default tracking URI, the pre-flight check, experiments, calls retried through outages
    runs     open_run / close_run: create or resume, nest, name, tag, final status (FINISHED/FAILED/KILLED)
    logger   RunLogger: rank 0's buffered, outage-tolerant writer (metrics, tables, artifacts, datasets)
    names    metric keys (train/, val/, test/, perf/) and short run names
    models   reading runs back, logging a model from code, the Model Registry, loading pyfunc models,
             and what a pyfunc model's code needs (PythonModel, set_model, bad_input)

Nothing outside this package imports mlflow, creates an MLflow run or sets a run's status.
"""

from pipeline.tracking.logger import JOURNAL, RunLogger, relog
from pipeline.tracking.models import (
    bad_input,
    create_model_version,
    download_artifacts,
    ensure_registered_model,
    experiment_name,
    get_run,
    list_artifacts,
    load_model,
    log_code_model,
    log_to_run,
    logged_model_config,
    metric_history,
    model_versions,
    request_errors,
    search_runs,
    set_alias,
    set_model,
    string_signature,
    version_by_alias,
)
from pipeline.tracking.names import fit_run_name, ray_key, trial_run_name
from pipeline.tracking.runs import (
    FAILED,
    FINISHED,
    KILLED,
    KIND_TAG,
    PARENT_TAG,
    RUN_KEY_TAG,
    STOPPED_AT_TAG,
    STOPPED_EARLY_TAG,
    RunRef,
    clear_stopped_early,
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
           "PythonModel", "RUN_KEY_TAG", "RunLogger", "RunRef", "STOPPED_AT_TAG", "STOPPED_EARLY_TAG",
           "TrackingOutage", "bad_input", "check_tracking_server", "clear_stopped_early", "client",
           "close_open_children", "close_run", "create_model_version",
           "default_tracking_uri", "download_artifacts", "ensure_registered_model", "experiment_id",
           "experiment_name", "find_run", "fit_run_name", "get_run", "git_commit", "is_remote",
           "list_artifacts", "load_model", "log_code_model", "log_to_run", "logged_model_config",
           "metric_history", "model_versions", "open_run", "ray_key", "relog", "request_errors",
           "search_runs", "set_alias", "set_model", "status_of_error", "string_signature", "trial_run_name",
           "version_by_alias"]


def __getattr__(name: str):
    """`PythonModel` (MLflow's pyfunc base class) on first use only: importing this package stays light."""
    if name == "PythonModel":
        from pipeline.tracking import models

        return models.PythonModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
