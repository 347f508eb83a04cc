"""What the packed-trial tests share: a pack of three members that differ in method, prompt length, seed and learning
rates; a base config on the tests' tiny backbones; and the check that a member's fit is its solo fit."""

from __future__ import annotations

import dataclasses

from mlflow import MlflowClient
from safetensors.torch import load_file

from pipeline.core.config import TrainConfig
from pipeline.driver.launch import prepare, run_fit
from pipeline.driver.pack import run_pack

MEMBERS = [  # methods and prompt lengths mixed; each member its own seed and learning rates
    {"method": "adept", "num_virtual_tokens": 4, "r": 8, "prompt_lr": 0.3, "offset_lr": 0.03, "seed": 1},
    {"method": "dept", "num_virtual_tokens": 2, "r": 4, "prompt_lr": 0.2, "offset_lr": 0.05, "seed": 2},
    {"method": "prompt", "num_virtual_tokens": 6, "r": None, "prompt_lr": 0.3, "seed": 3},
]


def base_config(task, backbone, tmp_path, workers: int, **changes) -> TrainConfig:
    """ADePT's FFN dropout stays on (0.1): each member draws its masks from its own stream."""
    return TrainConfig(**{"task": str(task), "backbone": str(backbone), "r": 8, "deepspeed": False,
                          "num_workers": workers, "max_steps": 8, "eval_steps": 4, "log_steps": 1, "warmup_steps": 2,
                          "batch_size": 8, "max_source_length": 32, "max_target_length": 4, "max_eval_examples": 16,
                          "storage_path": str(tmp_path / "runs"), "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                          "experiment": "pack", **changes})


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def final_checkpoint(folder):
    (final,) = sorted(folder.glob("step_*_final"))
    return final


def last_step_checkpoint(folder):
    """The checkpoint of the last training step: its `adapter` holds the weights the last step left (the final
    checkpoint's holds whatever the test split was scored with: the best adapter under DDP, the last weights under
    DeepSpeed, whose fp32 masters the test's reload does not touch)."""
    return sorted(p for p in folder.glob("step_*") if not p.name.endswith("_final"))[-1]


def run_id_of(client, key: str) -> str:
    (run,) = client.search_runs([client.get_experiment_by_name("pack").experiment_id],
                                f"tags.`adept.run_name` = '{key}'")
    return run.info.run_id


def assert_same_fit(client, solo_run_id, member_run_id, solo_adapter, member_adapter):
    """Every logged loss, validation score and learning rate, and the final adapter, to 1e-5."""
    for key in ("train/loss", "val/accuracy", "train/lr_prompt"):
        solo, packed = history(client, solo_run_id, key), history(client, member_run_id, key)
        assert [s for s, _ in solo] == [s for s, _ in packed] and solo, key
        assert max(abs(a - b) for (_, a), (_, b) in zip(solo, packed, strict=True)) <= 1e-5, (key, solo, packed)
    a, b = load_file(solo_adapter / "adept_model.safetensors"), load_file(member_adapter / "adept_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def assert_members_are_solo_fits(base: TrainConfig, tmp_path, rows_per_forward: int | None = None,
                                 count: int = len(MEMBERS)) -> None:
    """Train the first `count` MEMBERS as one pack, then each alone; each member's fit must be its solo fit (every
    solo fit is a Ray Train start-up: two members, ADePT m=4 and DePT m=2, already mix methods and prompt lengths).
    rows_per_forward: 0 = every member in one forward pass (the GPU default), None = one member per pass (CPU)."""
    runs = [prepare(dataclasses.replace(base, name=f"solo{k}", **member), check_mlflow=False)
            for k, member in enumerate(MEMBERS[:count])]
    members = [run.with_config(dataclasses.replace(run.config, name=f"pack-m{k}")) for k, run in enumerate(runs)]
    packed = run_pack(members, "pack", rows_per_forward=rows_per_forward)
    assert packed.statuses == ["FINISHED"] * count, packed.result.metrics
    for run in runs:
        assert run_fit(run).error is None

    client = MlflowClient(base.tracking_uri)
    pack_last = last_step_checkpoint(tmp_path / "runs" / "pack")
    for k, run in enumerate(runs):
        solo_last = last_step_checkpoint(tmp_path / "runs" / run.config.run_name)
        for adapter in ("adapter", "best_adapter"):
            assert_same_fit(client, run_id_of(client, run.config.run_name), packed.run_ids[k], solo_last / adapter,
                            pack_last / "members" / str(k) / adapter)
        assert client.get_run(packed.run_ids[k]).data.tags["adept.pack"] == "pack"
