"""The job as users run it: a real local Ray head (`ray start --head` on 127.0.0.1), `ray job submit` of
jobs/tune_adept.py on the tiny model/task, then the MLflow store, register_best.py and @champion's predict.

Everything this test starts (the head and what it spawns, in a session of their own) is stopped at the end,
also on failure; `ray stop` is never called, since it would stop every Ray cluster on the machine.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from adept.io import CONFIG_NAME, WEIGHTS_NAME

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on loopback with its own temp dir and ports; yields the jobs API address."""
    gcs, dashboard, client, agent_http, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = free_ports(9)
    temp = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}", "--num-cpus=2",
           "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}"]
    log = open(Path(temp) / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # 401 without the auth token: the dashboard is up
                break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed: {(Path(temp) / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(1)
        yield {"address": address, "env": env, "gcs": f"127.0.0.1:{gcs}"}
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _stop(proc):
    """SIGTERM lets `ray start --block` stop the processes it started; then the session's leftovers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # only the session `ray start` created, never other clusters
        except ProcessLookupError:
            return
        time.sleep(3)


def test_job_submit_sweep_register_predict(ray_head, synthetic_task, tiny_backbone, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "num_virtual_tokens": 4, "r": 8,
              "prompt_lr": 0.3, "offset_lr": 0.03, "warmup_steps": 0, "max_steps": 20, "eval_steps": 10,
              "log_steps": 10, "batch_size": 16, "max_source_length": 32, "max_target_length": 4,
              "deepspeed": False, "storage_path": str(tmp_path / "runs"), "mlflow_uri": uri, "experiment": "jobs",
              "sweep": {"name": "job-sweep", "space": {"m": {"grid": [2, 4]}, "prompt_lr": [0.3]}, "num_samples": 1,
                        "grace_period": 10, "zero_shot": True}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**ray_head["env"], "RAY_AUTH_MODE": "token", "RAY_API_SERVER_ADDRESS": ray_head["address"]}
    # RAY_ADDRESS: Ray's state API (Train's placement-group cleaner uses it) cannot tell which cluster it is
    # in when a machine runs several, as test machines do.
    runtime_env = {"env_vars": {"RAY_ADDRESS": ray_head["gcs"], "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
                                "HF_HUB_OFFLINE": "1",
                                "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
                   "excludes": [".venv", "ray_results", "mlruns", "*.db", "benchmarks/results", ".git"]}
    for _ in range(30):  # the dashboard answers before its job agent is up: Ray says "try again later"
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", ray_head["address"], "--submission-id",
             "adept-sweep-test", "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--",
             sys.executable, "jobs/tune_adept.py", "--config", str(path)],
            capture_output=True, text=True, env=env, timeout=900)
        output = submit.stdout + submit.stderr
        if "No available agent to submit job" not in output:
            break
        time.sleep(2)
    assert submit.returncode == 0, output[-4000:]
    assert "succeeded" in output.lower(), output[-4000:]
    assert "register the best adapter: python jobs/register_best.py --sweep job-sweep" in output
    assert "zero-shot val_accuracy" in output

    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    parent = next(r for r in found if r.data.tags.get("adept.kind") == "sweep")
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert parent.data.tags["best_run_id"] in {c.info.run_id for c in children}
    assert "zero_shot/accuracy" in parent.data.metrics and parent.data.metrics["sweep/trials"] == 2
    for child in children:
        assert child.info.status == "FINISHED"  # completed, or stopped early by ASHA: neither is a failure
        assert len(client.get_metric_history(child.info.run_id, "val/accuracy")) >= 1
        assert {a.path for a in client.list_artifacts(child.info.run_id, "best_adapter")} == {
            f"best_adapter/{WEIGHTS_NAME}", f"best_adapter/{CONFIG_NAME}"}
        if "adept.stopped_early" in child.data.tags:  # stopped by ASHA at its rung
            assert child.data.tags["adept.stopped_early"] == "asha" and "test/accuracy" not in child.data.metrics
        else:
            assert "test/accuracy" in child.data.metrics
    plot = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="sweep/sweep_plot.png",
                                                    tracking_uri=uri))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="sweep/summary.json", tracking_uri=uri)).read_text())
    assert len(table["data"]) == 2 and "val_accuracy" in table["columns"]

    register = subprocess.run([sys.executable, "jobs/register_best.py", "--sweep", "job-sweep", "--mlflow-uri", uri],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert register.returncode == 0, register.stderr[-3000:]
    assert "@champion moved to version 1" in register.stdout

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model("models:/adept-synthetic-sentiment@champion")
    predictions = model.predict(pd.DataFrame({"sentence": ["good great movie", "awful bad plot"]}))
    assert len(predictions) == 2 and set(predictions) <= {"negative", "positive"}
