"""A packed sweep whose driver is killed mid-pack (the job and everything it started, its local Ray included,
SIGKILLed: a lost head machine) resumes by name: the same command (with `--trust-storage`, as a killed driver left
no manifest of Tune's files) restarts the pack from its last checkpoint, every member going on from there in its
own MLflow run, and runs the pack that had not started; each member's losses are logged once each."""

import csv
import json
import subprocess
import sys

import psutil
import pytest
import yaml
from fault_hooks import sleep_each_step
from fit_helpers import ROOT, finish, journal, registered, wait_for
from mlflow import MlflowClient

pytestmark = [pytest.mark.pack, pytest.mark.faults, pytest.mark.slow]

SWEEP = "killed"


def kill_everything(proc: subprocess.Popen) -> None:
    """The driver and every process under it (Ray's GCS, raylet, workers), at once."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=30)


def test_a_killed_packed_sweep_resumes_by_name(synthetic_task, tiny_backbone, tmp_path):
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "num_virtual_tokens": 4, "r": 8,
              "prompt_lr": 0.3, "offset_lr": 0.03, "warmup_steps": 0, "max_steps": 30, "eval_steps": 10,
              "log_steps": 1, "batch_size": 16, "max_source_length": 32, "max_target_length": 4, "deepspeed": False,
              "storage_path": str(storage), "mlflow_uri": uri, "experiment": "sweeps",
              "callbacks": [sleep_each_step(0.3)],
              "sweep": {"name": SWEEP, "space": {"prompt_lr": {"grid": [0.3, 0.2, 0.1, 0.05]}}, "scheduler": "fifo",
                        "num_samples": 1, "pack": 2, "max_concurrent_trials": 2, "cpus_per_worker": 1}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    trials = storage / SWEEP / "trials"
    command = [sys.executable, "jobs/tune_adept.py", "--config", str(path)]

    first = tmp_path / "first.log"
    proc = subprocess.Popen(command, cwd=ROOT, stdout=open(first, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        (pack,) = wait_for(lambda: [p for p in trials.glob(f"{SWEEP}-*") if registered(p, 10)][:1],
                           600, "the first pack's step-10 checkpoint", proc)
        wait_for(lambda: max((e["step"] for e in journal(trials, f"{pack.name}-m0")), default=0) >= 13, 120,
                 "step 13", proc)
    finally:
        kill_everything(proc)
    killed_after = max(e["step"] for e in journal(trials, f"{pack.name}-m0"))
    assert killed_after < 30

    again = tmp_path / "again.log"
    proc = subprocess.Popen([*command, "--trust-storage"], cwd=ROOT, stdout=open(again, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert finish(proc, 900, again) == 0, again.read_text()[-5000:]
    finally:
        kill_everything(proc)
    out = again.read_text()
    assert f"resuming sweep '{SWEEP}'" in out and "4 completed, 0 stopped early, 0 errored" in out, out[-3000:]

    final = json.loads((sorted(pack.glob("step_*_final"))[-1] / "trainer_state.json").read_text())
    assert final["step"] == 30 and len(final["resumed_at"]) == 1 and 10 <= final["resumed_at"][0] <= killed_after
    for k in range(2):  # each member went on from the pack's checkpoint
        resumed = [e["step"] for e in journal(trials, f"{pack.name}-m{k}") if e["attempt"] == 1]
        assert min(resumed) == final["resumed_at"][0] + 1 and max(resumed) == 30, (k, resumed)

    with open(storage / SWEEP / "summary" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["prompt_lr"]) for r in rows) == [0.05, 0.1, 0.2, 0.3]
    assert {r["status"] for r in rows} == {"completed"}

    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    parents = [r for r in found if r.data.tags.get("adept.kind") == "sweep"]
    children = [r for r in found if r.data.tags.get("adept.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}  # no member run twice
    for child in children:  # continuous losses: the resumed pack resent nothing and skipped nothing
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 31)), (child.info.run_name, sorted(steps))
