"""Worker-side setup: the wrapped backbone and the task data, built the same way on every rank from the run the
driver resolved (`pipeline.core.resolve.ResolvedRun`): nothing here looks the task up or derives a setting."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import torch

from adept import get_adept_model
from pipeline.core.backbones import load_backbone
from pipeline.core.data import make_collator, tokenize_dataset
from pipeline.core.evaluation import EvalConfig
from pipeline.core.resolve import ResolvedRun
from pipeline.core.tasks import Task
from pipeline.worker.engine import DeepSpeedPlan

# Ray Train tees print() into its logger when a library wraps stdout (each line twice); log once instead.
log = logging.getLogger("adept")


def build_model(run: ResolvedRun, device: torch.device, plan: DeepSpeedPlan | None = None):
    """(AdeptModel on `device`, tokenizer) with the backbone frozen.

    With a ZeRO-3 `plan` (pipeline.worker.engine.deepspeed_plan, made first) the backbone is built already
    partitioned, so no worker ever holds the whole model.
    """
    cfg = run.config
    base, tokenizer, _ = load_backbone(cfg.backbone, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if plan is None or plan.partitioned is None:  # zero.Init already placed the partitions
        base = base.to(device)
    return wrap_backbone(base, run, tokenizer), tokenizer


def wrap_backbone(base: torch.nn.Module, run: ResolvedRun, tokenizer):
    """The run's adapter over `base`, initialised from the run's seed alone (whatever loading the backbone drew
    from the RNG): a member of a pack starts from the very weights it has in a solo fit."""
    torch.manual_seed(run.config.seed)
    return get_adept_model(base, run.adapter, tokenizer)


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


def build_data(run: ResolvedRun, tokenizer, verbose: bool = False) -> TaskData:
    cfg, task = run.config, run.task
    train_rows = task.get_split("train", max_examples=cfg.max_train_examples)
    train, report = tokenize_dataset(train_rows, tokenizer, run.tokenize, "train")
    if verbose:
        truncated = report.source_truncated or report.target_truncated
        (log.warning if truncated else log.info)(f"[adept] {task.name}: {report.message()}")
    validation = task.get_split("validation", max_examples=cfg.max_eval_examples)
    test = task.get_split("test", max_examples=cfg.max_eval_examples)
    train = train.select_columns(["input_ids", "labels"])
    collate = make_collator(tokenizer, run.tokenize, pad_to_length=run.eval.pad_to_length)
    return TaskData(task, train, validation, test, collate, run.eval, train_rows)

