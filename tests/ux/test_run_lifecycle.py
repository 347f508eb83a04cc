"""The one owner of run life-cycles (pipeline.tracking.runs) on a real sqlite store: re-opening a key resumes the
same run, statuses are only FINISHED / FAILED / KILLED, and a stopped sweep closes the trials it left RUNNING."""

import pytest
from mlflow import MlflowClient

from pipeline.tracking import close_open_children, close_run, open_run

pytestmark = pytest.mark.ux


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_reopening_a_key_resumes_the_same_run(uri, tmp_path):
    first = open_run(uri, "exp", "fit-a", kind="fit", params={"m": 8}, artifact_root=tmp_path)
    close_run(uri, first.run_id, "FAILED", error="RuntimeError: boom")
    again = open_run(uri, "exp", "fit-a", kind="fit", artifact_root=tmp_path)
    run = MlflowClient(uri).get_run(again.run_id)
    assert again.run_id == first.run_id and run.info.status == "RUNNING"
    assert run.data.params == {"m": "8"} and run.data.tags["adept.error"] == "RuntimeError: boom"
    with pytest.raises(ValueError, match="not one of"):
        close_run(uri, again.run_id, "DONE")
    # MLflow's UI opens the experiment on its training-runs pages, not on the GenAI traces overview
    assert MlflowClient(uri).get_experiment(first.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_stopped_sweep_closes_only_its_open_trials(uri, tmp_path):
    sweep = open_run(uri, "exp", "sweep", kind="sweep", artifact_root=tmp_path)
    other = open_run(uri, "exp", "other-sweep", kind="sweep", artifact_root=tmp_path)
    done = open_run(uri, "exp", "sweep-t0", kind="trial", parent_run_id=sweep.run_id, artifact_root=tmp_path)
    running = open_run(uri, "exp", "sweep-t1", kind="trial", parent_run_id=sweep.run_id, artifact_root=tmp_path)
    elsewhere = open_run(uri, "exp", "other-t0", kind="trial", parent_run_id=other.run_id, artifact_root=tmp_path)
    close_run(uri, done.run_id, "FINISHED")

    assert close_open_children(uri, sweep.run_id, "KILLED", error="the sweep stopped: KeyboardInterrupt") == 1
    client = MlflowClient(uri)
    status = {ref.run_id: client.get_run(ref.run_id).info.status for ref in (done, running, elsewhere, sweep)}
    assert status == {done.run_id: "FINISHED", running.run_id: "KILLED", elsewhere.run_id: "RUNNING",
                      sweep.run_id: "RUNNING"}
    assert client.get_run(running.run_id).data.tags["adept.error"] == "the sweep stopped: KeyboardInterrupt"
    assert close_open_children(uri, sweep.run_id, "KILLED") == 0
