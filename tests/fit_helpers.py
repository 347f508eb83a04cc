"""Shared by the fault, scale and ux tests: run jobs/train_adept.py as its own process (a real driver with its own Ray), watch
its storage, find its Ray Train workers, read its metrics journal."""

from __future__ import annotations

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


def checkpoints(storage: Path, name: str) -> list[Path]:
    return sorted((storage / name).glob("step_*"))


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
