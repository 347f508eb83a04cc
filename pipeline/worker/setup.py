"""Worker-side setup: the wrapped backbone and the task data, built the same way on every rank."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import torch

from adept import AdeptModel, get_adept_model
from pipeline.core.backbones import load_backbone
from pipeline.core.config import TrainConfig
from pipeline.core.data import make_collator, tokenize_dataset
from pipeline.core.evaluation import EvalConfig
from pipeline.core.resolve import adept_config, resolve_task, tokenize_config
from pipeline.core.tasks import Task

# Ray Train tees print() into its logger when a library wraps stdout (each line twice); log once instead.
log = logging.getLogger("adept")


def build_model(cfg: TrainConfig, r: int | None, device: torch.device):
    """(AdeptModel on `device`, tokenizer, kind) with the backbone frozen.

    Under ZeRO-3 the backbone is built already partitioned (transformers builds under `deepspeed.zero.Init`
    while an `HfDeepSpeedConfig` of stage 3 is alive), so no worker ever holds the whole model.
    """
    zero3 = _zero3_context(cfg)
    base, tokenizer, kind = load_backbone(cfg.backbone, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if zero3 is None:  # zero.Init already placed the partitions
        base = base.to(device)
    model = get_adept_model(base, adept_config(cfg, r, kind), tokenizer)
    model._adept_zero3_config = zero3  # keeps the HfDeepSpeedConfig alive as long as the model
    return model, tokenizer, kind


def _zero3_context(cfg: TrainConfig):
    if not (cfg.deepspeed and cfg.zero_stage == 3):
        return None
    import importlib

    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    if not cfg.use_gpu:
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # see pipeline.worker.engine
    # zero.Init reads the world size from deepspeed.comm: attach it to Ray Train's process group first.
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")
    from pipeline.worker.engine import deepspeed_config

    return HfDeepSpeedConfig(deepspeed_config(cfg))


@dataclass
class TaskData:
    task: Task
    train: datasets.Dataset  # columns input_ids, labels
    validation: datasets.Dataset  # formatted rows (source, target, answers, group)
    test: datasets.Dataset
    collate: Callable
    eval_config: EvalConfig
    train_rows: datasets.Dataset | None = None  # the formatted train rows (source, target, ...)

    def frames(self) -> dict:
        """The formatted splits as pandas frames (MLflow dataset inputs: name, digest, rows)."""
        splits = {"train": self.train_rows, "validation": self.validation, "test": self.test}
        return {name: split.select_columns(["source", "target"]).to_pandas()
                for name, split in splits.items() if split is not None}


def build_data(cfg: TrainConfig, tokenizer, kind: str, model: AdeptModel, verbose: bool = False) -> TaskData:
    task = resolve_task(cfg)
    tok_cfg = tokenize_config(cfg, kind)
    pad_to = model.config.max_length if model.config.method == "dept" else None
    train_rows = task.get_split("train", max_examples=cfg.max_train_examples)
    train, report = tokenize_dataset(train_rows, tokenizer, tok_cfg, "train")
    if verbose:
        truncated = report.source_truncated or report.target_truncated
        (log.warning if truncated else log.info)(f"[adept] {task.name}: {report.message()}")
    validation = task.get_split("validation", max_examples=cfg.max_eval_examples)
    test = task.get_split("test", max_examples=cfg.max_eval_examples)
    eval_config = EvalConfig(tokenize=tok_cfg, eval_mode=cfg.eval_mode, batch_size=cfg.eval_batch_size,
                             pad_to_length=pad_to)
    train = train.select_columns(["input_ids", "labels"])
    return TaskData(task, train, validation, test, make_collator(tokenizer, tok_cfg, pad_to_length=pad_to),
                    eval_config, train_rows)
