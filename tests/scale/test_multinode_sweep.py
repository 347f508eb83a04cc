"""A Tune sweep on several Ray nodes: the node under one running trial dies; that trial is retried by Tune
(`max_failures` of the sweep) and its Train run resumes from its own checkpoint once there is room again, while
the other trial runs on undisturbed; the summary lists both trials, completed.

Placement is made deterministic by building the cluster in stages: the head alone (2 CPUs) takes both trials'
drivers (1 CPU each) and can never hold a Train worker (2 CPUs each, `cpus_per_worker`); then two 2-CPU worker
nodes are added, and each trial's single Train worker fills one of them. Losing one node leaves the retried trial
waiting for room (node_wait_s) until the other trial finishes and frees its node.

The same holds for packs (issue 19): two packs of two trials, each pack's one worker on its own node; the node
under one pack dies, Tune retries that pack, which resumes every member from the pack's checkpoint; the other pack
runs on undisturbed; every member's losses are logged once each.
"""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from fault_hooks import sleep_each_step
from fit_helpers import ROOT, finish, journal, kill_tree, registered, wait_for
from mlflow import MlflowClient
from multinode import LocalCluster, trainer_state

pytestmark = [pytest.mark.scale, pytest.mark.slow]

SWEEP = "nodes"


def train_controllers(cluster: LocalCluster) -> int:
    """Ray Train controllers alive in the cluster: one per trial whose fit has started."""
    count = 0
    for proc in cluster.processes():
        try:
            count += "TrainController" in " ".join(proc.cmdline())
        except psutil.Error:
            continue
    return count


def runs_with_checkpoint(trials, step: int):
    return [run for run in sorted(trials.glob(f"{SWEEP}-*")) if registered(run, step)]


def sweep_config(tmp_path, synthetic_task, tiny_backbone, **sweep) -> tuple[Path, Path, str]:
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "num_virtual_tokens": 4, "r": 8,
              "prompt_lr": 0.3, "offset_lr": 0.03, "warmup_steps": 0, "max_steps": 40, "eval_steps": 10,
              "log_steps": 1, "batch_size": 16, "max_source_length": 32, "max_target_length": 4, "deepspeed": False,
              "num_workers": 1, "node_wait_s": 300, "storage_path": str(storage), "mlflow_uri": uri,
              "experiment": "sweeps", "callbacks": [sleep_each_step(0.2)],
              "sweep": {"name": SWEEP, "space": {"prompt_lr": {"grid": [0.3, 0.2]}}, "scheduler": "fifo",
                        "num_samples": 1, "max_failures": 1, "max_concurrent_trials": 2, "cpus_per_worker": 2,
                        **sweep}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "sweep.yaml", storage / SWEEP / "trials", uri


def lose_the_node_under_one(config: Path, trials: Path, log: Path, journal_of) -> tuple[Path, str, int, float]:
    """Run the sweep on the head + two worker nodes; once a Train run (a trial's, or a pack's) has its step-10
    checkpoint and its journal (`journal_of(run)`) has reached step 15, remove the node under it. Returns (that
    run's folder, the lost node id, the last step journalled before the loss, seconds from the loss to the end)."""
    cluster = LocalCluster(head_cpus=2)
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "jobs/tune_adept.py", "--config", str(config)],
                                cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **cluster.env()})
        wait_for(lambda: train_controllers(cluster) == 2, 600, "both Train runs' drivers on the head", proc)
        cluster.add_node(cpus=2)
        cluster.add_node(cpus=2)
        (hit,) = wait_for(lambda: runs_with_checkpoint(trials, 10)[:1], 600, "a checkpoint at step 10", proc)
        wait_for(lambda: max((e["step"] for e in journal_of(hit)), default=0) >= 15, 120, "step 15", proc)
        ((lost,),) = trainer_state(hit / "step_00000010")["nodes"]
        removed_after = max(e["step"] for e in journal_of(hit))
        cluster.remove_node(cluster.node(lost))
        t_lost = time.monotonic()
        assert finish(proc, 900, log) == 0, log.read_text()[-5000:]
        done_s = time.monotonic() - t_lost
    finally:
        if proc is not None:
            kill_tree(proc)
        cluster.shutdown()
    print(f"\n[sweep-node-lost] removed the node under {hit.name} after step {removed_after}; the sweep finished "
          f"{done_s:.0f} s later")
    return hit, lost, removed_after, done_s


