"""What a user sees of a sweep, end to end (`jobs/tune_adept.py` as its own process, a fresh local Ray):
progress lines with ETA and evaluation messages, no bytecode dumps, each warning line at most once; in
MLflow readable run names, FINISHED for a completed and for an ASHA-stopped trial (tagged), metric keys
grouped by prefix, the standard source/user/commit tags, the task's splits as dataset inputs; and nothing of the
sweep's process tree listens beyond loopback."""

import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from fault_hooks import sleep_each_step
from fit_helpers import ROOT, beyond_loopback, watch
from mlflow import MlflowClient

pytestmark = [pytest.mark.ux, pytest.mark.slow]
RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?\([^)]*pid=\d+[^)]*\)(\x1b\[[0-9;]*m)?\s*")
BYTECODE = re.compile(r"\b(LOAD_DEREF|COPY_FREE_VARS|LOAD_FAST|RETURN_VALUE|LOAD_GLOBAL|MAKE_CELL)\b")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, synthetic_task, tiny_backbone):
    root = tmp_path_factory.mktemp("ux-sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "num_virtual_tokens": 4, "r": 8,
              "prompt_lr": 0.3, "offset_lr": 0.03, "warmup_steps": 0, "max_steps": 30, "eval_steps": 10,
              "log_steps": 5, "batch_size": 16, "max_source_length": 32, "max_target_length": 4, "deepspeed": False,
              "storage_path": str(root / "runs"), "mlflow_uri": uri, "experiment": "ux",
              "callbacks": [sleep_each_step(0.05)],
              # trial 0 learns; trial 1 (learning rates of 1e-7) is worse at the step-20 rung: ASHA stops it
              "sweep": {"name": "ux-sweep", "space": {"prompt_lr": [0.3, 1.0e-7], "offset_lr": [0.03, 1.0e-7]},
                        "points_to_evaluate": [{"prompt_lr": 0.3, "offset_lr": 0.03},
                                               {"prompt_lr": 1.0e-7, "offset_lr": 1.0e-7}],
                        "num_samples": 2, "scheduler": "asha", "grace_period": 20, "max_concurrent_trials": 1,
                        "zero_shot": True}}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    out = root / "job.log"
    proc = subprocess.Popen([sys.executable, "jobs/tune_adept.py", "--config", str(path)], cwd=ROOT,
                            stdout=open(out, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=os.environ.copy())
    seen = watch(proc, out)  # the listeners of the sweep's process tree while it runs
    return {"proc": proc, "out": out.read_text(), "uri": uri, "listeners": seen}


def test_the_job_output_reads_well(sweep):
    out = sweep["out"]
    assert sweep["proc"].returncode == 0, out[-5000:]
    assert not BYTECODE.search(out), [line for line in out.splitlines() if BYTECODE.search(line)][:5]
    assert re.search(r"step 10/30 \(33%\) · loss [\d.]+ · lr_prompt .* tok/s · [\d:]+ elapsed · ETA [\d:?]+", out)
    assert "validation: 64 rows ..." in out and "validation done in" in out and "test done in" in out
    assert re.search(r"sweep ux-sweep: \d/2 trials done, \d running .*ETA", out)
    assert "t00" in out  # Tune's own lines name trials readably, not _trial_driver_...
    assert "_trial_driver" not in out
    # neither Ray Train's per-report dump of the metrics dict nor MLflow's artifact progress bars
    assert "Reporting training result" not in out and "Downloading artifacts" not in out
    # nor Ray Train's controller announcing every resource request and worker group (its INFO lines)
    assert "Attempting to start training worker group" not in out and "Requesting resources" not in out
    # each warning line at most once (Ray collapses identical lines of its workers: "[repeated 2x ...]")
    warnings = Counter(RAY_PREFIX.sub("", line).strip() for line in out.splitlines()
                       if "Warning" in line or "WARNING" in line)
    assert not [w for w, n in warnings.items() if n > 1 and w], warnings.most_common(3)


def test_the_sweep_listens_on_loopback_only(sweep):
    assert len(sweep["listeners"]) >= 5 and beyond_loopback(sweep["listeners"]) == {}, sweep["listeners"]


def test_mlflow_runs_read_well(sweep):
    client = MlflowClient(sweep["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ux").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("adept.kind") == "sweep")
    trials = sorted((r for r in runs if r.data.tags.get("adept.kind") == "trial"), key=lambda r: r.info.run_name)
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials + [parent])
    names = [r.info.run_name for r in trials]
    assert [n[:9] for n in names] == ["t00 m4 r8", "t01 m4 r8"] and names[0][:16] != names[1][:16]  # distinct, short
    completed, stopped = trials  # t00: the learning rates that learn; t01: 1e-7, worse at the step-20 rung
    assert "test/accuracy" in completed.data.metrics and "adept.stopped_early" not in completed.data.tags
    assert stopped.data.tags["adept.stopped_early"] == "asha" and stopped.data.tags["adept.stopped_at_step"] == "20"
    for run in trials:
        keys = set(run.data.metrics)
        assert {"train/loss", "train/lr_prompt", "val/accuracy", "val/best", "perf/tokens_per_s"} <= keys
        assert not [k for k in keys if "/" not in k], keys  # every chart in a section
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "jobs/tune_adept.py" and tags["mlflow.user"]
        assert len(tags["mlflow.source.git.commit"]) >= 7 and tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"prompt_lr", "method", "r", "num_virtual_tokens", "trainable_params"} <= set(run.data.params)
        assert len(run.data.params) < 30  # the full config is an artifact, not 100 columns
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        contexts = {i.tags[0].value: i.dataset for i in inputs}
        assert set(contexts) == {"train", "validation", "test"}
        assert all(d.digest and d.name.startswith("synthetic-sentiment/") for d in contexts.values())
        assert {a.path for a in client.list_artifacts(run.info.run_id, "best_adapter")}
    assert parent.data.tags["best_run_id"] == completed.info.run_id
    assert {"sweep/trials", "zero_shot/accuracy"} <= set(parent.data.metrics)
