"""A finished sweep faked in a sqlite MLflow store without Ray (parent run + one trial with a best adapter),
shared by the registry tests (tests/sweeps) and the serving tests (tests/serving)."""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from adept import AdeptConfig, get_adept_model
from pipeline.core.config import TrainConfig
from pipeline.driver.launch import mlflow_params_and_tags, prepare
from pipeline.tracking import close_run, open_run


def make_store(root: Path, task: Path, backbone: Path) -> dict:
    """A sqlite store under `root` and an ADePT adapter (non-zero offset, so folding changes the table)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    adapter = root / "adapter"
    torch.manual_seed(0)  # the same random adapter every run: the serving test needs one that predicts both labels
    base = AutoModelForCausalLM.from_pretrained(backbone)
    model = get_adept_model(base, AdeptConfig(method="adept", num_virtual_tokens=4, ffn_hidden_size=8),
                            AutoTokenizer.from_pretrained(backbone))
    with torch.no_grad():
        model.ffn.w2.normal_(0, 0.5)  # a non-zero offset, so folding has something to fold
    model.save_pretrained(adapter)
    cfg = TrainConfig(task=str(task), backbone=str(backbone), num_virtual_tokens=4, r=8,
                      max_source_length=32, max_target_length=4, storage_path=str(root / "runs"), mlflow_uri=uri)
    return {"uri": uri, "root": root, "adapter": adapter, "run": prepare(cfg)}


def fake_sweep(store: dict, name: str, score: float) -> str:
    """A finished sweep as jobs/tune_adept.py leaves it: parent run + one child with a best adapter."""
    uri, run = store["uri"], store["run"]
    params, tags = mlflow_params_and_tags(run)
    parent = open_run(uri, "sweeps", name, kind="sweep", params=params,
                      tags={**tags, "adept.sweep": name, "metric": "val_accuracy"}, artifact_root=store["root"]).run_id
    child = open_run(uri, "sweeps", f"{name}-t0", kind="trial", params=params,
                     tags={**tags, "adept.sweep": name, "ray.trial_id": "t0"}, artifact_root=store["root"],
                     parent_run_id=parent).run_id
    client = MlflowClient(uri)
    client.log_metric(child, "val/accuracy", score, step=10)
    client.log_artifacts(child, str(store["adapter"]), "best_adapter")
    client.log_dict(child, {**run.config.to_dict(), "r_resolved": run.r}, "config/resolved_config.json")
    close_run(uri, child, "FINISHED", tags={"adept.stopped_early": "asha", "adept.score": str(score)})
    close_run(uri, parent, "FINISHED", tags={"best_run_id": child})
    return child
