"""A fit whose loss becomes non-finite stops with FAILED, the step and the likely cause; nothing non-finite
is ever kept as the best adapter; a non-finite learning rate is refused before Ray starts."""

import math

import pytest
from fit_helpers import checkpoints, fit_args
from mlflow import MlflowClient
from safetensors.torch import load_file

from jobs.train_adept import main

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_a_diverging_fit_fails_loudly(synthetic_task, tiny_backbone, tmp_path, capsys):
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = fit_args(synthetic_task, tiny_backbone, storage, uri, "diverge", "--num-workers", "1", "--no-deepspeed",
                    "--max-steps", "20", "--eval-steps", "10")
    args[args.index("--prompt-lr") + 1] = "1e38"  # finite, but AdamW moves the prompt by ~1e38 a step: inf by step 4
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "learning rate" in err and "--name diverge" in err
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("adept").experiment_id])
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["adept.error"]
    assert "test/accuracy" not in run.data.metrics
    for folder in checkpoints(storage, "diverge"):  # whatever was kept is finite
        for name in ("adapter", "best_adapter"):
            if (folder / name).is_dir():
                tensors = load_file(str(folder / name / "adept_model.safetensors"))
                assert all(math.isfinite(float(t.abs().max())) for t in tensors.values())
