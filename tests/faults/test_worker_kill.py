"""A Ray Train worker SIGKILLed mid-fit (a real kill, not an exception): the fit resumes from its last checkpoint,
redoes at most one eval_steps interval, computes exactly what it computed before at the replayed steps, and
leaves one FINISHED MLflow run without duplicate metric points. The survivor, held between collectives until
Ray Train tears its process group down, logs nothing it computed alone (CI once saw it log step 28 from its own
rows: half the batch's loss, kept in MLflow since a replay never overwrites a point). Throughout, no process of
the job (Ray's services, the dashboard and its agents, the workers' torch.distributed rendezvous) listens beyond
loopback."""

import signal

import pytest
from fault_hooks import hold_until_teardown_once, hooks, sleep_each_step
from fit_helpers import (
    beyond_loopback,
    checkpoints,
    fit_args,
    journal,
    kill_tree,
    listeners,
    registered,
    start_fit,
    train_workers,
    wait_for,
    watch,
)
from mlflow import MlflowClient

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_sigkilled_worker_resumes_exactly(synthetic_task, tiny_backbone, tmp_path):
    storage, uri, name = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}", "killed"
    args = fit_args(synthetic_task, tiny_backbone, storage, uri, name, "--num-workers", "2", "--max-steps", "60",
                    "--eval-steps", "10", "--set", "log_steps=1", "--set", "max_failures=1")
    # rank 0 holds after step 25, before logging it; rank 1 goes on into that step's loss sum and waits there
    proc = start_fit([*args, *hooks(sleep_each_step(0.15), hold_until_teardown_once(25, rank=0))],
                     log=tmp_path / "job.log")
    holding = storage / name / ".holding-rank0"
    seen: dict[str, str] = {}  # every listener of the job's process tree: Ray's services and the 2-rank rendezvous
    try:
        def rank0_holds_at_25():
            seen.update(listeners(proc))
            return holding.is_file() and holding.read_text()

        rank0 = int(wait_for(lambda: registered(storage / name, 20) and rank0_holds_at_25(),
                             600, "a checkpoint at step 20 and rank 0 holding at step 25", proc))
        workers = wait_for(lambda: train_workers(proc), 30, "the Ray Train workers", proc)
        killed_after = max(e["step"] for e in journal(storage, name))
        [rank1] = [w for w in workers if w.pid != rank0]
        rank1.send_signal(signal.SIGKILL)
        watch(proc, tmp_path / "job.log", seen)
        assert proc.returncode == 0, (tmp_path / "job.log").read_text()[-4000:]
    finally:
        kill_tree(proc)
    assert len(seen) >= 5 and beyond_loopback(seen) == {}, seen  # nothing listens beyond loopback

    import json

    final = json.loads((checkpoints(storage, name)[-1] / "trainer_state.json").read_text())
    assert final["step"] == 60 and final["finished"] and len(final["resumed_at"]) == 1
    resumed_at = final["resumed_at"][0]
    entries = journal(storage, name)
    first = {e["step"]: e["values"] for e in entries if e["attempt"] == 0}
    second = {e["step"]: e["values"] for e in entries if e["attempt"] == 1}
    last_before = max(first)
    assert last_before == killed_after == 24  # the survivor logged no step 25 of its own after its peer died
    assert resumed_at >= 20  # never restarted from 0
    assert last_before - resumed_at <= 10  # at most one eval_steps interval redone
    killed_at = max(e["time"] for e in entries if e["attempt"] == 0)
    back_at = min(e["time"] for e in entries if e["attempt"] == 1)
    print(f"RECOVERY killed after step {last_before}, resumed at {resumed_at}, first new point "
          f"{back_at - killed_at:.1f} s after the last old one")
    replayed = sorted(set(first) & set(second))
    assert replayed and min(second) == resumed_at + 1
    for step in replayed:  # the same loss, bit for bit: data position, dropout RNG and optimizer state restored
        assert first[step]["train/loss"] == second[step]["train/loss"], step

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("adept").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 61))  # every step once: the replay wrote no second points
