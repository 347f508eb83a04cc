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


def pytest_collection_modifyitems(config, items):
    """Files with `slow` tests first (a stable sort, files stay together), so a run reaches its long tests early.
    (pytest-xdist's file scheduling does not follow this order: seen in a 3-worker run.)"""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)


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
