"""Every private Ray API this project touches, in one place, each with a test (tests/house/test_ray_compat.py).

Ray changes its internals between releases; a Ray upgrade that breaks one of these fails that test first,
with the name of the API, instead of failing a fit somewhere deep in a worker. Ray is imported lazily: the
driver's checks run before it is imported.
"""

from __future__ import annotations

import contextlib
import logging
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


def registered_checkpoints(run_folder) -> list[str] | None:
    """The checkpoint folder names Ray Train registered for a run, newest first (a re-run resumes from the first);
    [] when it has no snapshot yet, None when the snapshot is unreadable.

    Ray Train V2's checkpoint manager keeps them in `<run folder>/checkpoint_manager_snapshot.json`
    (`_CheckpointManagerState`), written when it registers a checkpoint: a folder the worker wrote but whose report
    the controller had not taken when the fit stopped (Ctrl-C between the two) is on disk, but not among them, and
    not what a re-run loads. Without a snapshot a re-run starts from scratch, whatever folders are on disk.
    """
    import json
    from pathlib import Path

    snapshot = Path(run_folder) / TRAIN_SNAPSHOT
    if not snapshot.exists():
        return []
    try:
        state = json.loads(snapshot.read_text())
        names = [r["checkpoint_dir_name"] for r in state["checkpoint_results"]]
        latest = (state.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ordered = [latest] if latest else []
    return ordered + [n for n in reversed(names) if n != latest]


TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # ray.train.v2._internal.constants


# ------------------------------------------------------------------------------ noise and Ctrl-C of the driver
STATE_API_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"


def pin_state_api(dashboard_url: str) -> None:
    """Point Ray's state API at this job's own cluster; set before `ray.init` starts it.

    Ray Train's PlacementGroupCleaner actor polls `ray.util.state.get_actor`, which finds its cluster through
    RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else by scanning the host for GCS processes
    (`ray.dashboard.utils.get_address_for_submission_client`); with a second local cluster on the host the scan
    raises "Found multiple active Ray instances" in the cleaner's thread, whose traceback every job then printed.
    The raylet, and every worker it starts, inherit this process's environment at start.
    """
    os.environ[STATE_API_ADDRESS_ENV] = dashboard_url


# Ray Train's controller asks the autoscaler for the fit's resources with a 5 s timeout; on a busy CPU (or with no
# autoscaler, a local cluster) that times out and it logs a warning *with a traceback*, which reads like the fit
# failing; the warning itself says it is safe to ignore when transient. The line stays, the traceback goes.
RESOURCE_REQUEST_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
_quiet_class = None


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def one_line_resource_request_warnings() -> None:
    logger = logging.getLogger(RESOURCE_REQUEST_LOGGER)
    if not any(isinstance(f, _NoTraceback) for f in logger.filters):
        logger.addFilter(_NoTraceback())


def quiet_controller_callback():
    """A Ray Train callback (RunConfig.callbacks) that does its work where it is unpickled: in the controller
    process, before the controller starts, it applies `one_line_resource_request_warnings` there."""
    global _quiet_class
    if _quiet_class is None:
        from ray.train import UserCallback

        class QuietController(UserCallback):
            def __reduce__(self):
                return (_quiet_controller, ())

        _quiet_class = QuietController
    return _quiet_class()


def _quiet_controller():
    one_line_resource_request_warnings()
    return quiet_controller_callback()


def on_train_sigint(trainer, callback) -> None:
    """Call `callback()` when Ray Train's own Ctrl-C handler runs during `trainer.fit()`.

    Ray Train V2's `DataParallelTrainer._register_sigint_handler` installs, inside fit(), a SIGINT handler that
    aborts the run (its controller actor exits) and then ends the driver with `sys.exit(0)`; the job saw an exit
    or a controller error it could not tell from a failure. The wrapper keeps Ray's graceful abort and records
    that the user asked for it, so the job can say how to resume.
    """
    import signal

    register = trainer._register_sigint_handler

    def register_and_watch(controller) -> None:
        register(controller)
        ray_handler = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            callback()
            if callable(ray_handler):
                ray_handler(signum, frame)

        signal.signal(signal.SIGINT, handler)

    trainer._register_sigint_handler = register_and_watch


@contextlib.contextmanager
def tune_interrupt_watch() -> Iterator[list]:
    """Within: Ray Tune's stop-on-SIGINT events (`ray.tune.tune._setup_signal_catching` returns the Event its
    Ctrl-C handler sets), so a sweep that Tune ended gracefully on Ctrl-C is told from one that finished.
    Yields a list; `any(e.is_set() for e in it)` afterwards says whether the user interrupted."""
    import importlib

    module = importlib.import_module("ray.tune.tune")  # the module, not the package's re-exported names
    original = module._setup_signal_catching
    events: list = []

    def watched(*args, **kwargs):
        event = original(*args, **kwargs)
        events.append(event)
        return event

    module._setup_signal_catching = watched
    try:
        yield events
    finally:
        module._setup_signal_catching = original
