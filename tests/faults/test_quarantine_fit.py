"""A real fit resumed past a tampered checkpoint: the checkpoint is refused, moved to the run's quarantine folder
with its files intact, named in the MLflow run's tags and the job's last lines, and Ray Train's retention
(`num_checkpoints_to_keep`) still runs to the end without deleting it."""

import json
import pickle

import pytest
from fault_hooks import fail_once_at, hooks
from fit_helpers import checkpoints, fit_args, only_run
from hostile import Payload

from jobs.train_adept import main
from pipeline.worker import checkpoint as ckpt

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_refused_checkpoint_survives_retention_in_quarantine(synthetic_task, tiny_backbone, tmp_path, capsys):
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = fit_args(synthetic_task, tiny_backbone, storage, uri, "q", "--num-workers", "1", "--no-deepspeed",
                    "--max-steps", "40", "--eval-steps", "10", "--set", "log_steps=10",
                    "--set", "num_checkpoints_to_keep=2", *hooks(fail_once_at(25)))
    assert main(args) == 1  # the injected failure at step 25 (max_failures=0): checkpoints of steps 10 and 20 stay
    run = storage / "q"
    assert [p.name for p in checkpoints(storage, "q")] == ["step_00000010", "step_00000020"]
    planted = run / "step_00000020" / "engine" / "mp_rank_00_model_states.pt"
    planted.parent.mkdir()
    planted.write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    evidence = files(run / "step_00000020")
    capsys.readouterr()

    assert main(args) == 0  # refused, quarantined, resumed from step 10 (the hook fails only once per run)
    out = capsys.readouterr().out
    (moved,) = ckpt.quarantined(run)
    assert moved.name.startswith("step_00000020-") and files(moved) == evidence
    assert f"[adept] quarantined 1 refused checkpoint(s) in {run / ckpt.QUARANTINE}: {moved.name}" in out, out
    assert not (tmp_path / "pwned").exists()
    # Retention kept the two newest, deleting the rest by Ray's own records: the stub it still knew, never the evidence.
    assert [p.name for p in checkpoints(storage, "q")] == ["step_00000040", "step_00000040_final"]
    state = json.loads((run / "step_00000040_final" / ckpt.STATE).read_text())
    assert state["step"] == 40 and state["resumed_at"] == [10] and state["finished"]
    _, mlflow_run = only_run(uri)
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.tags["adept.quarantined"] == moved.name
