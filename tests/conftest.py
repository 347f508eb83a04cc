"""Test-wide settings (no hub access, loopback-only Ray, CPU DeepSpeed; see shared cpu-stack notes) and the
fixtures real fits share: a tiny Llama backbone folder, a learnable synthetic task, a real `mlflow server`."""

from __future__ import annotations

import json
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

# Seconds per test file, written by the suite itself at the end of every full run (`make test`, no selection): the
# longest files start first, so a parallel run does not end on one long file while the other workers idle.
DURATIONS = Path(__file__).with_name("durations.json")
_seconds: dict[str, float] = {}


def pytest_collection_modifyitems(config, items):
    """Longest files first (DURATIONS; files with `slow` tests and no measurement next), a stable sort that keeps each
    file's tests together. `make test` runs pytest-xdist with --dist loadfile --no-loadscope-reorder, which hands
    files out in this order (xdist's default reorder would start the files with the most tests, i.e. the fast ones)."""
    measured = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def weight(item) -> float:
        path = item.nodeid.split("::")[0]
        return measured.get(path, 60 if path in slow_files else 0)

    items.sort(key=lambda item: -weight(item))


_failed: set[str] = set()


def pytest_runtest_logreport(report):
    """Setup, call and teardown seconds per file (under xdist the controller receives every worker's reports); a file
    with a failure keeps its earlier measurement (a test that fails early says nothing about how long it takes)."""
    path = report.nodeid.split("::")[0]
    _seconds[path] = _seconds.get(path, 0.0) + report.duration
    if report.failed:
        _failed.add(path)


def pytest_sessionfinish(session, exitstatus):
    """After a full run (no -k/-m, no paths, not a worker), merge this run's seconds into DURATIONS."""
    config = session.config
    full = not (config.option.keyword or config.option.markexpr or config.args != config.getini("testpaths")
                or getattr(config.option, "lf", False))
    if hasattr(config, "workerinput") or not full or not _seconds or exitstatus not in (0, 1):
        return
    measured = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    measured.update({path: round(seconds) for path, seconds in _seconds.items() if path not in _failed})
    existing = {str(p.relative_to(DURATIONS.parent.parent)) for p in DURATIONS.parent.rglob("test_*.py")}
    ordered = dict(sorted(((k, v) for k, v in measured.items() if k in existing), key=lambda kv: -kv[1]))
    DURATIONS.write_text(json.dumps(ordered, indent=0) + "\n")


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
