"""Every private Ray API the project touches lives in `pipeline/core/ray_compat.py`, and each has a test here: a Ray
upgrade that moves or renames one fails in this file, by name, before it fails a fit."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

from pipeline.core import ray_compat

pytestmark = pytest.mark.house

ROOT = Path(__file__).resolve().parents[2]
COMPAT = ROOT / "pipeline" / "core" / "ray_compat.py"


def _private(dotted: str) -> bool:
    return dotted.split(".")[0] == "ray" and any(part.startswith("_") for part in dotted.split(".")[1:])


def test_no_module_outside_the_compat_module_uses_a_private_ray_name():
    found = []
    for folder in ("pipeline", "jobs", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in (COMPAT, Path(__file__).resolve()):  # the compat module and its own tests
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ray":
                    names = [f"ray.{node.attr}"]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if _private(n)]
            found += [f"{path.relative_to(ROOT)}: '{s}' in a string" for s in ("ray._private", "ray.train.v2._internal")
                      if s in path.read_text()]
    assert not found, "private Ray names outside pipeline/core/ray_compat.py:\n" + "\n".join(found)


def test_ray_params_takes_the_agent_ports():
    import ray._private.parameter as parameter

    original = parameter.RayParams
    wanted = {"dashboard_agent_listen_port", "metrics_agent_port", "runtime_env_agent_port"}
    assert wanted <= set(inspect.signature(original.__init__).parameters)
    with ray_compat.agent_ports(dashboard_agent_listen_port=50001, metrics_agent_port=50002,
                                runtime_env_agent_port=50003):
        params = parameter.RayParams()
        assert (params.dashboard_agent_listen_port, params.metrics_agent_port, params.runtime_env_agent_port) == (
            50001, 50002, 50003)
    assert parameter.RayParams is original  # restored


def test_dashboard_agent_port_reads_the_global_worker():
    import ray._private.node as node
    import ray._private.worker as worker

    # a connected process's global_worker has a `node` (a ray._private.node.Node) that knows the agent's port;
    # tests/faults/test_listeners.py reads it from a running cluster
    assert hasattr(worker, "global_worker") and "self.node" in inspect.getsource(worker)
    assert hasattr(node.Node, "dashboard_agent_listen_port")


def test_ray_train_torch_backend_pieces():
    backend, set_env, setup_group = ray_compat.torch_backend()
    assert callable(backend.on_start) and callable(backend.on_shutdown)
    assert {"backend", "world_rank", "world_size", "init_method", "timeout_s"} <= set(
        inspect.signature(setup_group).parameters)
    assert callable(set_env)


def test_worker_group_start_timeout_is_recognised_by_name():
    error_class = ray_compat.worker_group_start_timeout_class()
    assert error_class.__name__ == ray_compat.WORKER_GROUP_START_TIMEOUT
    assert ray_compat.is_worker_group_start_timeout(error_class(2))
    assert not ray_compat.is_worker_group_start_timeout(RuntimeError("x"))


def test_ray_train_file_logger_exists():
    (path,) = ray_compat.train_file_loggers()
    assert Path(path).is_file(), f"Ray Train's per-report logger moved: {path}"
    assert "getLogger(__file__)" in Path(path).read_text()


def test_restored_tuner_callbacks_can_be_replaced(tmp_path):
    from ray import tune

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[]))
    marker = [object()]
    assert ray_compat.set_restored_callbacks(tuner, marker)
    assert tuner._local_tuner._run_config.callbacks is marker


def test_cluster_yaml_validation_rejects_a_typo():
    config = {"cluster_name": "x", "max_workers": 1, "provider": {"type": "local", "head_ip": "127.0.0.1",
                                                                   "worker_ips": []},
              "auth": {"ssh_user": "u"}}
    ray_compat.validate_cluster_yaml(dict(config))
    with pytest.raises(Exception, match="max_workerz"):
        ray_compat.validate_cluster_yaml({**config, "max_workerz": 1})


def test_the_state_api_asks_the_pinned_dashboard(monkeypatch):
    """Ray Train's placement-group cleaner polls ray.util.state.get_actor; its address lookup takes
    RAY_API_SERVER_ADDRESS before scanning the host (which fails with two local clusters)."""
    from ray.dashboard.utils import get_address_for_submission_client
    from ray.util.state.api import StateApiClient

    assert "get_address_for_submission_client" in inspect.getsource(StateApiClient.__init__)
    monkeypatch.setenv(ray_compat.STATE_API_ADDRESS_ENV, "unset")  # restored after the test
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_compat.pin_state_api("http://127.0.0.1:8265")
    assert get_address_for_submission_client(None) == "http://127.0.0.1:8265"


def test_ray_trains_ctrl_c_handler_is_watched():
    import signal

    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    source = inspect.getsource(DataParallelTrainer._initialize_and_run_controller)
    assert "self._register_sigint_handler(controller)" in source  # installed per fit(), on the instance's method
    seen, called = [], []

    class Trainer:
        def _register_sigint_handler(self, controller):
            signal.signal(signal.SIGINT, lambda signum, frame: seen.append(controller))

    trainer = Trainer()
    ray_compat.on_train_sigint(trainer, lambda: called.append(True))
    before = signal.getsignal(signal.SIGINT)
    try:
        trainer._register_sigint_handler("controller")
        signal.raise_signal(signal.SIGINT)
        assert called == [True] and seen == ["controller"]  # ours first, then Ray's graceful abort
    finally:
        signal.signal(signal.SIGINT, before)


def test_tunes_ctrl_c_event_is_seen():
    import importlib
    import signal

    module = importlib.import_module("ray.tune.tune")
    assert "_setup_signal_catching()" in inspect.getsource(module.run)
    original = module._setup_signal_catching
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    try:
        with ray_compat.tune_interrupt_watch() as events:
            event = module._setup_signal_catching()
            assert not event.is_set()
            signal.raise_signal(signal.SIGINT)  # Tune's handler: set the event, give SIGINT back
        assert events == [event] and event.is_set()
        assert module._setup_signal_catching is original
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_the_resource_request_warning_keeps_its_line_without_the_traceback():
    import importlib
    import io
    import logging

    from ray import cloudpickle
    from ray.train import RunConfig, UserCallback

    source = inspect.getsource(importlib.import_module(ray_compat.RESOURCE_REQUEST_LOGGER))
    assert "Failed to send resource request" in source and "exc_info=True" in source
    logger = logging.getLogger(ray_compat.RESOURCE_REQUEST_LOGGER)
    callback = ray_compat.quiet_controller_callback()
    RunConfig(callbacks=[callback])  # Ray Train accepts it
    saved = list(logger.filters)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    try:
        assert isinstance(cloudpickle.loads(cloudpickle.dumps(callback)), UserCallback)  # as the controller does
        try:
            raise TimeoutError("5 s")
        except TimeoutError:
            logger.warning("Failed to send resource request for train-1.", exc_info=True)
        assert out.getvalue() == "Failed to send resource request for train-1.\n"
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = saved


def test_registered_checkpoints_read_ray_trains_snapshot(tmp_path):
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import (
        _CheckpointManagerState,
        _TrainingResultState,
    )

    assert CHECKPOINT_MANAGER_SNAPSHOT_FILENAME == ray_compat.TRAIN_SNAPSHOT
    results = [_TrainingResultState(checkpoint_dir_name=f"step_0000000{i}", metrics={"step": i}) for i in (5, 7, 9)]
    state = _CheckpointManagerState(checkpoint_results=results, checkpoint_report_indices=[0, 1, 2],
                                    latest_checkpoint_result=results[1], pending_training_results=[],
                                    pending_validation_specs=[], current_report_index=3,
                                    validated_checkpoint_dir_names=[], timed_out_validation_checkpoint_dir_names=[],
                                    failed_validation_checkpoint_dir_names=[])
    (tmp_path / ray_compat.TRAIN_SNAPSHOT).write_text(state.model_dump_json())  # as Ray Train writes it
    assert ray_compat.registered_checkpoints(tmp_path) == ["step_00000007", "step_00000009", "step_00000005"]
    assert ray_compat.registered_checkpoints(tmp_path / "absent") == []  # nothing registered: a re-run starts anew
    (tmp_path / ray_compat.TRAIN_SNAPSHOT).write_text(state.model_dump_json()[:40])  # cut short
    assert ray_compat.registered_checkpoints(tmp_path) is None


def test_a_checkpoint_on_disk_that_ray_never_registered_is_not_where_a_rerun_resumes(tmp_path):
    """Ctrl-C between the worker writing its first checkpoint and the controller registering it: the job must not
    promise a resume from that step (the re-run starts from scratch); once registered, it names the step."""
    from types import SimpleNamespace

    from pipeline.driver.launch import last_checkpoint_step
    from pipeline.worker.checkpoint import MANIFEST

    cfg = SimpleNamespace(storage_path=str(tmp_path), run_name="fit")
    folder = tmp_path / "fit" / "step_00000005"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(json.dumps({"step": 5}))
    assert last_checkpoint_step(cfg) is None
    (tmp_path / "fit" / ray_compat.TRAIN_SNAPSHOT).write_text(json.dumps(
        {"checkpoint_results": [{"checkpoint_dir_name": "step_00000005"}],
         "latest_checkpoint_result": {"checkpoint_dir_name": "step_00000005"}}))
    assert last_checkpoint_step(cfg) == 5
