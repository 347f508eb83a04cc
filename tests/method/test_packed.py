"""Packed trials: K adapters over one frozen backbone in one batch compute what each computes alone.

Every test compares a pack of four members (ADePT m=3, DePT m=5 s=12, prompt tuning m=2, ADePT m=0) with the
same members run alone: independent `AdeptModel`s on their own (identical, seeded) backbone copies, fed the
batches each draws alone (own sizes, own dynamic padding). The DePT member's rows fit s=12 while the first
member's rows are longer, so the pack also drops DePT's all-pad columns past s.
"""

import dataclasses
import math
import random

import pytest
import torch
from tiny import WORDS, batch
from wrapped import BACKBONES

from adept import AdeptConfig, AdeptModel, PackedAdeptModel, concat_member_batches
from adept.io import adapter_state_dict, load_adapter_state_dict
from adept.prompted import IGNORE_INDEX

pytestmark = pytest.mark.pack

CONFIGS = [
    AdeptConfig(method="adept", num_virtual_tokens=3, ffn_hidden_size=3, ffn_dropout=0.0,
                prompt_init="sample_vocab", seed=1),
    AdeptConfig(method="dept", num_virtual_tokens=5, rank=2, max_length=12, prompt_init="random", seed=2),
    AdeptConfig(method="prompt", num_virtual_tokens=2, seed=3),
    AdeptConfig(method="adept", num_virtual_tokens=0, ffn_hidden_size=2, ffn_dropout=0.0, seed=4),
]
ROWS = [2, 3, 1, 2]  # each member's batch size
MAX_WORDS = [15, 12, 6, 8]  # member 1 (DePT, s=12) fits s; member 0 makes the packed batch longer than s
KINDS = ["llama", "t5"]
TOL = dict(rtol=0, atol=1e-5)


def member_batch(tok, backbone, k, step=0, padding_side="right"):
    """Member k's batch at `step` as it would draw it alone: padded to its own longest row."""
    rng = random.Random(1000 * step + k)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(2, MAX_WORDS[k]))) for _ in range(ROWS[k])]
    b = batch(tok, texts, padding_side)
    if backbone == "t5":
        targets = batch(tok, [" ".join(rng.choices(WORDS, k=rng.randint(1, 3))) for _ in texts], "right")
        b["labels"] = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, IGNORE_INDEX)
    else:
        b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, IGNORE_INDEX)
    return b


def shuffled(packed, seed=0):
    """The packed batch with its rows interleaved (members need not be contiguous)."""
    order = torch.randperm(packed["member"].shape[0], generator=torch.Generator().manual_seed(seed))
    return {key: value[order] for key, value in packed.items()}


def rows_of(packed, k, seed=0):
    """Where member k's rows (in their solo order) sit in `shuffled(packed, seed)`."""
    order = torch.randperm(packed["member"].shape[0], generator=torch.Generator().manual_seed(seed))
    where = torch.empty_like(order)
    where[order] = torch.arange(order.shape[0])
    return where[(packed["member"] == k).nonzero().squeeze(1)]


def make_pack(backbone, tok, randomize=True):
    pack = PackedAdeptModel.from_configs(BACKBONES[backbone](), CONFIGS, tok)
    if randomize:  # the offsets start at 0 (W2 = 0, B = 0): give them weights so the tests can see them
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, p in pack.members.named_parameters():
                if ".prompt." not in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return pack


def solo_copies(pack, backbone):
    """Each member alone: a fresh AdeptModel on its own backbone copy, with the member's weights."""
    models = []
    for k, cfg in enumerate(pack.configs):
        solo = AdeptModel(BACKBONES[backbone](), dataclasses.replace(cfg), init_prompt=False)
        load_adapter_state_dict(solo, adapter_state_dict(pack.member_model(k)))
        models.append(solo)
    return models


def assert_logits_match(backbone, packed, packed_logits, solo_logits, k, b, seed=None):
    """Packed logits of member k's rows (`packed` unshuffled, run shuffled with `seed`) equal its solo logits at
    every real position."""
    rows = (packed["member"] == k).nonzero().squeeze(1) if seed is None else rows_of(packed, k, seed)
    if backbone == "t5":
        torch.testing.assert_close(packed_logits[rows, : solo_logits.shape[1]], solo_logits, **TOL)
        return
    m, length = CONFIGS[k].num_virtual_tokens, b["input_ids"].shape[1]
    real = b["attention_mask"].bool()
    torch.testing.assert_close(packed_logits[rows, :length][real], solo_logits[:, m:][real], **TOL)


