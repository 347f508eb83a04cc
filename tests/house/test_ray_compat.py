"""Every private Ray API the project touches lives in `pipeline/core/ray_compat.py`, and each has a test here: a Ray
upgrade that moves or renames one fails in this file, by name, before it fails a fit."""

from __future__ import annotations

import ast
import inspect
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
