"""Capacity that never comes back: the fit fails after node_wait_s with a clear error, a FAILED MLflow run and a
checkpoint that the same --name resumes once a node is added (the same MLflow run, FINISHED then)."""

import time

import pytest
from fault_hooks import hooks, sleep_each_step
from fit_helpers import checkpoints, fit_args, journal, kill_tree, only_run, registered, start_fit, wait_for
from multinode import ZERO3_ON_TWO_NODES, trainer_state

from pipeline.worker import checkpoint as ckpt

pytestmark = [pytest.mark.scale, pytest.mark.slow]


def test_capacity_that_never_returns_fails_clearly_and_the_same_name_resumes(cluster, synthetic_task, tiny_backbone,
                                                                           tmp_path):
    storage, uri, name = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}", "no-capacity"
    args = fit_args(synthetic_task, tiny_backbone, storage, uri, name, *ZERO3_ON_TWO_NODES, "--max-steps", "40",
                    "--eval-steps", "10", "--set", "log_steps=1", "--set", "max_failures=1",
                    "--set", "node_wait_s=20")
    log = tmp_path / "job.log"
    proc = start_fit([*args, *hooks(sleep_each_step(0.15))], env=cluster.env(), log=log)
    try:
        wait_for(lambda: registered(storage / name, 20), 600,
                 "a checkpoint at step 20", proc)
        wait_for(lambda: max((e["step"] for e in journal(storage, name)), default=0) >= 25, 120, "step 25", proc)
        (placed,) = trainer_state(checkpoints(storage, name)[-1])["nodes"]
        cluster.remove_node(cluster.node(placed[1]))
        t_lost = time.monotonic()
        rc = proc.wait(timeout=600)
        failed_s = time.monotonic() - t_lost
    finally:
        kill_tree(proc)
    text = log.read_text()
    print(f"\n[no-capacity] the job exited {rc} {failed_s:.1f} s after the node was lost (node_wait_s=20)")
    assert rc == 1, text[-4000:]
    (error,) = [line for line in text.splitlines() if line.startswith("error:")]
    assert "could not place the fit's 2 worker(s)" in error and "node_wait_s=20 s" in error, error
    assert f"re-run with --name {name} to continue from the last checkpoint" in error, error
    assert 20 <= failed_s < 240

    client, run = only_run(uri)
    assert run.info.status == "FAILED" and "node_wait_s=20" in run.data.tags["adept.error"]
    last = checkpoints(storage, name)[-1]
    assert ckpt.latest_good(last) == last  # the newest checkpoint verifies: nothing was left half-written
    last_step = trainer_state(last)["step"]
    assert last_step >= 20 and not trainer_state(last)["finished"]

    new_node = cluster.add_node(cpus=1)  # capacity is back: the same command continues the fit
    again = start_fit(args, env=cluster.env(), log=tmp_path / "again.log")
    try:
        assert again.wait(timeout=900) == 0, (tmp_path / "again.log").read_text()[-4000:]
    finally:
        kill_tree(again)
    state = trainer_state(checkpoints(storage, name)[-1])
    assert state["step"] == 40 and state["finished"] and state["resumed_at"] == [last_step]
    assert new_node.node_id in state["nodes"][-1] and len(set(state["nodes"][-1])) == 2
    client, run = only_run(uri)  # the same MLflow run, FINISHED now
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 41))