def test_members_are_built_as_alone_and_share_one_backbone(tok):
    pack = make_pack("llama", tok, randomize=False)
    for k, cfg in enumerate(CONFIGS):
        alone = AdeptModel(BACKBONES["llama"](), dataclasses.replace(cfg), tok)
        for (name, p), (alone_name, q) in zip(pack.members[k].named_parameters(), alone.adapter_named_parameters(),
                                              strict=True):
            assert name == alone_name and torch.equal(p, q), (k, name)
        assert pack.member_model(k).base_model is pack.base_model
    backbone = sum(p.numel() for p in pack.base_model.parameters())
    adapters = sum(c.num_trainable_params(pack.hidden_size) for c in CONFIGS)
    assert sum(p.numel() for p in pack.parameters()) == backbone + adapters
    assert sum(p.numel() for p in pack.parameters() if p.requires_grad) == adapters
    assert not [key for key in pack.state_dict() if not key.startswith(("base_model.", "members."))]


@pytest.mark.parametrize(("backbone", "padding_side"), [("llama", "right"), ("llama", "left"), ("t5", "right")])
def test_each_member_loss_and_logits_equal_the_member_alone(backbone, padding_side, tok):
    pack = make_pack(backbone, tok).eval()
    batches = [member_batch(tok, backbone, k, padding_side=padding_side) for k in range(len(CONFIGS))]
    solo = [s.eval() for s in solo_copies(pack, backbone)]
    unshuffled = concat_member_batches(batches, tok.pad_token_id)
    packed = shuffled(unshuffled)
    if backbone == "llama":
        assert packed["input_ids"].shape[1] > CONFIGS[1].max_length  # DePT's pad columns past s are dropped
    with torch.no_grad():
        out = pack(**packed)
        scored = pack(packed["input_ids"], packed["attention_mask"], member=packed["member"],
                      **({"decoder_input_ids": pack.base_model.prepare_decoder_input_ids_from_labels(
                          labels=packed["labels"])} if backbone == "t5" else {}))
        alone = [s(**b) for s, b in zip(solo, batches, strict=True)]
    # causal: position t predicts token t + 1, so with m = 0 the first token of a row is nobody's target
    first = [0 if backbone == "t5" or c.num_virtual_tokens else 1 for c in CONFIGS]
    tokens = [int((b["labels"][:, f:] != IGNORE_INDEX).sum()) for f, b in zip(first, batches, strict=True)]
    assert out.member_tokens.tolist() == tokens
    for k, (a, b) in enumerate(zip(alone, batches, strict=True)):
        torch.testing.assert_close(out.member_loss[k], a.loss, **TOL)
        assert_logits_match(backbone, unshuffled, out.logits, a.logits, k, b, seed=0)
        assert_logits_match(backbone, unshuffled, scored.logits, a.logits, k, b, seed=0)  # inference: no labels
    torch.testing.assert_close(out.loss, sum(a.loss for a in alone), **TOL)  # Σ_k mean_k, not one mean
    assert scored.loss is None
    if backbone == "llama":  # the vocabulary head only where labelled: the same losses
        with torch.no_grad():
            fast = pack(**packed, loss_only=True)
        assert fast.logits is None
        torch.testing.assert_close(fast.member_loss, out.member_loss, **TOL)


def member_grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize("backbone", KINDS)
def test_each_member_gets_its_solo_gradient_and_only_its_own(backbone, tok):
    pack, batches = make_pack(backbone, tok).train(), [member_batch(tok, backbone, k) for k in range(len(CONFIGS))]
    solo = [s.train() for s in solo_copies(pack, backbone)]
    packed = shuffled(concat_member_batches(batches, tok.pad_token_id))
    pack(**packed, loss_only=True).loss.backward()
    for k, (s, b) in enumerate(zip(solo, batches, strict=True)):
        s(**b, loss_only=True).loss.backward()
        expected = [p for _, p in s.adapter_named_parameters()]
        for p, q in zip(pack.member_parameters(k), expected, strict=True):
            if q.numel() == 0:  # ADePT with m = 0: an empty prompt, no gradient on either side
                assert p.grad is None and q.grad is None
                continue
            assert q.grad.norm() > 0
            torch.testing.assert_close(p.grad, q.grad, **TOL)

    pack.zero_grad(set_to_none=True)
    pack(**packed).member_loss[0].backward()  # a loss on member 0's rows only
    assert all(p.grad.norm() > 0 for p in pack.member_parameters(0) if p.numel())
    for k in range(1, len(CONFIGS)):
        assert all(p.grad is None or not p.grad.any() for p in pack.member_parameters(k)), k


PROMPT_LR, OFFSET_LR, MAX_NORM = [0.3, 0.2, 0.1, 0.05], [0.1, 0.05, 0.2, 0.1], [0.5, 1.0, 0.05, 0.3]


