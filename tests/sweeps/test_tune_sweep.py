"""A real sweep in-process: Ray Tune trials that each run a Ray Train fit; a crashed trial is retried from its
Train checkpoint, a trial that keeps failing is reported (not dropped), and re-running the sweep resumes it."""

import json
from pathlib import Path

import pytest
import yaml
from fault_hooks import fail_once_at
from mlflow import MlflowClient

from adept.io import WEIGHTS_NAME
from jobs.tune_adept import main

pytestmark = pytest.mark.slow


def config(tmp_path, synthetic_task, tiny_backbone, sweep, callbacks=None):
    data = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "num_virtual_tokens": 4, "r": 8,
            "prompt_lr": 0.3, "offset_lr": 0.03, "warmup_steps": 0, "max_steps": 20, "eval_steps": 10, "log_steps": 10,
            "batch_size": 16, "max_source_length": 32, "max_target_length": 4, "deepspeed": False,
            "storage_path": str(tmp_path / "runs"), "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "sweeps", "callbacks": callbacks, "sweep": sweep}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("sweeps").experiment_id])
    parents = [r for r in found if r.data.tags.get("adept.kind") == "sweep"]
    children = [r for r in found if r.data.tags.get("adept.kind") == "trial"]
    return client, parents, children


def test_retry_error_report_and_resume(synthetic_task, tiny_backbone, tmp_path, monkeypatch, capsys):
    # Every trial crashes once at step 15 (Train itself does not retry: max_failures=0); Tune retries the trial,
    # whose Train run resumes from its step-10 checkpoint. batch_size=512 > 256 train rows fails every time.
    path = config(tmp_path, synthetic_task, tiny_backbone,
                  {"name": "crashy", "space": {"batch_size": {"grid": [16, 512]}}, "num_samples": 1,
                   "scheduler": "fifo", "max_failures": 1}, callbacks=[fail_once_at(15)])
    assert main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 completed, 0 stopped early, 1 errored" in out and "too few" in out
    assert "python jobs/register_best.py --sweep crashy" in out

    summary = list(csv_rows(tmp_path / "runs" / "crashy" / "summary" / "summary.csv"))
    by_bs = {row["batch_size"]: row for row in summary}
    assert by_bs["16"]["status"] == "completed" and by_bs["512"]["status"] == "error"
    assert "too few" in by_bs["512"]["error"]
    adapter = Path(by_bs["16"]["adapter"])
    assert (adapter / WEIGHTS_NAME).is_file()
    state = json.loads((adapter.parent / "trainer_state.json").read_text())
    assert state["step"] == 20 and state["resumed_at"] == [10]  # the retry continued, it did not restart
    assert (adapter.parents[1] / ".failure-injected-at-15").exists()

    client, parents, children = runs(tmp_path)
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trials_error"] == 1
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    done = next(c for c in children if c.data.params["batch_size"] == "16")
    assert parent.data.tags["best_run_id"] == done.info.run_id and done.info.status == "FINISHED"
    assert float(parent.data.tags["best_score"]) == done.data.metrics["val/best"]
    failed = next(c for c in children if c.data.params["batch_size"] == "512")
    assert failed.info.status == "FAILED" and "too few" in failed.data.tags["adept.error"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} >= {
        "sweep/summary.csv", "sweep/summary.json", "sweep/sweep_plot.png"}

    # The same sweep again: resumed (the errored trial is retried and fails again), nothing duplicated.
    assert main(["--config", str(path)]) == 0
    assert "resuming sweep 'crashy'" in capsys.readouterr().out
    _, parents_again, children_again = runs(tmp_path)
    assert [p.info.run_id for p in parents_again] == [parent.info.run_id]
    assert sorted(c.info.run_id for c in children_again) == sorted(c.info.run_id for c in children)


def csv_rows(path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)
