"""Ray for the jobs: a local cluster that listens on loopback only and retries its start, or the cluster in
RAY_ADDRESS; and a torch process group that opens no TCP listener on a single machine.

Order matters: `use_loopback()` must run before the first `import ray` (Ray reads the variables at import
time), so jobs call it first thing after parsing their arguments.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass

from pipeline.core import ray_compat
from pipeline.core.errors import UserError
from pipeline.core.ray_compat import agent_ports

log = logging.getLogger("adept")

LOOPBACK_ENV = {
    # Ray maps 127.0.0.1 back to the external address unless this is 0; then every service binds loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Ray Train polls its workers every 2 s by default: each report() then costs ~1.6 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
}


class RayStartError(UserError):
    """A local Ray cluster could not be started (twice); the message says why."""


def use_loopback() -> None:
    """Before `import ray`, for a cluster this process starts itself (no RAY_ADDRESS): loopback only."""
    if os.environ.get("RAY_ADDRESS"):
        return
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(num_workers: int, num_cpus: int | None = None) -> None:
    """Connect to the cluster in RAY_ADDRESS (e.g. under `ray job submit`), else start a local one on loopback.

    A local cluster takes free ports for its dashboard and agents (Ray's defaults are fixed, e.g. the
    dashboard agent's 52365, so a second local Ray on the host - another job, a test - would fail to start).
    A start that fails anyway (a port taken between choosing and binding it) is retried once on new free
    ports; a second failure raises `RayStartError`.
    """
    use_loopback()
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    cpus = num_cpus or max(os.cpu_count() or 1, num_workers + 1)
    try:
        _start_local(ray, cpus)
    except Exception as first:  # noqa: BLE001 - Ray raises several types for a failed start
        log.warning(f"[adept] local Ray did not start ({_first_line(first)}); retrying once on new free ports")
        ray.shutdown()
        try:
            _start_local(ray, cpus)
        except Exception as second:  # noqa: BLE001
            ray.shutdown()
            raise RayStartError(f"a local Ray cluster did not start twice: {_first_line(first)} / then "
                                f"{_first_line(second)}; fix: stop stale Ray processes (ray stop), free the "
                                "ports, or start a cluster yourself and set RAY_ADDRESS.") from second


def _start_local(ray, cpus: int) -> None:
    quiet = os.environ.get("ADEPT_LOG_LEVEL", "info") in ("warning", "error")
    kwargs = {"num_cpus": cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1", "log_to_driver": True,
              "logging_level": logging.WARNING if quiet else logging.INFO}
    ports = iter(_free_ports(4))
    chosen = {"dashboard_agent_listen_port": next(ports), "metrics_agent_port": next(ports),
              "runtime_env_agent_port": next(ports)}
    dashboard = next(ports)
    # Ray's state API, polled by Ray Train's placement-group cleaner, would scan the host for clusters and fail
    # loudly when it finds two (another job, a test): it asks this one's dashboard instead.
    ray_compat.pin_state_api(f"http://127.0.0.1:{dashboard}")
    with agent_ports(**chosen):  # ray.init has no argument for the agents' ports
        # "local": a new cluster, even where a `ray start` on this host left its address for ray.init to join
        ray.init(address="local", dashboard_port=dashboard, **kwargs)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def on_loopback() -> bool:
    """Whether this process's Ray cluster is confined to this machine's loopback interface."""
    import ray

    return all(node.get("NodeManagerAddress", "").startswith("127.") for node in ray.nodes() if node.get("Alive"))


# ---------------------------------------------------------------------------------------- torch.distributed
def torch_config(use_gpu: bool = False):
    """Ray Train's TorchConfig; on a loopback CPU cluster one whose rendezvous is a file, not a TCP listener."""
    from ray.train.torch import TorchConfig

    if use_gpu or not on_loopback():  # NCCL, or several machines: Ray's own TCP rendezvous
        return TorchConfig()
    return _loopback_torch_config_class()()


def _loopback_torch_config_class():
    from ray.train.torch import TorchConfig

    torch_backend, set_env_vars, setup_process_group = ray_compat.torch_backend()

    class _FileStoreBackend(torch_backend):
        """Ray's torch backend, with a FileStore rendezvous and gloo bound to `lo` (all ranks on one machine)."""

        def on_start(self, worker_group, backend_config):
            store = os.path.join(tempfile.gettempdir(), f"adept-rendezvous-{uuid.uuid4().hex}")
            self._store = store
            worker_group.execute(_loopback_env)
            worker_group.execute(set_env_vars)
            futures = [worker_group.execute_single_async(i, setup_process_group, backend="gloo", world_rank=i,
                                                         world_size=len(worker_group), init_method=f"file://{store}",
                                                         timeout_s=backend_config.timeout_s)
                       for i in range(len(worker_group))]
            import ray

            ray.get(futures)

        def on_shutdown(self, worker_group, backend_config):
            # torch deletes the file only when every rank exits cleanly; killed workers leave it behind
            from ray.exceptions import RayActorError

            try:
                super().on_shutdown(worker_group, backend_config)
            except RayActorError as err:
                # The workers are gone already (a sweep that ends while ASHA's last stopped trial shuts down, a
                # killed node): their process group went with them. Ray Train would print this as a traceback.
                log.debug(f"[adept] worker group already gone at shutdown: {type(err).__name__}")
            finally:
                store = getattr(self, "_store", None)
                if store and os.path.exists(store):
                    os.remove(store)

    @dataclass
    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _FileStoreBackend

    return LoopbackTorchConfig


def _loopback_env() -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pair sockets on 127.0.0.1, not on every interface
