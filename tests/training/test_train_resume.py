"""Real fits that resume: an injected failure restarts the worker group from the last checkpoint (never from step
0, the same MLflow run, FINISHED), and re-running a finished --name changes nothing."""

import json

import pytest
from fault_hooks import fail_once_at, hooks
from fit_helpers import only_run
from train_jobs import args, checkpoints

from jobs.train_adept import main

pytestmark = pytest.mark.slow


def test_injected_failure_resumes_from_last_checkpoint(synthetic_task, tiny_backbone, tmp_path, monkeypatch):
    rc = main(args(synthetic_task, tiny_backbone, tmp_path, "--num-workers", "2", "--zero-stage", "2",
                   "--max-steps", "40", "--eval-steps", "10", "--name", "failing", "--set", "max_failures=1",
                   *hooks(fail_once_at(25))))
    assert rc == 0
    assert (tmp_path / "runs" / "failing" / ".failure-injected-at-25").exists()
    state = json.loads((checkpoints(tmp_path, "failing")[-1] / "trainer_state.json").read_text())
    assert state["step"] == 40
    assert [h["step"] for h in state["history"]] == [10, 20, 30, 40]  # never restarted from step 0
    assert state["resumed_at"] == [20]
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED"


def test_rerunning_a_finished_name_changes_nothing(synthetic_task, tiny_backbone, tmp_path):
    common = args(synthetic_task, tiny_backbone, tmp_path, "--num-workers", "1", "--no-deepspeed",
                  "--max-steps", "20", "--eval-steps", "10", "--name", "again")
    assert main(common) == 0

    def snapshot():
        root = tmp_path / "runs" / "again"
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("step_*/**/*") if p.is_file()}

    first = snapshot()
    assert json.loads(first["step_00000020_final/trainer_state.json"])["finished"]
    assert main(common) == 0  # resumes from the final checkpoint, sees it finished, writes nothing
    assert snapshot() == first
    _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the same MLflow run, not a second one
    assert run.info.status == "FINISHED"
