"""Driver side of a fit: check everything a user can get wrong, then launch Ray Train.

`prepare(cfg)` runs before Ray starts a worker: it resolves the task, the backbone (downloading the
offline alias once), derives r from the budget, and checks the storage path and the MLflow store.
`make_trainer` / `fit` then build the `TorchTrainer` (Ray Train V2) around `train_loop_per_worker`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from adept import budget_rank
from pipeline.config import TrainConfig, driver_env
from pipeline.data import fixed_length
from pipeline.tracking import check_tracking_server, finish_run, git_commit, start_or_resume_run


@dataclass
class PreparedRun:
    config: TrainConfig  # with absolute paths: Ray workers run in another working directory
    r: int | None
    hidden_size: int
    kind: str
    trainable_params: int
    tracking_uri: str
    # How to find the backbone again elsewhere (an alias or HF id as given, else the absolute folder),
    # and the task's registry name (a custom task's `name`, not its YAML path): recorded as MLflow tags.
    backbone_ref: str | None = None
    task_name: str | None = None

    def loop_config(self, mlflow_run_id: str | None) -> dict:
        # ADEPT_* settings (cache dir, test hooks) reach workers on any node, and in a local cluster
        # that was started before they were set.
        return {"train": self.config.to_dict(), "r": self.r, "mlflow_uri": self.tracking_uri,
                "mlflow_run_id": mlflow_run_id, "env": driver_env()}


def prepare(cfg: TrainConfig, check_mlflow: bool = True) -> PreparedRun:
    from transformers import AutoConfig

    from pipeline.backbones import ALIASES, resolve_backbone
    from pipeline.setup import resolve_task

    task = resolve_task(cfg)
    if cfg.eval_mode == "rank" and not task.label_strings:
        raise ValueError(f"eval_mode='rank' needs label strings, but task {task.name!r} has none; "
                         "set eval_mode=generate.")
    changes = {"storage_path": str(Path(cfg.storage_path).expanduser().resolve())}
    if cfg.task.endswith((".yaml", ".yml")):
        changes["task"] = str(Path(cfg.task).resolve())
    backbone = resolve_backbone(cfg.backbone)
    if Path(backbone).is_dir():
        changes["backbone"] = str(Path(backbone).resolve())
    backbone_ref = cfg.backbone if cfg.backbone in ALIASES else changes.get("backbone", cfg.backbone)
    uri = cfg.tracking_uri
    changes["mlflow_uri"] = uri
    cfg = dataclasses.replace(cfg, **changes)

    hf_config = AutoConfig.from_pretrained(changes.get("backbone", cfg.backbone),
                                           trust_remote_code=cfg.trust_remote_code)
    kind = "seq2seq" if getattr(hf_config, "is_encoder_decoder", False) else "causal"
    d = hf_config.get_text_config().hidden_size if hasattr(hf_config, "get_text_config") else hf_config.hidden_size
    r, params = adapter_size(cfg, d, kind)

    storage = Path(cfg.storage_path)
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe = storage / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"storage_path {str(storage)!r} is not writable ({err}); choose another.") from err
    if check_mlflow:
        check_tracking_server(uri)
    return PreparedRun(cfg, r, d, kind, params, uri, backbone_ref, task.name)


def adapter_size(cfg: TrainConfig, hidden_size: int, kind: str) -> tuple[int | None, int]:
    """(r, trainable parameters) of `cfg` on a backbone of hidden size d: r derived from `budget` if set.

    Raises ValueError for an impossible budget or invalid method settings (no backbone is loaded).
    """
    from pipeline.setup import adept_config, tokenize_config

    r = cfg.r
    if cfg.budget is not None:
        s = fixed_length(tokenize_config(cfg, kind)) if cfg.method == "dept" else None
        r = budget_rank(cfg.method, hidden_size, cfg.num_virtual_tokens, cfg.budget, max_length=s)
    return r, adept_config(cfg, r, kind).num_trainable_params(hidden_size)  # also validates the settings


def init_ray(num_workers: int, num_cpus: int | None = None) -> None:
    """Connect to the cluster in RAY_ADDRESS (e.g. under `ray job submit`), else start a local one.

    `num_cpus` sets the local cluster's logical CPUs (default: the machine's, at least num_workers + 1).
    """
    if not os.environ.get("RAY_ADDRESS"):
        # Read by Ray at import time, so set before `import ray`. A single-machine cluster has no reason to
        # listen beyond loopback (Ray binds every interface by default); report() latency 2 s -> 0.1 s.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, num_workers + 1), include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=True)


def cpus_per_worker(cfg: TrainConfig) -> int:
    import ray

    total = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(total - 1, total // cfg.num_workers)) if not cfg.use_gpu else 1


def make_trainer(run: PreparedRun, mlflow_run_id: str | None, callbacks: list | None = None,
                 worker_cpus: int | None = None):
    """The TorchTrainer of one fit; `worker_cpus` overrides `cpus_per_worker` (sweeps running trials side by side)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.train import train_loop_per_worker

    cfg = run.config
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=run.loop_config(mlflow_run_id),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": worker_cpus or cpus_per_worker(cfg)}),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_checkpoints_to_keep),
            callbacks=callbacks or [],
        ),
    )


def mlflow_params_and_tags(run: PreparedRun) -> tuple[dict, dict]:
    cfg = run.config
    params = {**cfg.to_dict(), "r_resolved": run.r, "hidden_size": run.hidden_size,
              "trainable_params": run.trainable_params}
    tags = {"method": cfg.method, "task": cfg.task, "backbone": cfg.backbone, "backbone_kind": run.kind,
            "trainable_params": str(run.trainable_params), "git_commit": git_commit()}
    if run.backbone_ref:
        tags["backbone_ref"] = run.backbone_ref
    if run.task_name:
        tags["task_name"] = run.task_name
    return params, tags


def fit(run: PreparedRun):
    """Run one fit to the end; returns Ray's `Result` (metrics of the final report, checkpoint path)."""
    cfg = run.config
    init_ray(cfg.num_workers)
    params, tags = mlflow_params_and_tags(run)
    run_id = start_or_resume_run(run.tracking_uri, cfg.experiment, cfg.run_name, params, tags,
                                 Path(cfg.storage_path) / "mlflow-artifacts")
    ok = False
    try:
        result = make_trainer(run, run_id).fit()
        ok = result.error is None
        return result
    finally:
        finish_run(run.tracking_uri, run_id, ok)
