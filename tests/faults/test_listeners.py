"""On a single machine nothing listens beyond loopback: every Ray service, the dashboard and its agents, and the
torch.distributed rendezvous of a 2-worker fit and of a sweep (checked in the process table while they run);
and a local Ray start that fails (another Ray holds the dashboard agent's port) is retried once on free ports."""

import ipaddress
import socket
import subprocess
import sys

import psutil
import pytest
import yaml
from fit_helpers import ROOT, fit_args, kill_tree, start_fit

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def listeners(proc) -> dict[str, str]:
    """LISTEN sockets of the job's process tree: address -> process name."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    pids = {p.pid: p for p in tree}
    found = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                found[f"{conn.laddr.ip}:{conn.laddr.port}"] = " ".join(pids[conn.pid].cmdline()[:3])[:120]
            except psutil.Error:
                continue
    return found


def watch(proc, timeout_s=900) -> dict[str, str]:
    seen = {}
    try:
        while proc.poll() is None:
            seen.update(listeners(proc))
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        kill_tree(proc)
    return seen


def beyond_loopback(seen: dict[str, str]) -> dict[str, str]:
    def loopback(addr: str) -> bool:
        ip = ipaddress.ip_address(addr.rsplit(":", 1)[0])
        return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback  # ::ffff:127.0.0.1 is 127.0.0.1

    return {addr: who for addr, who in seen.items() if not loopback(addr)}


def test_a_two_worker_fit_listens_on_loopback_only(synthetic_task, tiny_backbone, tmp_path):
    args = fit_args(synthetic_task, tiny_backbone, tmp_path / "runs", f"sqlite:///{tmp_path / 'm.db'}", "loop",
                    "--num-workers", "2", "--max-steps", "20", "--eval-steps", "10")
    proc = start_fit(args, env={"ADEPT_TEST_STEP_SLEEP_S": "0.2"}, log=tmp_path / "job.log")
    seen = watch(proc)
    assert proc.returncode == 0, (tmp_path / "job.log").read_text()[-3000:]
    assert len(seen) >= 5, seen  # the GCS, raylet, dashboard, agents, ... were observed
    assert beyond_loopback(seen) == {}, beyond_loopback(seen)


def test_a_sweep_listens_on_loopback_only(synthetic_task, tiny_backbone, tmp_path):
    config = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "num_virtual_tokens": 4, "r": 8,
              "max_steps": 10, "eval_steps": 10, "batch_size": 16, "max_source_length": 32, "max_target_length": 4,
              "deepspeed": False, "storage_path": str(tmp_path / "runs"), "mlflow_uri": f"sqlite:///{tmp_path / 'm.db'}",
              "sweep": {"name": "loop-sweep", "space": {"prompt_lr": {"grid": [0.3]}}, "scheduler": "fifo"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "jobs/tune_adept.py", "--config", str(tmp_path / "s.yaml")], cwd=ROOT,
                            stdout=open(tmp_path / "job.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    seen = watch(proc)
    assert proc.returncode == 0, (tmp_path / "job.log").read_text()[-3000:]
    assert len(seen) >= 5 and beyond_loopback(seen) == {}, seen


def test_local_ray_start_is_retried_when_the_agent_port_is_taken(tmp_path):
    """Another local Ray holding 127.0.0.1:52365 (the dashboard agent's fixed port) made starts fail."""
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind(("127.0.0.1", 52365))
        blocker.listen()
    except OSError:
        pytest.fail("port 52365 is already taken on this machine: the test needs it free to take it itself")
    probe = ("import logging, ray; from pipeline import logs; logs.configure('info')\n"
             "from pipeline.ray_setup import init_ray\ninit_ray(1, num_cpus=1)\n"
             "print('NODES', len(ray.nodes()), 'AGENT', ray._private.worker.global_worker.node.dashboard_agent_listen_port)")
    try:
        proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        blocker.close()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "NODES 1" in out and "AGENT 52365" not in out
