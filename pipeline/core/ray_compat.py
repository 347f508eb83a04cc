"""Every private Ray API this project touches, in one place, each with a test (tests/house/test_ray_compat.py).

Ray changes its internals between releases; a Ray upgrade that breaks one of these fails that test first,
with the name of the API, instead of failing a fit somewhere deep in a worker. Ray is imported lazily: the
driver's checks run before it is imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def agent_ports(**ports: int) -> Iterator[None]:
    """`ray.init` with the dashboard agent / metrics / runtime-env agent ports chosen by us.

    ray.init has no argument for them, and their defaults are fixed (e.g. 52365), so a second local Ray on a host
    fails to start; `ray._private.parameter.RayParams` takes them.
    """
    import ray._private.parameter as parameter

    original = parameter.RayParams

    class _PortParams(original):
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, **ports})

    parameter.RayParams = _PortParams
    try:
        yield
    finally:
        parameter.RayParams = original


def dashboard_agent_port() -> int:
    """The dashboard agent's port of this process's Ray node (listener checks)."""
    import ray._private.worker

    return ray._private.worker.global_worker.node.dashboard_agent_listen_port


def torch_backend():
    """(Ray Train's torch backend class, its env-variable setter, its process-group setup function)."""
    from ray.train.torch.config import (
        _set_torch_distributed_env_vars,
        _setup_torch_process_group,
        _TorchBackend,
    )

    return _TorchBackend, _set_torch_distributed_env_vars, _setup_torch_process_group


WORKER_GROUP_START_TIMEOUT = "WorkerGroupStartupTimeoutError"  # ray.train.v2._internal.exceptions


def is_worker_group_start_timeout(err: BaseException | None) -> bool:
    """A worker group found no room within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (matched by name: the class is
    internal to Ray Train V2)."""
    return type(err).__name__ == WORKER_GROUP_START_TIMEOUT


def worker_group_start_timeout_class() -> type:
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return WorkerGroupStartupTimeoutError


def train_file_loggers() -> list[str]:
    """Ray Train modules that log through `logging.getLogger(__file__)`; found without importing Ray."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = list(spec.submodule_search_locations)[0]
    return [os.path.join(root, "train", "v2", "_internal", "execution", "context.py")]


def set_restored_callbacks(tuner, callbacks: list) -> bool:
    """`Tuner.restore` brings back the pickled callbacks of the first run; give the restored tuner fresh ones
    (a new clock, this process's MLflow settings). Returns whether the private attribute was there."""
    saved = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if saved is None:
        return False
    saved.callbacks = callbacks
    return True


def validate_cluster_yaml(config: dict) -> dict:
    """The autoscaler's own check of a cluster YAML (what `ray up` runs), returning the filled-in config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(config)
    validate_config(config)
    return config
