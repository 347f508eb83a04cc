"""What a run resolves to from its `TrainConfig` on any machine: the task object, the tokenisation and the
method's `AdeptConfig`. Pure functions of the config and the backbone's kind (no Ray, no files read)."""

from __future__ import annotations

from adept import AdeptConfig
from adept.config import DEFAULT_INIT_TEXT
from pipeline.core.config import TrainConfig
from pipeline.core.data import TokenizeConfig, fixed_length
from pipeline.core.tasks import Task, get_task


def tokenize_config(cfg: TrainConfig, kind: str) -> TokenizeConfig:
    return TokenizeConfig(backbone=kind, max_source_length=cfg.max_source_length,
                          max_target_length=cfg.max_target_length)


def adept_config(cfg: TrainConfig, r: int | None, kind: str) -> AdeptConfig:
    """The method's config from the run config; DePT's s is the longest input the tokenizer can emit."""
    return AdeptConfig(
        method=cfg.method,
        num_virtual_tokens=cfg.num_virtual_tokens,
        ffn_hidden_size=r if cfg.method == "adept" else None,
        ffn_dropout=cfg.ffn_dropout,
        rank=r if cfg.method == "dept" else None,
        max_length=fixed_length(tokenize_config(cfg, kind)) if cfg.method == "dept" else None,
        prompt_init=cfg.prompt_init,
        prompt_init_text=cfg.prompt_init_text or DEFAULT_INIT_TEXT,
        base_model_name_or_path=cfg.backbone,
        seed=cfg.seed,
    )


def resolve_task(cfg: TrainConfig) -> Task:
    task = get_task(cfg.task)
    return task.with_label_strings(cfg.label_strings) if cfg.label_strings else task
