"""The run is resolved once, on the driver: what a worker builds comes from the `ResolvedRun` it receives, field
for field, and no worker module looks the task up or derives a setting again."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import cloudpickle
import pytest
import torch

import pipeline.core.resolve as resolve
from pipeline.core.config import TrainConfig
from pipeline.driver.launch import prepare
from pipeline.driver.tune.config import trial_config
from pipeline.worker.setup import build_data, build_model

pytestmark = pytest.mark.house

WORKER = Path(__file__).resolve().parents[2] / "pipeline" / "worker"
# What only the driver may compute: looking a task up, deriving r, building the adapter / tokenize / eval configs.
RESOLVERS = {"get_task", "resolve_task", "load_custom_task", "budget_rank", "rank_of", "adept_config",
             "tokenize_config", "resolve_run", "AdeptConfig", "TokenizeConfig", "EvalConfig", "fixed_length"}


@pytest.fixture
def run(synthetic_task, tiny_backbone, tmp_path):
    cfg = TrainConfig(method="dept", task=str(synthetic_task), backbone=str(tiny_backbone), num_virtual_tokens=4,
                      budget=8, max_source_length=24, max_target_length=4, batch_size=8, max_steps=10, eval_steps=5,
                      storage_path=str(tmp_path / "runs"), mlflow_uri=f"sqlite:///{tmp_path / 'm.db'}",
                      deepspeed=False)
    return prepare(cfg, check_mlflow=False)


def test_the_driver_resolves_every_derived_field(run):
    assert run.r is not None and run.r == run.adapter.rank  # derived from the budget, once
    assert run.adapter.max_length == 24 + 4 == run.eval.pad_to_length  # DePT's s: causal source + target
    assert run.tokenize.backbone == run.kind == "causal" and run.eval.tokenize is run.tokenize
    assert run.task.name == "synthetic-sentiment" and run.trainable_params == run.adapter.num_trainable_params(32)
    assert Path(run.config.task).is_absolute() and Path(run.config.storage_path).is_absolute()
    assert run.to_json()["r_resolved"] == run.r and run.to_json()["backbone"] == run.backbone_ref


def test_a_worker_builds_exactly_what_the_driver_resolved(run, monkeypatch):
    shipped = cloudpickle.loads(cloudpickle.dumps(run))  # what Ray hands the worker
    for name in ("get_task", "resolve_task", "rank_of", "adept_config", "tokenize_config", "resolve_run"):
        monkeypatch.setattr(resolve, name, _forbidden(name))  # anything re-resolving on the worker fails here
    model, tokenizer = build_model(shipped, torch.device("cpu"))
    data = build_data(shipped, tokenizer)
    assert model.config == run.adapter
    assert data.task is shipped.task and data.eval_config == run.eval  # the shipped task object itself
    assert dataclasses.asdict(data.eval_config.tokenize) == dataclasses.asdict(run.tokenize)
    batch = data.collate([data.train[i] for i in range(2)])
    assert batch["input_ids"].shape[1] == run.adapter.max_length  # DePT pads to the resolved s


def test_a_trial_resolves_from_the_base_without_looking_anything_up(run, monkeypatch):
    monkeypatch.setattr(resolve, "get_task", _forbidden("get_task"))
    trial = run.with_config(trial_config(run.config, {"m": 2, "prompt_lr": 0.1}))
    assert trial.task is run.task and trial.info == run.info and trial.backbone_ref == run.backbone_ref
    assert trial.config.num_virtual_tokens == 2 and trial.r > run.r  # a shorter prompt leaves more budget to r


def test_no_worker_module_resolves_anything():
    found = []
    for path in sorted(WORKER.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in RESOLVERS:
                found.append(f"{path.name}:{node.lineno} {name}")
    assert not found, f"the worker recomputes what the driver resolved: {found}"


def _forbidden(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} called on the worker side")

    return fail
