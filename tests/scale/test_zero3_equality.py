"""ZeRO-3 on two workers trains the adapter one worker trains: the same seed and the same rows at every step
(pipeline.worker.distributed.epoch_batches) give the same losses and the same saved adapter, within float tolerance.

Dropout is off (`ffn_dropout=0`): its masks depend on how a batch is split across ranks.
"""

import json

import pytest
from fit_helpers import checkpoints, journal
from safetensors.torch import load_file

from adept.io import WEIGHTS_NAME
from jobs.train_adept import main

pytestmark = [pytest.mark.scale, pytest.mark.slow]


def fit(task, backbone, storage, uri, name, workers: int) -> None:
    rc = main(["--task", str(task), "--backbone", str(backbone), "--m", "4", "--r", "8", "--batch-size", "16",
               "--prompt-lr", "0.3", "--offset-lr", "0.03", "--storage-path", str(storage), "--mlflow-uri", uri,
               "--name", name, "--num-workers", str(workers), "--zero-stage", "3", "--max-steps", "20",
               "--eval-steps", "10", "--set", "log_steps=1", "--set", "warmup_steps=0",
               "--set", "max_source_length=32", "--set", "max_target_length=4", "--set", "ffn_dropout=0"])
    assert rc == 0


def test_zero3_on_two_workers_saves_the_adapter_one_worker_saves(synthetic_task, tiny_backbone, tmp_path):
    storage, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    fit(synthetic_task, tiny_backbone, storage, uri, "one", workers=1)
    fit(synthetic_task, tiny_backbone, storage, uri, "two", workers=2)

    one, two = checkpoints(storage, "one")[-1], checkpoints(storage, "two")[-1]
    assert one.name == two.name == "step_00000020_final"
    for folder in ("adapter", "best_adapter"):
        a, b = load_file(str(one / folder / WEIGHTS_NAME)), load_file(str(two / folder / WEIGHTS_NAME))
        assert a.keys() == b.keys() and a
        for key in a:
            assert a[key].shape == b[key].shape, key
            assert (a[key] - b[key]).abs().max().item() <= 1e-5, (folder, key, (a[key] - b[key]).abs().max().item())
        assert any((a[key] != 0).any() for key in a)  # a trained adapter, not two empty ones

    loss = {name: {e["step"]: e["values"]["train/loss"] for e in journal(storage, name) if "train/loss" in e["values"]}
            for name in ("one", "two")}
    assert sorted(loss["one"]) == sorted(loss["two"]) == list(range(1, 21))
    for step in range(1, 21):
        assert loss["two"][step] == pytest.approx(loss["one"][step], rel=1e-5, abs=1e-6), step

    states = [json.loads((c / "trainer_state.json").read_text()) for c in (one, two)]
    assert [h["metrics"] for h in states[0]["history"]] == [h["metrics"] for h in states[1]["history"]]
