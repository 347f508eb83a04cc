"""Packs under DeepSpeed, 2 workers: a member equals its solo DeepSpeed fit to 1e-5 (losses, scores, adapter).

ZeRO-3: the pack's one backbone is built partitioned and DeepSpeed gathers it layer by layer (its parameter offload,
no optimizer); the solo fits train through DeepSpeed's own ZeRO-3 optimizer. ZeRO-2 would shard only trainable
state, which in a pack is K tiny adapters: the pack engine keeps them whole, and the solo fits use DeepSpeed's ZeRO-2.
"""

from __future__ import annotations

import pytest
from pack_helpers import assert_members_are_solo_fits, base_config

pytestmark = [pytest.mark.pack, pytest.mark.slow]


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_member_of_a_deepspeed_pack_is_its_solo_fit(synthetic_task, tiny_backbone, tmp_path, zero_stage):
    base = base_config(synthetic_task, tiny_backbone, tmp_path, 2, deepspeed=True, zero_stage=zero_stage)
    assert_members_are_solo_fits(base, tmp_path, rows_per_forward=0 if zero_stage == 3 else None, count=2)
