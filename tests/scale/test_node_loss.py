"""A node lost mid-fit (rank 0's: the rank that writes checkpoints and logs) is replaced and the fit resumes from
its last checkpoint on the new worker group: the step counter never restarts, at most one eval interval is redone,
replayed steps compute the same losses, the best adapter reproduces its score, MLflow keeps one run with every
step once."""

import time

import pytest
from fault_hooks import hooks, sleep_each_step
from fit_helpers import checkpoints, fit_args, journal, kill_tree, only_run, registered, start_fit, wait_for
from multinode import ZERO3_ON_TWO_NODES, reproduces_best_score, trainer_state

pytestmark = [pytest.mark.scale, pytest.mark.slow]


def test_lost_node_is_replaced_and_the_fit_resumes_from_its_last_checkpoint(cluster, synthetic_task, tiny_backbone,
                                                                            tmp_path):
    storage, uri, name = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}", "node-lost"
    args = fit_args(synthetic_task, tiny_backbone, storage, uri, name, *ZERO3_ON_TWO_NODES, "--max-steps", "60",
                    "--eval-steps", "10", "--set", "log_steps=1", "--set", "max_failures=1",
                    "--set", "node_wait_s=300")
    proc = start_fit([*args, *hooks(sleep_each_step(0.15))], env=cluster.env(), log=tmp_path / "job.log")
    try:
        wait_for(lambda: registered(storage / name, 20), 600,
                 "a checkpoint at step 20", proc)
        wait_for(lambda: max((e["step"] for e in journal(storage, name)), default=0) >= 25, 120, "step 25", proc)
        (placed,) = trainer_state(checkpoints(storage, name)[-1])["nodes"]
        lost = placed[0]  # rank 0's node: the rank that writes checkpoints, the journal and the MLflow logs
        (survivor,) = set(placed) - {lost}
        removed_after = max(e["step"] for e in journal(storage, name))
        cluster.remove_node(cluster.node(lost))
        t_lost = time.monotonic()
        time.sleep(5)  # the replacement takes a while to arrive
        # two CPUs: only STRICT_SPREAD keeps the new worker group on two nodes (PACK would put both ranks here)
        replacement = cluster.add_node(cpus=2)
        wait_for(lambda: any(e["attempt"] == 1 for e in journal(storage, name)), 600, "a step of the resumed fit",
                 proc)
        resumed_s = time.monotonic() - t_lost
        assert proc.wait(timeout=900) == 0, (tmp_path / "job.log").read_text()[-4000:]
    finally:
        kill_tree(proc)
    print(f"\n[node-lost] removed rank 0's node after step {removed_after}; first resumed step "
          f"{resumed_s:.1f} s after the loss (replacement added after 5 s)")

    final = checkpoints(storage, name)[-1]
    state = trainer_state(final)
    assert state["step"] == 60 and state["finished"] and len(state["resumed_at"]) == 1
    resumed_at = state["resumed_at"][0]
    assert resumed_at >= 20  # the step counter never restarted from 0
    first, second = state["nodes"]
    assert lost in first and lost not in second
    assert set(second) == {survivor, replacement.node_id}, second  # two nodes again, the new one among them

    entries = journal(storage, name)
    before = {e["step"]: e["values"] for e in entries if e["attempt"] == 0}
    after = {e["step"]: e["values"] for e in entries if e["attempt"] == 1}
    assert max(before) >= removed_after and max(before) - resumed_at <= 10  # at most one eval_steps interval lost
    assert min(after) == resumed_at + 1 and max(after) == 60
    replayed = sorted(set(before) & set(after))
    for step in replayed:  # the new worker group recomputes the same losses (data position, RNG, AdamW restored)
        assert after[step]["train/loss"] == pytest.approx(before[step]["train/loss"], rel=1e-6), step

    reproduces_best_score(synthetic_task, tiny_backbone, final)
    client, run = only_run(uri)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 61))  # continuous, every step exactly once
