"""Shared by the fault, scale and ux tests: run jobs/train_adept.py as its own process (a real driver with its own Ray), watch
its storage, find its Ray Train workers, read its metrics journal."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def fit_args(task, backbone, storage, uri, name, *extra) -> list[str]:
    return ["--task", str(task), "--backbone", str(backbone), "--m", "4", "--r", "8", "--batch-size", "16",
            "--prompt-lr", "0.3", "--offset-lr", "0.03", "--storage-path", str(storage), "--mlflow-uri", uri,
            "--name", name, "--set", "warmup_steps=0", "--set", "max_source_length=32", "--set", "max_target_length=4",
            *extra]


def start_fit(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    """The job in its own session (so the test can clean up everything it started)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "jobs/train_adept.py", *args], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True)


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job exited ({proc.returncode}) before: {what}")
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for: {what}")


def finish(proc: subprocess.Popen, timeout_s: float, log: Path) -> int:
    """The job's exit status; a job still running after timeout_s fails the test with its log's tail."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise still_running(timeout_s, log) from None


def still_running(timeout_s: float, log: Path) -> AssertionError:
    return AssertionError(f"the job still ran {timeout_s} s later; its log ends:\n{log.read_text()[-8000:]}")


def checkpoints(storage: Path, name: str) -> list[Path]:
    return sorted((storage / name).glob("step_*"))


def registered(run_folder: Path, step: int) -> bool:
    """Ray Train registered the run's checkpoint of this step: a crash or kill from now on resumes from it (or a
    later one). Its folder is on disk earlier: the controller takes a worker's report at its next poll (every 2 s),
    and a fault before that loses the report."""
    from pipeline.core.ray_compat import registered_checkpoints

    return any(n.startswith(f"step_{step:08d}") for n in registered_checkpoints(run_folder) or [])


def train_workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The job's Ray Train worker processes (Ray names them ray::RayTrainWorker...)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def journal(storage: Path, name: str) -> list[dict]:
    path = storage / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def kill_tree(proc: subprocess.Popen) -> None:
    """Everything the job started (its session), never other processes."""
    try:
        group = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig in (15, 9):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        time.sleep(2)


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


def watch(proc, log: Path, seen: dict[str, str] | None = None, timeout_s: float = 900) -> dict[str, str]:
    """Collect the job's listeners until it exits (then clean up what it left); a job still running after
    timeout_s fails the test with its log's tail."""
    seen = {} if seen is None else seen
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise still_running(timeout_s, log)
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


def only_run(uri: str, experiment: str = "adept"):
    """The one MLflow run of `experiment` in this store (a resumed fit must not open a second one)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]
