"""A tracking-server outage beyond the budget (tracking_outage_s) fails the job with the exact commands that log
what is missing; they work once the server is back. A real `mlflow server` on 127.0.0.1, stopped mid-fit.
(An outage within the budget: test_tracking_outage.py.)"""

import subprocess
import sys

import pytest
from fault_hooks import hooks, sleep_each_step
from fit_helpers import ROOT, checkpoints, fit_args, journal, kill_tree, only_run, start_fit, wait_for
from mlflow_server import MlflowServer

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_outage_beyond_the_budget_fails_with_the_fix(synthetic_task, tiny_backbone, tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    storage, name = tmp_path / "runs", "long-outage"
    args = fit_args(synthetic_task, tiny_backbone, storage, server.url, name, "--num-workers", "1", "--no-deepspeed",
                    "--max-steps", "30", "--eval-steps", "10", "--set", "log_steps=1", "--set", "tracking_outage_s=8")
    proc = start_fit([*args, *hooks(sleep_each_step(0.3))], log=tmp_path / "job.log")
    try:
        wait_for(lambda: checkpoints(storage, name), 600, "the first checkpoint", proc)
        server.stop()
        rc = proc.wait(timeout=900)
    finally:
        kill_tree(proc)
    log = (tmp_path / "job.log").read_text()
    assert rc == 1, log[-4000:]
    assert "python -m pipeline.tracking relog" in log and "python -m pipeline.tracking close" in log
    assert max(e["step"] for e in journal(storage, name)) == 30  # training itself finished

    server.start()
    try:
        relog = next(line for line in log.splitlines() if "pipeline.tracking relog" in line)
        command = relog[relog.index("python -m pipeline.tracking relog"):].split(" ;")[0].split()
        done = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        close = log[log.index("python -m pipeline.tracking close"):].split()[:10]
        done = subprocess.run([sys.executable, *close[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        client, run = only_run(server.url)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 31))
        assert run.info.status in ("FINISHED", "FAILED") and run.info.status != "RUNNING"
    finally:
        server.stop()
