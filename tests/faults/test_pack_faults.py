"""Packs under faults: a member whose learning rate blows it up fails alone (the others finish as they would without
it); a pack whose worker crashes resumes every member exactly from the last checkpoint; members that cannot share a
batch are refused before anything starts."""

from __future__ import annotations

import dataclasses
import json

import pytest
from fault_hooks import fail_once_at
from mlflow import MlflowClient
from pack_helpers import MEMBERS, assert_same_fit, base_config, final_checkpoint, run_id_of

from pipeline.core.errors import UserError
from pipeline.driver.launch import prepare, run_fit
from pipeline.driver.pack import check_pack, run_pack

pytestmark = [pytest.mark.pack, pytest.mark.faults, pytest.mark.slow]


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
    with pytest.raises(UserError, match="offload: false"):
        check_pack([a.with_config(dataclasses.replace(a.config, deepspeed=True, offload=True))])


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