def test_a_node_lost_under_a_trial_retries_that_trial_only(synthetic_task, tiny_backbone, tmp_path):
    config, trials, uri = sweep_config(tmp_path, synthetic_task, tiny_backbone)
    log = tmp_path / "sweep.log"
    hit, lost, removed_after, _ = lose_the_node_under_one(config, trials, log, lambda run: journal(trials, run.name))
    storage = trials.parents[1]

    runs = sorted(trials.glob(f"{SWEEP}-*"))
    assert len(runs) == 2
    (other,) = [run for run in runs if run != hit]
    finals = {run: trainer_state(sorted(run.glob("step_*_final"))[-1]) for run in runs}
    retried, undisturbed = finals[hit], finals[other]
    assert retried["step"] == 40 and len(retried["resumed_at"]) == 1 and retried["resumed_at"][0] >= 10
    assert lost in retried["nodes"][0] and lost not in retried["nodes"][1]
    attempt0 = [e["step"] for e in journal(trials, hit.name) if e["attempt"] == 0]
    assert max(attempt0) >= removed_after and max(attempt0) - retried["resumed_at"][0] <= 10
    assert undisturbed["step"] == 40 and undisturbed["resumed_at"] == [] and len(undisturbed["nodes"]) == 1

    with open(storage / SWEEP / "summary" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {row["status"] for row in rows} == {"completed"}, rows
    assert "2 completed, 0 stopped early, 0 errored" in log.read_text()

    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    children = [r for r in found if r.data.tags.get("adept.kind") == "trial"]
    parents = [r for r in found if r.data.tags.get("adept.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:  # each trial's losses are continuous: the retry wrote no second points
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 41)), (child.info.run_name, sorted(steps))


@pytest.mark.pack
def test_a_node_lost_under_a_pack_retries_that_pack_only(synthetic_task, tiny_backbone, tmp_path):
    # 4 trials in 2 packs of 2; a pack stands in for 2 trials: its one worker gets 2 × 1 CPU (a worker node)
    config, trials, uri = sweep_config(tmp_path, synthetic_task, tiny_backbone, pack=2, max_concurrent_trials=4,
                                       cpus_per_worker=1, space={"prompt_lr": {"grid": [0.3, 0.2, 0.1, 0.05]}})
    log = tmp_path / "sweep.log"
    hit, lost, removed_after, _ = lose_the_node_under_one(config, trials, log,
                                                          lambda pack: journal(trials, f"{pack.name}-m0"))
    packs = sorted(run for run in trials.glob(f"{SWEEP}-*") if list(run.glob("step_*")))
    assert len(packs) == 2
    (other,) = [pack for pack in packs if pack != hit]
    finals = {pack: trainer_state(sorted(pack.glob("step_*_final"))[-1]) for pack in packs}
    retried, undisturbed = finals[hit], finals[other]
    assert retried["step"] == 40 and len(retried["resumed_at"]) == 1 and retried["resumed_at"][0] >= 10
    assert lost in retried["nodes"][0] and lost not in retried["nodes"][1]
    assert [m["status"] for m in retried["members"]] == ["finished", "finished"]
    for k in range(2):  # every member of the retried pack went on from the pack's checkpoint, not from step 0
        attempts = {e["attempt"] for e in journal(trials, f"{hit.name}-m{k}")}
        resumed = [e["step"] for e in journal(trials, f"{hit.name}-m{k}") if e["attempt"] == 1]
        assert attempts == {0, 1} and min(resumed) == retried["resumed_at"][0] + 1, (k, resumed)
    assert undisturbed["step"] == 40 and undisturbed["resumed_at"] == [] and len(undisturbed["nodes"]) == 1

    with open(trials.parent / "summary" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {row["status"] for row in rows} == {"completed"}, rows
    assert "4 completed, 0 stopped early, 0 errored" in log.read_text()

    client = MlflowClient(uri)
    children = [r for r in client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
                if r.data.tags.get("adept.kind") == "trial"]
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    for child in children:  # each member's losses are continuous: the pack's retry wrote no second points
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 41)), (child.info.run_name, sorted(steps))
