"""The Ray Train worker loop: one ADePT / DePT / prompt-tuning fit, setup -> train -> test.

Runs on every worker of a `TorchTrainer` (see `pipeline.launch`). Reads top to bottom:

  setup   backbone + adapter, task data, DeepSpeed engine (or DDP), resume state from the checkpoint
  train   micro-batches -> optimizer steps; every `eval_steps`: validate, keep the best adapter,
          checkpoint (adapter + optimizer/scheduler/step/data position) and report to Ray
  test    reload the best adapter, evaluate it on the test split, log everything to MLflow (rank 0)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from transformers import get_linear_schedule_with_warmup

from adept.io import adapter_state_dict, load_adapter_state_dict, read_adapter_state_dict, save_adapter
from pipeline.config import TrainConfig, apply_driver_env
from pipeline.distributed import distributed_evaluate, epoch_batches, reduce_sums
from pipeline.engine import build_engine
from pipeline.setup import build_data, build_model
from pipeline.tracking import RankZeroLogger

# Ray Train tees print() into its logger when a library wraps stdout (each line twice); log once instead.
log = logging.getLogger("adept")

STATE_FILE = "trainer_state.json"
FAIL_STEP_ENV = "ADEPT_TEST_FAIL_ONCE_AT_STEP"  # test hook: raise once at this step (marker file in storage)


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)  # steps this run restarted from
    finished: bool = False  # the final (test) report was made: a re-run changes nothing


def train_loop_per_worker(loop_config: dict) -> None:
    apply_driver_env(loop_config.get("env", {}))
    cfg = TrainConfig.from_dict(loop_config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")

    # ---------------------------------------------------------------- setup
    model, tokenizer, kind = build_model(cfg, loop_config["r"], device)
    data = build_data(cfg, tokenizer, kind, model, verbose=rank == 0)
    if len(data.train) // world < cfg.micro_batch_size:
        raise ValueError(f"the train split has {len(data.train)} rows: too few for {world} workers × micro batch "
                         f"{cfg.micro_batch_size}; lower batch_size or num_workers.")
    groups = model.parameter_groups(cfg.prompt_lr, cfg.offset_lr, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, eps=1e-6)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)
    engine = build_engine(cfg, model, optimizer, scheduler, device, world)
    logger = RankZeroLogger(loop_config.get("mlflow_uri"), loop_config.get("mlflow_run_id"), rank)
    logger.dict({**loop_config["train"], "r_resolved": loop_config["r"], "adept": model.config.to_dict()},
                "config/resolved_config.json")
    state, best_state = TrainState(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            state, best_state = _restore(engine, Path(ckpt_dir))
        if state.finished:
            if rank == 0:
                log.info(f"[adept] run already finished at step {state.step}; nothing to do")
            logger.close()
            return
        state.resumed_at.append(state.step)
        if rank == 0:
            log.info(f"[adept] resumed at step {state.step} (epoch {state.epoch}, batch {state.batch_in_epoch})")

    # ---------------------------------------------------------------- train
    window = {"loss": 0.0, "micro": 0, "tokens": 0, "samples": 0, "t0": time.perf_counter(), "paused": 0.0}
    while state.step < cfg.max_steps:
        batches = epoch_batches(len(data.train), state.epoch, rank, world, cfg.micro_batch_size, cfg.seed)
        for index in range(state.batch_in_epoch, len(batches)):
            batch = data.collate([data.train[i] for i in batches[index]])
            loss, stepped = engine.train_micro_batch({k: v.to(device) for k, v in batch.items()})
            window["loss"] += loss
            window["micro"] += 1
            window["tokens"] += int(batch["attention_mask"].sum())
            window["samples"] += len(batches[index])
            if not stepped:
                continue
            state.step, state.batch_in_epoch = state.step + 1, index + 1
            _maybe_inject_failure(cfg, state.step)
            if state.step % cfg.log_steps == 0 or state.step == cfg.max_steps:
                _log_training(cfg, state, engine, window, logger, rank)
            if state.step % cfg.eval_steps == 0 or state.step == cfg.max_steps:
                paused = time.perf_counter()
                best_state = _validate_and_checkpoint(cfg, state, engine, data, tokenizer, logger, best_state,
                                                      rank, world, window.get("last", {}))
                window["paused"] += time.perf_counter() - paused  # throughput counts training time only
            if state.step >= cfg.max_steps:
                break
        else:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0

    # ---------------------------------------------------------------- test the best adapter
    if best_state is not None:
        load_adapter_state_dict(engine.module, best_state, "best adapter")
    test = distributed_evaluate(engine.module, tokenizer, data.task, data.test, data.eval_config, rank, world,
                                synced_generate=cfg.deepspeed and cfg.zero_stage == 3)
    final = {"step": state.step, "best_step": state.best_step, "done": 1,
             **{f"val_{k}": v for k, v in (state.history[-1]["best_metrics"] if state.history else {}).items()},
             **{f"test_{k}": v for k, v in test.metrics.items()}}
    logger.metrics({k: v for k, v in final.items() if k.startswith("test_")}, step=state.step)
    logger.table(test.table(), "predictions/test.json")
    if rank == 0:
        log.info(f"[adept] done: best validation {data.task.primary_metric} {state.best_score} at step "
              f"{state.best_step}; test {test.metrics}")
    state.finished = True
    _report(final, engine, state, best_state, rank, logger, final=True)
    logger.close()


# -------------------------------------------------------------------- helpers
def _log_training(cfg, state, engine, window, logger, rank) -> None:
    loss_sum, micro, tokens, samples = reduce_sums([window["loss"], window["micro"], window["tokens"],
                                                    window["samples"]])
    seconds = time.perf_counter() - window["t0"] - window["paused"]
    lrs = engine.learning_rates()
    values = {"train_loss": loss_sum / max(micro, 1), "tokens_per_s": tokens / seconds,
              "samples_per_s": samples / seconds, **{f"lr_{k}": v for k, v in lrs.items()}}
    logger.metrics(values, step=state.step)
    window["last"] = values  # also sent to Ray with the next evaluation report
    if rank == 0:
        lr_text = " ".join(f"lr_{k} {v:.2e}" for k, v in lrs.items())
        log.info(f"[adept] step {state.step}/{cfg.max_steps} loss {values['train_loss']:.4f} {lr_text} "
              f"tok/s {values['tokens_per_s']:.0f}")
    window.update(loss=0.0, micro=0, tokens=0, samples=0, t0=time.perf_counter(), paused=0.0)


def _validate_and_checkpoint(cfg, state, engine, data, tokenizer, logger, best_state, rank, world, train_metrics):
    result = distributed_evaluate(engine.module, tokenizer, data.task, data.validation, data.eval_config, rank,
                                  world, synced_generate=cfg.deepspeed and cfg.zero_stage == 3)
    improved = state.best_score is None or result.score > state.best_score
    if improved:
        state.best_score, state.best_step = result.score, state.step
        best_state = adapter_state_dict(engine.module)  # collective under ZeRO-3: every rank calls it
        logger.table(result.table(), "predictions/validation_best.json")
    best_metrics = result.metrics if improved else state.history[-1]["best_metrics"]
    state.history.append({"step": state.step, "metrics": result.metrics, "best_metrics": best_metrics})
    metrics = {"step": state.step, **{f"val_{k}": v for k, v in result.metrics.items()},
               "val_best": state.best_score, "best_step": state.best_step, **train_metrics}
    logger.metrics({k: v for k, v in metrics.items() if k.startswith("val_")}, step=state.step)
    if rank == 0:
        log.info(f"[adept] step {state.step} validation {result.metrics} (best {data.task.primary_metric} "
              f"{state.best_score:.2f} at step {state.best_step})")
    _report(metrics, engine, state, best_state, rank, logger)
    return best_state


def _report(metrics, engine, state, best_state, rank, logger, final: bool = False) -> None:
    """Every rank writes its part of the checkpoint into its own folder; Ray merges them into one."""
    current = adapter_state_dict(engine.module)  # collective under ZeRO-3: every rank calls it
    with tempfile.TemporaryDirectory(prefix="adept-ckpt-") as tmp:
        tmp = Path(tmp)
        engine.save_state(tmp / "engine")  # DeepSpeed: each rank its shard; DDP: rank 0 alone
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps(state.__dict__, indent=1))
            save_adapter(engine.module, tmp / "adapter", state=current)
            if best_state is not None:
                save_adapter(engine.module, tmp / "best_adapter", state=best_state)
                if final:
                    logger.artifacts(tmp / "best_adapter", "best_adapter")
        if engine.world > 1:
            dist.barrier()
        name = f"step_{state.step:08d}" + ("_final" if final else "")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)), checkpoint_dir_name=name)


def _restore(engine, ckpt_dir: Path) -> tuple[TrainState, dict | None]:
    state = TrainState(**json.loads((ckpt_dir / STATE_FILE).read_text()))
    engine.load_state(ckpt_dir / "engine", ckpt_dir / "adapter")
    best_state = None
    if (ckpt_dir / "best_adapter").is_dir():
        best_state = read_adapter_state_dict(ckpt_dir / "best_adapter")
    return state, best_state


def _maybe_inject_failure(cfg: TrainConfig, step: int) -> None:
    target = os.environ.get(FAIL_STEP_ENV)
    if not target or int(target) != step:
        return
    marker = Path(cfg.storage_path).resolve() / cfg.run_name / f".failure-injected-at-{step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise RuntimeError(f"injected failure at step {step} ({FAIL_STEP_ENV})")
