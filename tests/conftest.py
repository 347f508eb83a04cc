"""Test-wide settings (no hub access, loopback-only Ray, CPU DeepSpeed; see shared cpu-stack notes) and the
fixtures real fits share: a tiny Llama backbone folder, a learnable synthetic task, a real `mlflow server`."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray binds 127.0.0.1 only; never set on real clusters
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)

# `tests/tiny.py` and `tests/synthetic.py` are imported as `tiny` / `synthetic` by every test package
# (tests/ is on pytest's pythonpath, see pyproject.toml).
from mlflow_server import MlflowServer  # noqa: E402
from synthetic import write_backbone, write_task  # noqa: E402

# Seconds per file in a 3-worker run of the suite (2026-12-02, this project's 2-core machine, `--durations`): the
# longest files start first, so a parallel run does not end on one long file while the other workers idle.
MEASURED_S = {
    "tests/sweeps/test_ray_job_submit.py": 540, "tests/scale/test_node_capacity.py": 414,
    "tests/scale/test_multinode_sweep.py": 369, "tests/faults/test_tracking_outage.py": 355,
    "tests/ux/test_sweep_experience.py": 349, "tests/faults/test_worker_kill.py": 344,
    "tests/benchmarks/test_benchmark_smoke.py": 341, "tests/training/test_train_resume.py": 339,
    "tests/training/test_train_job.py": 333, "tests/faults/test_tracking_outage_budget.py": 265,
    "tests/sweeps/test_tune_sweep.py": 250, "tests/training/test_examples.py": 246,
    "tests/scale/test_multinode_fit.py": 217, "tests/scale/test_node_loss.py": 196, "tests/scale/test_bf16.py": 190,
    "tests/benchmarks/test_benchmark_fit_item.py": 158, "tests/faults/test_divergence.py": 104,
    "tests/scale/test_zero3_equality.py": 91,
}


def pytest_collection_modifyitems(config, items):
    """Longest files first (MEASURED_S; other files with `slow` tests next), a stable sort that keeps each file's
    tests together. `make test` runs pytest-xdist with --dist loadfile --no-loadscope-reorder, which hands files
    out in this order (xdist's default reorder would start the files with the most tests, i.e. the fast ones)."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def weight(item) -> float:
        path = item.nodeid.split("::")[0]
        return MEASURED_S.get(path, 60 if path in slow_files else 0)

    items.sort(key=lambda item: -weight(item))


@pytest.fixture(scope="session")
def synthetic_task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return write_backbone(tmp_path_factory.mktemp("backbone"))


@pytest.fixture
def no_ray():
    """For tests that check nothing starts Ray: an earlier test in the session may have left it running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _shutdown_ray():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a sqlite store; stopped at the end of the session."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server.url
    server.stop()