def train_alone(solo, backbone, tok, k, steps):
    model = solo[k].train()
    opt = torch.optim.AdamW(model.parameter_groups(PROMPT_LR[k], OFFSET_LR[k], weight_decay=0.01), eps=1e-6)
    for step in range(steps):
        model(**member_batch(tok, backbone, k, step), loss_only=True).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM[k])
        opt.step()
        opt.zero_grad()
    return [p.detach() for _, p in model.adapter_named_parameters()]


def train_packed(pack, backbone, tok, steps, prompt_lr=PROMPT_LR, offset_lr=OFFSET_LR):
    """The trainer's loop: one batch of every member, Σ_k mean_k, drop diverged members, clip per member."""
    pack.train()
    opt = torch.optim.AdamW(pack.parameter_groups(prompt_lr, offset_lr, weight_decay=0.01), eps=1e-6)
    failed, clipped = set(), []
    for step in range(steps):
        batches = {k: member_batch(tok, backbone, k, step) for k in range(len(CONFIGS)) if k not in failed}
        out = pack(**shuffled(concat_member_batches(batches, tok.pad_token_id), step), loss_only=True)
        out.loss.backward()
        failed.update(pack.nonfinite_members(out.member_loss))
        pack.drop_grads(failed)
        norms = pack.clip_grad_norms(MAX_NORM)
        clipped.append([n > limit for n, limit in zip(norms.tolist(), MAX_NORM, strict=True)])
        opt.step()
        opt.zero_grad()
    return failed, clipped


@pytest.mark.parametrize("backbone", KINDS)
def test_adamw_steps_with_member_groups_and_member_clipping_give_the_solo_adapters(backbone, tok):
    pack = make_pack(backbone, tok)
    solo = solo_copies(pack, backbone)
    failed, clipped = train_packed(pack, backbone, tok, steps=4)
    assert not failed
    assert any(any(c) for c in clipped) and not all(all(c) for c in clipped)  # some members clipped, some not
    for k in range(len(CONFIGS)):
        for p, q in zip(pack.member_parameters(k), train_alone(solo, backbone, tok, k, steps=4), strict=True):
            torch.testing.assert_close(p.detach(), q, **TOL)


@pytest.mark.parametrize("backbone", KINDS)
def test_a_diverged_member_leaves_the_others_as_alone(backbone, tok):
    pack = make_pack(backbone, tok)
    solo = solo_copies(pack, backbone)
    inf_lr = [math.inf if k == 1 else lr for k, lr in enumerate(PROMPT_LR)]
    failed, _ = train_packed(pack, backbone, tok, steps=3, prompt_lr=inf_lr)
    assert failed == {1}
    assert not all(torch.isfinite(p).all() for p in pack.member_parameters(1))
    for k in (0, 2, 3):
        for p, q in zip(pack.member_parameters(k), train_alone(solo, backbone, tok, k, steps=3), strict=True):
            torch.testing.assert_close(p.detach(), q, **TOL)


@pytest.mark.parametrize("backbone", KINDS)
def test_save_member_loads_as_an_ordinary_adapter_and_a_pack_builds_from_folders(backbone, tok, tmp_path):
    pack, batches = make_pack(backbone, tok).eval(), [member_batch(tok, backbone, k) for k in range(len(CONFIGS))]
    packed = concat_member_batches(batches, tok.pad_token_id)
    folders = [tmp_path / f"member{k}" for k in range(len(CONFIGS))]
    for k, folder in enumerate(folders):
        pack.save_member(k, folder)
        assert sorted(f.name for f in folder.iterdir()) == ["adept_config.json", "adept_model.safetensors"]
    reloaded = PackedAdeptModel.from_pretrained(BACKBONES[backbone](), folders).eval()
    with torch.no_grad():
        out, again = pack(**packed), reloaded(**packed)
        for k, (folder, b) in enumerate(zip(folders, batches, strict=True)):
            alone = AdeptModel.from_pretrained(BACKBONES[backbone](), folder).eval()
            assert alone.config == pack.configs[k]
            assert_logits_match(backbone, packed, out.logits, alone(**b).logits, k, b)
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=0)


def test_refuses_bad_member_ids_and_real_tokens_past_depts_length(tok):
    pack = make_pack("llama", tok)
    b = batch(tok, ["good movie", "bad film"])
    with pytest.raises(ValueError, match="member ids must be in"):
        pack(**b, member=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="one member per row"):
        pack(**b, member=torch.tensor([0]))
    long = batch(tok, [" ".join(["good"] * 13)])
    with pytest.raises(ValueError, match="exceeds max_length=12"):
        pack(**long, member=torch.tensor([1]))
    with pytest.raises(ValueError, match="one per member"):
        pack.parameter_groups([0.1, 0.2], 0.1)
