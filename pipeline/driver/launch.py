"""Driver side of a fit: check everything a user can get wrong, then launch Ray Train.

`prepare(cfg)` runs before Ray starts a worker: the light checks (`preflight.check_early`, which the jobs run
before importing this module), then it resolves the task, the backbone (downloading the
offline alias once, reading its tokenizer and weight-file headers), derives r from the budget, and checks
the sizes, the storage path and the MLflow store, and returns the run resolved once (`ResolvedRun`).
`run_fit(run)` then opens the fit's MLflow run and fits the `TorchTrainer` (Ray Train V2) around
`pipeline.worker.recipe.train_loop_per_worker`; a sweep trial calls the same `run_fit` with its `TrialLink`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.backbone_info import inspect_backbone
from pipeline.core.backbones import ALIASES, resolve_backbone
from pipeline.core.config import TrainConfig, driver_env, inside, is_custom_task
from pipeline.core.errors import UserError
from pipeline.core.logs import train_log_level
from pipeline.core.ray_compat import (
    is_worker_group_start_timeout,
    on_train_sigint,
    quiet_controller_callback,
    registered_checkpoints,
)
from pipeline.core.resolve import ResolvedRun, resolve_run, resolve_task
from pipeline.driver.preflight import check_early
from pipeline.driver.ray_setup import init_ray, torch_config
from pipeline.tracking import (
    TrackingOutage,
    check_tracking_server,
    close_run,
    fit_run_name,
    open_run,
    status_of_error,
)
from pipeline.worker.callbacks import resolve_callback_spec


def prepare(cfg: TrainConfig, check_mlflow: bool = True) -> ResolvedRun:
    """Every check a user's config can fail, then the run resolved once (see pipeline.core.resolve)."""
    check_early(cfg, check_mlflow)  # jobs ran it before importing this module; callers of prepare alone need it
    task = resolve_task(cfg)
    task = task.with_code_execution() if cfg.execute_code else task  # the sandbox is checked here, before Ray
    if cfg.eval_mode == "rank" and not task.label_strings:
        raise UserError(f"eval_mode: 'rank' needs label strings, but task {task.name!r} has none; "
                        "set eval_mode=generate.")
    changes = {"storage_path": str(Path(cfg.storage_path).expanduser().resolve()), "mlflow_uri": cfg.tracking_uri}
    if is_custom_task(cfg.task):
        changes["task"] = str(Path(cfg.task).resolve())
    if cfg.callbacks:
        changes["callbacks"] = [resolve_callback_spec(spec) for spec in cfg.callbacks]
    resolved = resolve_backbone(cfg.backbone)  # an alias is materialised once here (download/convert/build)
    if cfg.backbone not in ALIASES and Path(resolved).is_dir():
        changes["backbone"] = str(Path(resolved).resolve())  # workers run elsewhere: an absolute folder
    cfg = dataclasses.replace(cfg, **changes)
    backbone_ref = cfg.backbone  # aliases stay aliases: every node resolves its own cache

    info = inspect_backbone(resolved, trust_remote_code=cfg.trust_remote_code)
    run = resolve_run(cfg, task, info, backbone_ref)
    check_sizes(cfg, info)

    storage = Path(cfg.storage_path)
    inside(storage, storage / cfg.run_name, "name")  # the run folder, and Ray's files in it, stay in storage_path
    inside(storage, storage / "mlflow-artifacts", "storage_path")
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe = storage / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"storage_path: {str(storage)!r} is not writable ({err}); choose another.") from err
    if check_mlflow:
        check_tracking_server(cfg.tracking_uri)
    return run


def check_sizes(cfg: TrainConfig, info) -> None:
    """Refuse a prompt + input longer than the backbone's positions, or activations no machine here holds."""
    m = cfg.num_virtual_tokens
    longest = m + (cfg.max_source_length + cfg.max_target_length if info.kind == "causal" else cfg.max_source_length)
    if info.max_positions and longest > info.max_positions:
        raise UserError(f"num_virtual_tokens: m={m} + max input {longest - m} = {longest} positions exceeds the "
                         f"backbone's {info.max_positions} (max_position_embeddings); lower num_virtual_tokens or "
                         "max_source_length / max_target_length.")
    estimate = activation_bytes(cfg, info)
    available = _memory_bytes(cfg.use_gpu)
    if estimate > available:
        raise UserError(f"num_virtual_tokens: m={m} needs about {estimate / 2**30:.0f} GiB of activations per "
                         f"worker ({longest} positions × micro batch {cfg.micro_batch_size} × {info.num_layers} "
                         f"layers), more than the {available / 2**30:.0f} GiB here; lower num_virtual_tokens, "
                         "max_source_length or batch_size (or add workers).")


