"""A fit on several Ray nodes (Ray's multi-node test harness on this machine, the job joined through RAY_ADDRESS):
two DeepSpeed ZeRO-3 workers on two different nodes learn the task and listen on loopback only. Node loss:
test_node_loss.py and test_node_capacity.py (a file each, so a parallel test run spreads them over its workers).
"""

import subprocess

import pytest
from fit_helpers import checkpoints, fit_args, kill_tree, only_run, start_fit
from multinode import ZERO3_ON_TWO_NODES, beyond_loopback, listeners, trainer_state

pytestmark = [pytest.mark.scale, pytest.mark.slow]


def test_zero3_workers_on_two_nodes_learn_and_listen_on_loopback(cluster, synthetic_task, tiny_backbone, tmp_path):
    storage, uri, name = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}", "two-nodes"
    args = fit_args(synthetic_task, tiny_backbone, storage, uri, name, *ZERO3_ON_TWO_NODES, "--max-steps", "60",
                    "--eval-steps", "20", "--set", "log_steps=10")
    proc = start_fit(args, env=cluster.env(), log=tmp_path / "job.log")
    seen: dict[str, str] = {}
    try:
        while proc.poll() is None:  # the listeners of every harness process and of the job, while it runs
            seen.update(listeners(cluster.processes()))
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, (tmp_path / "job.log").read_text()[-4000:]
    assert len(seen) >= 10 and beyond_loopback(seen) == {}, beyond_loopback(seen) or seen

    final = checkpoints(storage, name)[-1]  # in the shared storage_path the workers of both nodes use
    state = trainer_state(final)
    assert final.name == "step_00000060_final" and [h["step"] for h in state["history"]] == [20, 40, 60]
    (placed,) = state["nodes"]  # one attempt: rank 0 and rank 1 on two different worker nodes
    assert len(set(placed)) == 2 and set(placed) == cluster.worker_node_ids, placed
    assert state["best_score"] >= 80.0  # chance is 50%
    assert "2 workers on 2 Ray nodes" in (tmp_path / "job.log").read_text()

    client, run = only_run(uri)
    assert run.info.status == "FINISHED" and run.data.params["zero_stage"] == "3"
    assert run.data.metrics["val/best"] == pytest.approx(state["best_score"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [10, 20, 30, 40, 50, 60]
