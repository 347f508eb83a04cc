"""A member trained in a pack IS the same configuration trained alone: every logged loss, every validation score and
the final adapter agree to 1e-5 (same seed, same data order, ADePT dropout ON: each member draws its masks from
its own RNG stream, started where its solo fit's starts), for a pack that mixes methods and prompt lengths, causal
(Llama) and seq2seq (T5), on one worker and on two (gradients all-reduced by the pack engine, as DDP does for a
solo fit). DeepSpeed: tests/method/test_pack_deepspeed.py; faults: tests/faults/test_pack_faults.py.
"""

from __future__ import annotations

import pytest
from pack_helpers import assert_members_are_solo_fits, base_config
from tiny import tiny_t5, tiny_tokenizer

pytestmark = [pytest.mark.pack, pytest.mark.slow]


@pytest.fixture(scope="module")
def t5_backbone(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    tiny_t5().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("kind", "workers", "rows_per_forward", "count"),
                         [("llama", 1, 0, 3), ("llama", 2, None, 2), ("t5", 1, 0, 2)])
def test_a_member_of_a_pack_is_its_solo_fit(synthetic_task, tiny_backbone, t5_backbone, tmp_path, kind, workers,
                                            rows_per_forward, count):
    """rows_per_forward 0: all members in one forward pass (the GPU default); None: one member per pass. count: the
    first 3 (ADePT, DePT, PT) or 2 (ADePT, DePT) members of pack_helpers.MEMBERS."""
    backbone = tiny_backbone if kind == "llama" else t5_backbone
    assert_members_are_solo_fits(base_config(synthetic_task, backbone, tmp_path, workers), tmp_path, rows_per_forward,
                                 count)
