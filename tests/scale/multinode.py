"""Several Ray nodes on this machine: Ray's own test harness (`ray.cluster_utils.Cluster`), every node a separate
raylet on 127.0.0.1. A job joins it as a real cluster (RAY_ADDRESS); the test removes and adds nodes under it.

The harness stays private to the test: its own RAY_TMPDIR (sessions, sockets and the `ray_current_cluster` file
that a plain `ray.init()` on this host would otherwise join), free ports for the head's dashboard agent (never the
fixed 52365 another local Ray may hold), no dashboard. `shutdown()` stops every process it started, by id.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import psutil


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# Train's two workers under ZeRO-3, one per node (a lost node then leaves one of them without a place)
ZERO3_ON_TWO_NODES = ("--num-workers", "2", "--zero-stage", "3", "--set", "placement_strategy=STRICT_SPREAD")


class LocalCluster:
    """A head (the job's driver and Ray Train's controller; `head_cpus` CPUs) plus worker nodes added one by one.

    Worker nodes get a custom resource `adept_node_<k>` (k = 1, 2, ... in the order they were added), so a test
    can tell them apart in `ray.cluster_resources()`; placement itself is left to Ray.
    """

    def __init__(self, head_cpus: int = 0):
        from ray.cluster_utils import Cluster

        # Short (Unix socket paths must stay under 108 bytes) and ours alone.
        self.tmp = tempfile.mkdtemp(prefix="adept-rs-", dir="/tmp")
        self._saved_tmpdir = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = self.tmp
        self._added = 0
        agent, metrics, runtime_env = free_ports(3)
        try:
            self.cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
                "num_cpus": head_cpus, "include_dashboard": False, "dashboard_agent_listen_port": agent,
                "metrics_agent_port": metrics, "runtime_env_agent_port": runtime_env})
        except BaseException:
            self._restore_env()
            raise

    @property
    def address(self) -> str:
        return self.cluster.address

    def env(self) -> dict[str, str]:
        """What a job needs to join this cluster instead of starting its own."""
        return {"RAY_ADDRESS": self.address, "RAY_TMPDIR": self.tmp}

    def add_node(self, cpus: int = 1):
        self._added += 1
        node = self.cluster.add_node(num_cpus=cpus, resources={f"adept_node_{self._added}": 1})
        self.cluster.wait_for_nodes()
        return node

    def remove_node(self, node) -> float:
        """Kill every process of `node` (raylet, its workers): a lost machine. Returns the seconds it took."""
        t0 = time.monotonic()
        self.cluster.remove_node(node, allow_graceful=False)
        return time.monotonic() - t0

    def node(self, node_id: str):
        found = [n for n in self.cluster.worker_nodes if n.node_id == node_id]
        assert found, f"node {node_id} is not a live worker node of the harness"
        return found[0]

    @property
    def worker_node_ids(self) -> set[str]:
        return {n.node_id for n in self.cluster.worker_nodes}

    def processes(self) -> list[psutil.Process]:
        """Every process the harness started (GCS, raylets, agents) and their children (Ray workers)."""
        pids = {info.process.pid for node in self.cluster.list_all_nodes()
                for infos in node.all_processes.values() for info in infos}
        found = {}
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                found[pid] = proc
                found.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.Error:
                continue
        return list(found.values())

    def shutdown(self) -> None:
        leftovers = self.processes()
        try:
            self.cluster.shutdown()
        finally:
            _, alive = psutil.wait_procs(leftovers, timeout=15)
            for proc in alive:  # workers whose raylet is gone exit on their own; these did not
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            self._restore_env()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _restore_env(self) -> None:
        if self._saved_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = self._saved_tmpdir


def listeners(procs: list[psutil.Process]) -> dict[str, str]:
    """LISTEN sockets of these processes: address -> process name."""
    by_pid = {p.pid: p for p in procs}
    found = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in by_pid:
            try:
                found[f"{conn.laddr.ip}:{conn.laddr.port}"] = " ".join(by_pid[conn.pid].cmdline()[:2])[:100]
            except psutil.Error:
                continue
    return found


def beyond_loopback(seen: dict[str, str]) -> dict[str, str]:
    return {a: who for a, who in seen.items() if not _loopback(a.rsplit(":", 1)[0])}


def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)  # gRPC servers listen on ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def reproduces_best_score(task, backbone, final) -> None:
    """The best adapter, reloaded here onto a fresh backbone, scores what the fit reported on validation."""
    import pytest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adept import AdeptModel
    from pipeline.core.config import TrainConfig
    from pipeline.core.evaluation import EvalConfig, evaluate
    from pipeline.core.resolve import resolve_task, tokenize_config

    state = trainer_state(final)
    model = AdeptModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone), final / "best_adapter")
    cfg = TrainConfig(task=str(task), backbone=str(backbone), max_source_length=32, max_target_length=4, r=8,
                      num_virtual_tokens=4)
    spec = resolve_task(cfg)
    result = evaluate(model, AutoTokenizer.from_pretrained(backbone), spec, spec.get_split("validation"),
                      EvalConfig(tokenize=tokenize_config(cfg, "causal"), eval_mode="rank"))
    assert result.score == pytest.approx(state["best_score"], abs=1e-6)
