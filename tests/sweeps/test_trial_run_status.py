"""A trial that Tune's scheduler stops after it passed its rung can still finish before the STOP reaches its
workers. Its MLflow run must end consistent whichever side writes first: test metrics and no stopped-early
tags (it completed), or stopped-early tags and no test metrics (it did not)."""

from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from pipeline.driver.tune.callbacks import TrialRunStatus
from pipeline.tracking import STOPPED_AT_TAG, STOPPED_EARLY_TAG, clear_stopped_early, open_run

SWEEP, TRIAL = "sw", "abc12_00001"


@pytest.fixture
def run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ref = open_run(uri, "exp", f"{SWEEP}-{TRIAL}", kind="trial")
    callback = TrialRunStatus(uri, "exp", SWEEP, "val_accuracy", "max", "asha", budget_s=5)
    # Tune's last result is the rung's report (step 10): the final report never reached it.
    trial = SimpleNamespace(trial_id=TRIAL, last_result={"step": 10, "val_accuracy": 0.5},
                            metric_analysis={"val_accuracy": {"max": 0.5}})
    return SimpleNamespace(uri=uri, run_id=ref.run_id, callback=callback, trial=trial, client=MlflowClient(uri))


def worker_completes(run):
    """What rank 0 does at the end of a fit: test metrics sent, then it looks for the tags."""
    run.client.log_metric(run.run_id, "test/accuracy", 0.75, step=20)
    return clear_stopped_early(run.uri, run.run_id, budget_s=5)


def tags_and_metrics(run):
    data = run.client.get_run(run.run_id).data
    return {k for k in data.tags if k in (STOPPED_EARLY_TAG, STOPPED_AT_TAG)}, set(data.metrics)


def test_stopped_at_its_rung_the_run_is_tagged_and_has_no_test_metrics(run):
    run.callback.on_trial_complete(0, [], run.trial)
    tags, metrics = tags_and_metrics(run)
    assert tags == {STOPPED_EARLY_TAG, STOPPED_AT_TAG} and "test/accuracy" not in metrics
    assert run.client.get_run(run.run_id).data.tags[STOPPED_AT_TAG] == "10"
    assert run.client.get_run(run.run_id).info.status == "FINISHED"


def test_the_worker_finishing_after_the_driver_tagged_its_run_removes_the_tags(run):
    run.callback.on_trial_complete(0, [], run.trial)
    assert worker_completes(run) is True
    tags, metrics = tags_and_metrics(run)
    assert tags == set() and "test/accuracy" in metrics


def test_the_worker_finishing_before_the_driver_looks_leaves_no_tags(run):
    assert worker_completes(run) is False
    run.callback.on_trial_complete(0, [], run.trial)
    tags, metrics = tags_and_metrics(run)
    assert tags == set() and "test/accuracy" in metrics


def test_the_worker_finishing_between_the_drivers_look_and_its_tags_leaves_no_tags(run, monkeypatch):
    """The interleaving one-sided checks miss: the driver found no test metrics, the worker then logged them and
    found no tags, and only then the driver tagged the run. The driver's second look catches it."""
    close = TrialRunStatus._close

    def close_after_the_worker(self, trial, status, error=None, tags=None):
        assert worker_completes(run) is False  # no tags yet
        return close(self, trial, status, error=error, tags=tags)

    monkeypatch.setattr(TrialRunStatus, "_close", close_after_the_worker)
    run.callback.on_trial_complete(0, [], run.trial)
    tags, metrics = tags_and_metrics(run)
    assert tags == set() and "test/accuracy" in metrics
