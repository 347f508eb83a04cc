"""The README's "your own data" walk-through runs as written: its example files (examples/) through
jobs/train_adept.py on the tiny backbone, one classification, one regression and one generation task."""

from pathlib import Path

import pytest
from mlflow import MlflowClient

from jobs.train_adept import main

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(("task", "eval_mode", "metric"), [
    ("reviews/sentiment.yaml", "rank", "val/accuracy"),
    ("reviews/stars.yaml", "generate", "val/pearson"),
    ("cinema_qa/cinema_qa.yaml", "generate", "val/squad_em"),
])
def test_example_task_trains(task, eval_mode, metric, tiny_backbone, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["--task", str(EXAMPLES / task), "--backbone", str(tiny_backbone), "--m", "4", "--r", "8",
               "--max-steps", "4", "--eval-steps", "4", "--batch-size", "8", "--no-deepspeed",
               "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", uri,
               "--set", f"eval_mode={eval_mode}", "--set", "max_source_length=48", "--set", "max_target_length=8"])
    assert rc == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("adept").experiment_id])
    assert run.info.status == "FINISHED" and metric in run.data.metrics