def activation_bytes(cfg: TrainConfig, info) -> int:
    """Activations of one micro batch, forward + backward (an estimate: fp32, eager attention)."""
    longest = cfg.num_virtual_tokens + cfg.max_source_length + (cfg.max_target_length if info.kind == "causal" else 0)
    # Attention scores (micro batch × heads × T² floats per layer, fp32, forward + backward) dominate a long T.
    per_layer = cfg.micro_batch_size * info.num_heads * longest * longest * 4 * 2
    hidden = cfg.micro_batch_size * longest * info.hidden_size * 4 * 16
    return (per_layer + hidden) * info.num_layers


def _memory_bytes(use_gpu: bool) -> int:
    if use_gpu:
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_properties(0).total_memory
        except ImportError:
            pass
        return 1 << 50  # the driver has no GPU to ask (a CPU head node): trust the cluster
    import psutil

    return psutil.virtual_memory().total


def cpus_per_worker(cfg: TrainConfig) -> int:
    import ray

    total = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(total - 1, total // cfg.num_workers)) if not cfg.use_gpu else 1


def make_trainer(run: ResolvedRun, mlflow_run_id: str | None, callbacks: list | None = None,
                 worker_cpus: int | None = None, pack: dict | None = None):
    """The TorchTrainer of one fit; `worker_cpus` overrides `cpus_per_worker` (sweeps running trials side by side).

    `pack` ({"members": [ResolvedRun], "mlflow_run_ids": [...], "pack_name": ...}) makes it the fit of a pack
    (pipeline.worker.pack_recipe); `run` is then its first member, whose resources and storage the pack uses.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # imports Ray and torch: only once a fit starts
    from pipeline.worker.pack_recipe import pack_loop_per_worker
    from pipeline.worker.recipe import train_loop_per_worker

    cfg = run.config
    # A lost node's workers come back only when the cluster has room again: wait node_wait_s, then fail.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(cfg.node_wait_s)
    # ADEPT_* settings (cache dir, log level) reach workers on any node, and in a local cluster that was started
    # before they were set; `launched_at` lets the worker measure Ray Train's start-up.
    loop_config = {"env": driver_env(), "launched_at": time.time(),
                   **({"run": run, "mlflow_run_id": mlflow_run_id} if pack is None else pack)}
    return TorchTrainer(
        train_loop_per_worker if pack is None else pack_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=torch_config(cfg.use_gpu),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": worker_cpus or cpus_per_worker(cfg)},
                                     placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=cfg.run_name if pack is None else pack["pack_name"],
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_checkpoints_to_keep),
            callbacks=[*(callbacks or []), quiet_controller_callback()],  # Ray's harmless tracebacks: one line
            # Ray Train's controller announces each resource request and worker group at INFO: the job's own
            # lines say what matters; --log-level debug shows them again.
            logging_config=LoggingConfig(log_level=train_log_level()),
        ),
    )


def mlflow_params_and_tags(run: ResolvedRun) -> tuple[dict, dict]:
    """The columns a user compares runs by (the full config is the artifact config/resolved_config.json)."""
    cfg = run.config
    keys = ("method", "num_virtual_tokens", "budget", "prompt_lr", "offset_lr", "batch_size", "max_steps", "seed",
            "precision", "num_workers", "deepspeed", "zero_stage", "warmup_steps", "weight_decay")
    params = {k: getattr(cfg, k) for k in keys}
    params.update({"r": run.r, "trainable_params": run.trainable_params, "task": run.task_name,
                   "backbone": run.backbone_ref})
    tags = {"method": cfg.method, "task_name": run.task_name, "task": cfg.task, "backbone_ref": run.backbone_ref,
            "backbone_kind": run.kind, "trainable_params": str(run.trainable_params)}
    return params, tags


@dataclass(frozen=True)
class TrialLink:
    """How a sweep trial's fit hangs under its sweep: the parent MLflow run, the trial's display name and tags.

    A trial's run is closed by the sweep's `TrialRunStatus` callback, which learns how Tune ended the trial
    (Tune stops the trial function as soon as it has the final result, or when ASHA stops it).
    """

    parent_run_id: str
    display_name: str
    tags: dict[str, str]
    artifact_root: str


def run_fit(run: ResolvedRun, trial: TrialLink | None = None, callbacks: list | None = None,
            worker_cpus: int | None = None):
    """One fit to the end in its own MLflow run: `train_adept.py`'s fit, or one sweep trial's.

    Returns Ray's `Result` (final metrics, checkpoint). Raises what Ray Train raises when the fit fails (after its
    own `max_failures`); a sweep's Tune then retries the trial.
    """
    if trial is None:
        init_ray(run.config.num_workers)
    ref = open_fit_run(run, trial)
    error: BaseException | None = None
    interrupted = threading.Event()
    try:
        trainer = make_trainer(run, ref.run_id, callbacks=callbacks, worker_cpus=worker_cpus)
        if trial is None:  # a trial's fit runs in a Tune thread: Ray Train installs no SIGINT handler there
            on_train_sigint(trainer, interrupted.set)
        result = trainer.fit()
        error = result.error or tracking_error(result.metrics)
        return result
    except BaseException as err:
        error = err
        if interrupted.is_set():  # Ray aborted the run on Ctrl-C and exits: a KILLED run, an interrupted job
            error = KeyboardInterrupt("interrupted (Ctrl-C)")
            raise error from err
        raise
    finally:
        if trial is None:
            # Ray's handler stays installed after fit(); a second Ctrl-C would reach its dead controller and
            # exit 0 in the middle of closing the MLflow run: Python's own KeyboardInterrupt again.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.default_int_handler)
            close_fit_run(run, ref.run_id, error)


def open_fit_run(run: ResolvedRun, trial: TrialLink | None = None, tags: dict[str, str] | None = None):
    """The fit's MLflow run (resumed when its key exists): a top-level "fit" run, or a sweep trial's child run."""
    cfg = run.config
    params, run_tags = mlflow_params_and_tags(run)
    run_tags.update(tags or {})
    if trial is None:
        return open_run(run.tracking_uri, cfg.experiment, cfg.run_name, kind="fit", display_name=display_name(run),
                        params=params, tags=run_tags, artifact_root=Path(cfg.storage_path) / "mlflow-artifacts",
                        budget_s=cfg.tracking_outage_s)
    return open_run(run.tracking_uri, cfg.experiment, cfg.run_name, kind="trial", display_name=trial.display_name,
                    params=params, tags={**run_tags, **trial.tags}, artifact_root=Path(trial.artifact_root),
                    parent_run_id=trial.parent_run_id, budget_s=cfg.tracking_outage_s)


def display_name(run: ResolvedRun) -> str:
    """The fit's MLflow run name, e.g. "adept m8 r45 · movie-sentiment"."""
    return fit_run_name(run.config.method, run.config.num_virtual_tokens, run.r, run.task_name)


