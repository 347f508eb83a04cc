"""Real fits: Ray Train V2 workers, DeepSpeed ZeRO-2/3 on gloo, MLflow; a tiny Llama on a synthetic task."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from fit_helpers import only_run
from train_jobs import args, checkpoints
from transformers import AutoModelForCausalLM, AutoTokenizer

from adept import AdeptModel
from adept.io import CONFIG_NAME, WEIGHTS_NAME
from jobs.train_adept import main
from pipeline.core.config import TrainConfig
from pipeline.core.evaluation import EvalConfig, evaluate
from pipeline.core.resolve import resolve_task, tokenize_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stage", [2, 3])
def test_two_workers_deepspeed_learn_and_best_adapter_reproduces(stage, synthetic_task, tiny_backbone, tmp_path):
    name = f"zero{stage}"
    rc = main(args(synthetic_task, tiny_backbone, tmp_path, "--num-workers", "2", "--zero-stage", str(stage),
                   "--max-steps", "60", "--eval-steps", "20", "--name", name))
    assert rc == 0
    final = checkpoints(tmp_path, name)[-1]
    state = json.loads((final / "trainer_state.json").read_text())
    assert [h["step"] for h in state["history"]] == [20, 40, 60]
    assert state["best_score"] >= 80.0  # chance is 50%

    # the best adapter, reloaded in this process onto a fresh backbone, gives the reported validation score
    base = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    model = AdeptModel.from_pretrained(base, final / "best_adapter")
    cfg = TrainConfig(task=str(synthetic_task), backbone=str(tiny_backbone), max_source_length=32,
                      max_target_length=4, r=8, num_virtual_tokens=4)
    task = resolve_task(cfg)
    result = evaluate(model, AutoTokenizer.from_pretrained(tiny_backbone), task, task.get_split("validation"),
                      EvalConfig(tokenize=tokenize_config(cfg, "causal"), eval_mode="rank"))
    assert result.score == pytest.approx(state["best_score"], abs=1e-6)

    client, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert run.data.params["zero_stage"] == str(stage) and run.data.params["r"] == "8"
    assert run.data.tags["method"] == "adept" and int(run.data.tags["trainable_params"]) == 4 * 32 + 2 * 32 * 8 + 8 + 32
    assert run.data.metrics["val/best"] == pytest.approx(state["best_score"])
    assert "test/accuracy" in run.data.metrics and "perf/tokens_per_s" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
    artifacts = {a.path for p in ("best_adapter", "predictions", "config") for a in client.list_artifacts(run.info.run_id, p)}
    assert {f"best_adapter/{WEIGHTS_NAME}", f"best_adapter/{CONFIG_NAME}", "predictions/test.json",
            "predictions/validation_best.json", "config/resolved_config.json"} <= artifacts
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="predictions/test.json",
                                                                 tracking_uri=client._tracking_client.tracking_uri)).read_text())
    assert set(table["columns"]) == {"source", "reference", "prediction"} and len(table["data"]) == 64


def test_real_mlflow_server(synthetic_task, tiny_backbone, tmp_path, mlflow_server):
    rc = main(args(synthetic_task, tiny_backbone, tmp_path, "--num-workers", "1", "--no-deepspeed",
                   "--max-steps", "10", "--eval-steps", "10", "--name", "server", "--mlflow-uri", mlflow_server))
    assert rc == 0
    client, run = only_run(mlflow_server)
    assert run.info.status == "FINISHED" and "val/accuracy" in run.data.metrics
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="best_adapter",
                                                tracking_uri=mlflow_server)
    model = AdeptModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_backbone), local)
    assert model.config.ffn_hidden_size == 8
    assert torch.isfinite(model.ffn.w1).all()
