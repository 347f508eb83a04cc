"""A run, resolved once: everything a fit needs that follows from the user's `TrainConfig`.

    run = resolve_run(cfg, task, info, backbone_ref)      # on the driver (pipeline.driver.launch.prepare)
    trial = run.with_config(trial_cfg)                    # a sweep trial: same task and backbone, its own m, r, lrs
    FitRecipe({"run": run, ...})                          # the worker builds from run.adapter / run.tokenize / run.eval

The driver looks the task up, reads the backbone's sizes and derives r from the budget; the result travels to
trials and Ray Train workers as it is (pickled by Ray), so nothing downstream looks the task up by name again or
works r out a second time. A packed sweep will carry a list of these, one per member.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from adept import AdeptConfig
from adept.config import DEFAULT_INIT_TEXT, budget_rank
from pipeline.core.backbone_info import BackboneInfo
from pipeline.core.config import TrainConfig
from pipeline.core.data import TokenizeConfig, fixed_length
from pipeline.core.errors import UserError
from pipeline.core.evaluation import EvalConfig
from pipeline.core.tasks import Task, get_task


@dataclass(frozen=True)
class ResolvedRun:
    """One fit as the driver resolved it.

    config: the user's config with absolute paths (workers run elsewhere) and the tracking URI filled in.
    task: the task object (registry or custom YAML, label strings applied).
    backbone_ref: how every node finds the backbone again (an alias or HF id as given, else an absolute folder).
    info: the backbone's sizes (kind, d, layers, heads, positions), read once from its config.
    r: ADePT's FFN size / DePT's rank, derived from `budget` when set (None for prompt tuning).
    adapter: the method's `AdeptConfig`; trainable_params its count on this backbone.
    tokenize / eval: how inputs are tokenised in training and how splits are scored.
    """

    config: TrainConfig
    task: Task
    backbone_ref: str
    info: BackboneInfo
    r: int | None
    adapter: AdeptConfig
    trainable_params: int
    tokenize: TokenizeConfig
    eval: EvalConfig

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def hidden_size(self) -> int:
        return self.info.hidden_size

    @property
    def task_name(self) -> str:
        return self.task.name

    @property
    def tracking_uri(self) -> str:
        return self.config.tracking_uri

    def with_config(self, cfg: TrainConfig) -> ResolvedRun:
        """Another config over the same task and backbone (a sweep trial): r, adapter and tokenisation anew."""
        return resolve_run(cfg, self.task, self.info, self.backbone_ref)

    def to_json(self) -> dict[str, Any]:
        """What MLflow stores as config/resolved_config.json: the config, then what was derived from it."""
        return json.loads(json.dumps({
            **self.config.to_dict(), "r_resolved": self.r, "task_name": self.task.name,
            "backbone_ref": self.backbone_ref, "backbone_info": dataclasses.asdict(self.info),
            "trainable_params": self.trainable_params, "adept": self.adapter.to_dict(),
            "tokenize": dataclasses.asdict(self.tokenize),
            "eval": {k: v for k, v in dataclasses.asdict(self.eval).items() if k != "tokenize"},
        }, default=str))


def resolve_run(cfg: TrainConfig, task: Task, info: BackboneInfo, backbone_ref: str) -> ResolvedRun:
    """Derive r (from the budget), the adapter config and the tokenisation/evaluation settings of `cfg`.

    Raises UserError for an impossible budget or invalid method settings; no file is read, nothing is loaded.
    """
    tokenize = tokenize_config(cfg, info.kind)
    r = rank_of(cfg, info.hidden_size, tokenize)
    adapter = adept_config(cfg, r, info.kind)
    try:
        params = adapter.num_trainable_params(info.hidden_size)
    except ValueError as err:
        raise UserError(str(err)) from err
    pad_to = adapter.max_length if cfg.method == "dept" else None
    evaluation = EvalConfig(tokenize=tokenize, eval_mode=cfg.eval_mode, batch_size=cfg.eval_batch_size,
                            pad_to_length=pad_to)
    return ResolvedRun(cfg, task, backbone_ref, info, r, adapter, params, tokenize, evaluation)


def rank_of(cfg: TrainConfig, hidden_size: int, tokenize: TokenizeConfig) -> int | None:
    """r as given, or the largest r whose trainable parameters fit `budget`·d (DePT's count depends on s)."""
    if cfg.budget is None:
        return cfg.r
    s = fixed_length(tokenize) if cfg.method == "dept" else None
    try:
        return budget_rank(cfg.method, hidden_size, cfg.num_virtual_tokens, cfg.budget, max_length=s)
    except ValueError as err:
        raise UserError(f"budget: {err}") from err


def tokenize_config(cfg: TrainConfig, kind: str) -> TokenizeConfig:
    return TokenizeConfig(backbone=kind, max_source_length=cfg.max_source_length,
                          max_target_length=cfg.max_target_length)


def adept_config(cfg: TrainConfig, r: int | None, kind: str) -> AdeptConfig:
    """The method's config from the run config; DePT's s is the longest input the tokenizer can emit."""
    try:
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
    except ValueError as err:  # adept/ knows nothing of the pipeline's error type: its checks are the user's
        raise UserError(str(err)) from err


def resolve_task(cfg: TrainConfig) -> Task:
    """The task `cfg.task` names (a registry name or a custom-task YAML), with any label-string override."""
    task = get_task(cfg.task)
    return task.with_label_strings(cfg.label_strings) if cfg.label_strings else task