def tracking_error(metrics: dict | None) -> TrackingOutage | None:
    """The fit trained, but its logs did not all reach MLflow (the worker's final report says so)."""
    if metrics and metrics.get("tracking_unsent"):
        return TrackingOutage(metrics.get("tracking_message") or "some logs did not reach MLflow")
    return None


def close_fit_run(run: ResolvedRun, run_id: str, error: BaseException | None) -> None:
    """Give the run its status; if the server is still away, say exactly how to set it later."""
    status = status_of_error(error)
    text = None if error is None else f"{type(error).__name__}: {failure_cause(error, run.config)}"
    try:
        close_run(run.tracking_uri, run_id, status, error=text, budget_s=run.config.tracking_outage_s)
    except TrackingOutage as outage:
        before = f"{text}; " if error is not None else "the fit finished; "
        raise TrackingOutage(f"{before}{outage} The run's status could not be written: once the server is back, "
                             f"python -m pipeline.tracking close --run-id {run_id} --status {status} --mlflow-uri "
                             f"{run.tracking_uri}") from outage


def last_checkpoint_step(cfg: TrainConfig) -> int | None:
    """The step a re-run of the fit resumes from: of the newest checkpoint Ray Train registered (one written but
    not yet reported when the fit stopped is not loaded) that is complete (its manifest, written last, holds the
    step); None before the first."""
    from pipeline.worker.checkpoint import MANIFEST

    run_folder = Path(cfg.storage_path) / cfg.run_name
    names = registered_checkpoints(run_folder)
    folders = [run_folder / n for n in names] if names is not None else sorted(run_folder.glob("step_*"),
                                                                                reverse=True)
    for folder in folders:
        try:
            step = json.loads((folder / MANIFEST).read_text()).get("step")
        except (OSError, ValueError):
            continue  # partial (the writer was interrupted) or a quarantined stub: not what a resume loads
        if isinstance(step, int):
            return step
    return None


def failure_cause(err: BaseException, cfg: TrainConfig) -> str:
    """Why a fit failed, in one line: the job's `error:` line and the MLflow run's `adept.error` tag.

    Ray Train V2 raises a ControllerError whose first line says only "Training failed due to controller error:";
    the controller's own exception says what happened. The one a user can act on is a worker group that found no
    room within node_wait_s (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S): a lost node whose capacity did not return.
    """
    failure = getattr(err, "controller_failure", None)  # ray.train.ControllerError
    if is_worker_group_start_timeout(failure):
        return (f"Ray could not place the fit's {cfg.num_workers} worker(s) (placement {cfg.placement_strategy}) "
                f"within node_wait_s={cfg.node_wait_s:g} s: the cluster has no capacity for them (a lost node did "
                f"not come back). Add nodes (or lower num_workers, or raise node_wait_s), then re-run with --name "
                f"{cfg.run_name} to continue from the last checkpoint.")
    lines = [line.strip() for line in str(failure if failure is not None else err).strip().splitlines()
             if line.strip()]
    cause = next((line for line in reversed(lines) if "Error" in line or "error" in line), lines[-1] if lines else "")
    return cause[:1000]
