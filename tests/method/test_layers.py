import math

import pytest
import torch
from torch import nn

from adept.layers import PositionOffset, SoftPrompt, TokenOffsetFFN


def test_ffn_offset_is_zero_at_init():
    ffn = TokenOffsetFFN(16, 4)
    embeds = torch.randn(2, 5, 16)
    assert torch.count_nonzero(ffn(embeds)) == 0


def test_ffn_offset_matches_hand_computation():
    torch.manual_seed(0)
    ffn = TokenOffsetFFN(16, 4).eval()
    with torch.no_grad():
        for p in ffn.parameters():
            p.normal_()
    e = torch.randn(2, 5, 16)
    w1, b1, w2, b2 = ffn.w1, ffn.b1, ffn.w2, ffn.b2
    expected = torch.relu(e @ w1 + b1) @ w2 + b2  # official: E @ A + a, relu, @ B + b (no scaling)
    torch.testing.assert_close(ffn(e), expected, rtol=0, atol=1e-6)


def test_w1_init_bound_is_one_over_sqrt_r_not_sqrt_d():
    d, r = 768, 19
    torch.manual_seed(0)
    w1 = TokenOffsetFFN(d, r).w1.detach()
    assert w1.shape == (d, r)
    bound = 1 / math.sqrt(r)  # 0.229; nn.Linear(d, r) would give 1/sqrt(768) = 0.036
    assert w1.abs().max() <= bound
    assert w1.abs().max() > 0.99 * bound  # 14,592 uniform samples reach the edge
    assert w1.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert nn.Linear(d, r).weight.abs().max() < bound / 6


def test_ffn_dropout_only_in_training():
    torch.manual_seed(0)
    ffn = TokenOffsetFFN(8, 64, dropout=0.5)
    with torch.no_grad():
        ffn.w2.normal_()
    e = torch.randn(4, 3, 8)
    ffn.train()
    assert not torch.equal(ffn(e), ffn(e))
    ffn.eval()
    assert torch.equal(ffn(e), ffn(e))


def test_position_offset_rows_and_scaling():
    torch.manual_seed(0)
    s, r, d = 6, 3, 4
    layer = PositionOffset(s, r, d, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    assert layer.scaling == pytest.approx(8 / math.sqrt(3))
    full = (layer.lora_A @ layer.lora_B) * layer.scaling  # (s, d), row i for input position i
    e = torch.zeros(2, 4, d)
    torch.testing.assert_close(layer(e), full[:4].expand(2, -1, -1))
    # while generating, a token at position 5 gets row 5; positions >= s get nothing
    torch.testing.assert_close(layer(torch.zeros(1, 1, d), start=5)[0, 0], full[5])
    assert torch.count_nonzero(layer(torch.zeros(1, 2, d), start=6)) == 0


def test_position_offset_zero_at_init_and_a_bound():
    layer = PositionOffset(256, 30, 16)
    assert torch.count_nonzero(layer(torch.randn(1, 256, 16))) == 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(30)


def test_soft_prompt_text_init_tiles_ids():
    emb = nn.Embedding(10, 4)
    prompt = SoftPrompt(5, 4)
    prompt.init_from_token_ids([3, 7], emb)
    torch.testing.assert_close(prompt.weight, emb.weight[[3, 7, 3, 7, 3]])
    assert prompt(2, torch.float32).shape == (2, 5, 4)
