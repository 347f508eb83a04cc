"""A member trained in a pack IS the same configuration trained alone: every logged loss, every validation score and
the final adapter agree to 1e-5 (same seed, same data order, ADePT dropout ON: each member draws its masks from
its own RNG stream, started where its solo fit's starts), for a pack that mixes methods and prompt
lengths, causal (Llama) and seq2seq (T5), on one worker and on two (gradients all-reduced by the pack engine, as DDP does for a solo fit).
A member whose learning rate blows it up fails alone; the others finish as they would without it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from fault_hooks import fail_once_at
from mlflow import MlflowClient
from safetensors.torch import load_file
from tiny import tiny_t5, tiny_tokenizer

from pipeline.core.config import TrainConfig
from pipeline.core.errors import UserError
from pipeline.driver.launch import prepare, run_fit
from pipeline.driver.pack import check_pack, run_pack

pytestmark = [pytest.mark.pack, pytest.mark.slow]

MEMBERS = [  # methods and prompt lengths mixed; each member its own seed and learning rates
    {"method": "adept", "num_virtual_tokens": 4, "r": 8, "prompt_lr": 0.3, "offset_lr": 0.03, "seed": 1},
    {"method": "dept", "num_virtual_tokens": 2, "r": 4, "prompt_lr": 0.2, "offset_lr": 0.05, "seed": 2},
    {"method": "prompt", "num_virtual_tokens": 6, "r": None, "prompt_lr": 0.3, "seed": 3},
]


def base_config(task, backbone, tmp_path, workers: int) -> TrainConfig:
    return TrainConfig(task=str(task), backbone=str(backbone), r=8, deepspeed=False, num_workers=workers,
                       max_steps=8, eval_steps=4, log_steps=1, warmup_steps=2, batch_size=8, max_source_length=32,
                       max_target_length=4, max_eval_examples=16, storage_path=str(tmp_path / "runs"),
                       mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="pack")


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def final_checkpoint(folder):
    (final,) = sorted(folder.glob("step_*_final"))
    return final


def run_id_of(client, key: str) -> str:
    (run,) = client.search_runs([client.get_experiment_by_name("pack").experiment_id],
                                f"tags.`adept.run_name` = '{key}'")
    return run.info.run_id


def assert_same_fit(client, solo_run_id, member_run_id, solo_adapter, member_adapter):
    for key in ("train/loss", "val/accuracy", "train/lr_prompt"):
        solo, packed = history(client, solo_run_id, key), history(client, member_run_id, key)
        assert [s for s, _ in solo] == [s for s, _ in packed] and solo, key
        assert max(abs(a - b) for (_, a), (_, b) in zip(solo, packed, strict=True)) <= 1e-5, (key, solo, packed)
    a, b = load_file(solo_adapter / "adept_model.safetensors"), load_file(member_adapter / "adept_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


@pytest.fixture(scope="module")
def t5_backbone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    tiny_t5().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("kind", "workers"), [("llama", 1), ("llama", 2), ("t5", 1)])
def test_a_member_of_a_pack_is_its_solo_fit(synthetic_task, tiny_backbone, t5_backbone, tmp_path, kind, workers):
    backbone = tiny_backbone if kind == "llama" else t5_backbone
    base = base_config(synthetic_task, backbone, tmp_path, workers)
    runs = [prepare(dataclasses.replace(base, name=f"solo{k}", **member), check_mlflow=False)
            for k, member in enumerate(MEMBERS)]
    members = [run.with_config(dataclasses.replace(run.config, name=f"pack-m{k}")) for k, run in enumerate(runs)]
    packed = run_pack(members, "pack")
    assert packed.statuses == ["FINISHED"] * 3, packed.result.metrics
    for run in runs:
        assert run_fit(run).error is None

    client = MlflowClient(base.tracking_uri)
    pack_final = final_checkpoint(tmp_path / "runs" / "pack")
    for k, run in enumerate(runs):
        solo_final = final_checkpoint(tmp_path / "runs" / run.config.run_name)
        assert_same_fit(client, run_id_of(client, run.config.run_name), packed.run_ids[k], solo_final / "adapter",
                        pack_final / "members" / str(k) / "adapter")
        assert client.get_run(packed.run_ids[k]).data.tags["adept.pack"] == "pack"


def test_a_diverging_member_fails_alone(synthetic_task, tiny_backbone, tmp_path):
    base = base_config(synthetic_task, tiny_backbone, tmp_path, 1)
    blown = {**MEMBERS[0], "prompt_lr": 1e38}  # finite, but AdamW moves the prompt ~1e38 a step: inf in a few
    members = [prepare(dataclasses.replace(base, name=f"m{k}", **member), check_mlflow=False)
               for k, member in enumerate([blown, MEMBERS[2]])]
    packed = run_pack(members, "pack-diverged")
    assert packed.statuses == ["FAILED", "FINISHED"]
    client = MlflowClient(base.tracking_uri)
    failed = client.get_run(packed.run_ids[0])
    assert "diverged" in failed.data.tags["adept.error"] and "prompt_lr=1e+38" in failed.data.tags["adept.error"]
    assert "test/accuracy" in client.get_run(packed.run_ids[1]).data.metrics

    alone = prepare(dataclasses.replace(base, name="alone", **MEMBERS[2]), check_mlflow=False)
    assert run_fit(alone).error is None
    pack_final = final_checkpoint(tmp_path / "runs" / "pack-diverged")
    assert_same_fit(client, run_id_of(client, "alone"), packed.run_ids[1],
                    final_checkpoint(tmp_path / "runs" / "alone") / "adapter",
                    pack_final / "members" / "1" / "adapter")


def test_members_that_cannot_share_a_batch_are_refused(synthetic_task, tiny_backbone, tmp_path):
    base = base_config(synthetic_task, tiny_backbone, tmp_path, 1)
    a = prepare(dataclasses.replace(base, name="a"), check_mlflow=False)
    b = a.with_config(dataclasses.replace(a.config, name="b", max_steps=20))
    with pytest.raises(UserError, match="must share max_steps"):
        check_pack([a, b])
    with pytest.raises(UserError, match="deepspeed: false"):
        check_pack([a.with_config(dataclasses.replace(a.config, deepspeed=True))])


def test_a_pack_that_crashes_resumes_exactly(synthetic_task, tiny_backbone, tmp_path):
    """A worker failure at step 6 (Ray Train retries the pack: max_failures=1) resumes every member from the step-4
    checkpoint: each member's losses are logged once per step and equal the uninterrupted pack's, as do its final
    adapter and its per-member dropout stream."""
    base = base_config(synthetic_task, tiny_backbone, tmp_path, 1)
    members = [prepare(dataclasses.replace(base, name=f"clean-m{k}", **member), check_mlflow=False)
               for k, member in enumerate(MEMBERS)]
    clean = run_pack(members, "clean")
    crashy = [m.with_config(dataclasses.replace(m.config, name=f"crashy-m{k}", max_failures=1,
                                                callbacks=[fail_once_at(6)])) for k, m in enumerate(members)]
    crashed = run_pack(crashy, "crashy")
    assert crashed.statuses == ["FINISHED"] * 3
    assert (tmp_path / "runs" / "crashy" / ".failure-injected-at-6").exists()
    state = json.loads((final_checkpoint(tmp_path / "runs" / "crashy") / "trainer_state.json").read_text())
    assert state["resumed_at"] == [4]
    client = MlflowClient(base.tracking_uri)
    for k in range(3):
        steps = [m.step for m in client.get_metric_history(crashed.run_ids[k], "train/loss")]
        assert sorted(steps) == list(range(1, 9)), steps  # each step once: the replayed steps were not re-logged
        assert_same_fit(client, clean.run_ids[k], crashed.run_ids[k],
                        final_checkpoint(tmp_path / "runs" / "clean") / "members" / str(k) / "adapter",
                        final_checkpoint(tmp_path / "runs" / "crashy") / "members" / str(k) / "adapter")
