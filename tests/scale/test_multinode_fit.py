"""A fit on several Ray nodes (Ray's multi-node test harness on this machine, the job joined through RAY_ADDRESS):
two DeepSpeed ZeRO-3 workers on two different nodes learn the task and listen on loopback only; a node lost mid-fit
is replaced and the fit resumes from its last checkpoint on the new worker group; a node that never comes back
fails the fit after node_wait_s with a clear error, a FAILED MLflow run and a checkpoint the same --name resumes.

The head holds no CPU (the job's driver and Ray Train's controller need none), each worker node one: Train's two
1-CPU workers can only run on two different nodes, and losing one leaves no room until a node is added.
"""

import subprocess
import time

import pytest
from fit_helpers import checkpoints, fit_args, journal, kill_tree, start_fit, wait_for
from mlflow import MlflowClient
from multinode import LocalCluster, beyond_loopback, listeners, trainer_state
from transformers import AutoModelForCausalLM, AutoTokenizer

from adept import AdeptModel
from pipeline import checkpoint as ckpt
from pipeline.config import TrainConfig
from pipeline.evaluation import EvalConfig, evaluate
from pipeline.setup import resolve_task, tokenize_config

pytestmark = [pytest.mark.scale, pytest.mark.slow]

ZERO3_ON_TWO_NODES = ("--num-workers", "2", "--zero-stage", "3", "--set", "placement_strategy=STRICT_SPREAD")


@pytest.fixture
def cluster():
    harness = LocalCluster(head_cpus=0)
    try:
        harness.add_node(cpus=1)
        harness.add_node(cpus=1)
        yield harness
    finally:
        harness.shutdown()


def only_run(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("adept").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def reproduces_best_score(task, backbone, final) -> None:
    """The best adapter, reloaded here onto a fresh backbone, scores what the fit reported on validation."""
    state = trainer_state(final)
    model = AdeptModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone), final / "best_adapter")
    cfg = TrainConfig(task=str(task), backbone=str(backbone), max_source_length=32, max_target_length=4, r=8,
                      num_virtual_tokens=4)
    spec = resolve_task(cfg)
    result = evaluate(model, AutoTokenizer.from_pretrained(backbone), spec, spec.get_split("validation"),
                      EvalConfig(tokenize=tokenize_config(cfg, "causal"), eval_mode="rank"))
    assert result.score == pytest.approx(state["best_score"], abs=1e-6)


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


def test_lost_node_is_replaced_and_the_fit_resumes_from_its_last_checkpoint(cluster, synthetic_task, tiny_backbone,
                                                                            tmp_path):
    storage, uri, name = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}", "node-lost"
    args = fit_args(synthetic_task, tiny_backbone, storage, uri, name, *ZERO3_ON_TWO_NODES, "--max-steps", "60",
                    "--eval-steps", "10", "--set", "log_steps=1", "--set", "max_failures=1",
                    "--set", "node_wait_s=300")
    proc = start_fit(args, env={**cluster.env(), "ADEPT_TEST_STEP_SLEEP_S": "0.15"}, log=tmp_path / "job.log")
    try:
        wait_for(lambda: any(p.name.startswith("step_00000020") for p in checkpoints(storage, name)), 600,
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


def test_capacity_that_never_returns_fails_clearly_and_the_same_name_resumes(cluster, synthetic_task, tiny_backbone,
                                                                           tmp_path):
    storage, uri, name = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}", "no-capacity"
    args = fit_args(synthetic_task, tiny_backbone, storage, uri, name, *ZERO3_ON_TWO_NODES, "--max-steps", "40",
                    "--eval-steps", "10", "--set", "log_steps=1", "--set", "max_failures=1",
                    "--set", "node_wait_s=20")
    log = tmp_path / "job.log"
    proc = start_fit(args, env={**cluster.env(), "ADEPT_TEST_STEP_SLEEP_S": "0.15"}, log=log)
    try:
        wait_for(lambda: any(p.name.startswith("step_00000020") for p in checkpoints(storage, name)), 600,
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
