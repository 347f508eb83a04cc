"""The trainable pieces: `SoftPrompt`, ADePT's `TokenOffsetFFN` and DePT's `PositionOffset`.

Each layer stores its tensors in the official layout (see `adept.io.OFFICIAL_KEYS`) so official
checkpoints load without transposes, and initialises them exactly as the official code does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class SoftPrompt(nn.Module):
    """m trainable virtual-token embeddings P, prepended to every input.

    Input: batch size B.  Output shape: (B, m, d).
    """

    def __init__(self, num_virtual_tokens: int, hidden_size: int):
        super().__init__()
        # nn.Embedding's default init N(0, 1) is the official "random" init; `init_*` overwrite it.
        self.weight = nn.Parameter(torch.randn(num_virtual_tokens, hidden_size))

    @property
    def num_virtual_tokens(self) -> int:
        return _true_shape(self.weight)[0]

    def forward(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype).unsqueeze(0).expand(batch_size, -1, -1)

    @torch.no_grad()
    def init_from_token_ids(self, token_ids: list[int], embedding: nn.Embedding) -> None:
        """Copy vocabulary embeddings of `token_ids`, tiled cyclically and cut to m rows."""
        m = self.num_virtual_tokens
        if m == 0:
            return
        if not token_ids:
            raise ValueError("prompt init got no token ids: the init text tokenised to nothing.")
        vocab = _true_shape(embedding.weight)[0]
        too_large = sorted({i for i in token_ids if not 0 <= i < vocab})
        if too_large:
            raise ValueError(f"prompt_init_text tokenises to id(s) {too_large[:5]} outside the backbone's vocabulary of "
                             f"{vocab}: the tokenizer does not belong to this backbone; pass the backbone's own "
                             "tokenizer, or set prompt_init='sample_vocab'.")
        ids = (token_ids * math.ceil(m / len(token_ids)))[:m]
        with gathered([embedding.weight, self.weight]):
            rows = embedding.weight[torch.tensor(ids, device=embedding.weight.device)]
            self.weight.copy_(rows.to(self.weight.dtype))


class TokenOffsetFFN(nn.Module):
    """ADePT's token-shared FFN: `offset(E) = ReLU(E·W1 + b1)·W2 + b2`, added to every input embedding.

    Official layout and init (ADePT `prompt_tuning_lorax.py`):
      w1: (d, r), kaiming_uniform_(a=sqrt(5)) -> fan_in = size(1) = r -> U(-1/sqrt(r), 1/sqrt(r))
          (an nn.Linear(d, r) init would be U(±1/sqrt(d)), 6.4x smaller at d=768, r=19)
      b1: (r,) zeros;  w2: (r, d) zeros;  b2: (d,) zeros  -> the offset is exactly 0 at step 0.
    Dropout (p=0.1) acts on the hidden pre-activation in training only; no scaling, no LayerNorm.
    Costs 2·d·r multiply-adds per token (29K at d=768, r=19).

    Input shape: (B, L, d).  Output shape: (B, L, d), the offset (not E + offset).
    """

    def __init__(self, hidden_size: int, ffn_hidden_size: int, dropout: float = 0.1):
        super().__init__()
        d, r = hidden_size, ffn_hidden_size
        self.dropout = dropout
        self.w1 = nn.Parameter(torch.empty(d, r))
        self.b1 = nn.Parameter(torch.zeros(r))
        self.w2 = nn.Parameter(torch.zeros(r, d))
        self.b2 = nn.Parameter(torch.zeros(d))
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        dtype = embeds.dtype
        hidden = embeds @ self.w1.to(dtype) + self.b1.to(dtype)
        # Official order is dropout then ReLU; inverted dropout scales by 0 or 1/(1-p) > 0, so it commutes.
        hidden = F.dropout(hidden, p=self.dropout, training=self.training)
        return F.relu(hidden) @ self.w2.to(dtype) + self.b2.to(dtype)


class PositionOffset(nn.Module):
    """DePT's position-based low-rank offset: input position i gets row i of `scaling·(A·B)`.

    A: (s, r) kaiming_uniform_(a=sqrt(5)) over fan_in = r;  B: (r, d) zeros;  scaling = alpha / sqrt(r).

    Input: embeddings (B, L, d) of input positions `start .. start+L-1` (start > 0 while generating), or
    with `start` a (B, L) LongTensor, of those positions per token (a continuation of prompts of
    different lengths, as in one-pass rank evaluation).
    Output: the offset (B, L, d). Positions >= s get no offset (DePT only defines s positions).
    """

    def __init__(self, max_length: int, rank: int, hidden_size: int, alpha: float = 8.0):
        super().__init__()
        self.scaling = alpha / math.sqrt(rank)
        self.lora_A = nn.Parameter(torch.empty(max_length, rank))
        self.lora_B = nn.Parameter(torch.zeros(rank, hidden_size))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def max_length(self) -> int:
        return _true_shape(self.lora_A)[0]

    def forward(self, embeds: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        if isinstance(start, torch.Tensor):
            return self._at_positions(embeds, start)
        length = embeds.shape[1]
        s = self.max_length
        offset = embeds.new_zeros(length, embeds.shape[2])
        covered = max(0, min(length, s - start))
        if covered:
            rows = self.lora_A[start:start + covered].to(embeds.dtype) @ self.lora_B.to(embeds.dtype)
            offset = torch.cat([rows * self.scaling, offset[covered:]], dim=0)
        return offset.unsqueeze(0).expand(embeds.shape[0], -1, -1)

    def _at_positions(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if positions.shape != embeds.shape[:2]:
            raise ValueError(f"positions {tuple(positions.shape)} must match the embeddings' (B, L) {tuple(embeds.shape[:2])}")
        covered = (positions >= 0) & (positions < self.max_length)
        rows = self.lora_A[positions.clamp(0, self.max_length - 1)].to(embeds.dtype) @ self.lora_B.to(embeds.dtype)
        return rows * self.scaling * covered.unsqueeze(-1).to(embeds.dtype)


def _true_shape(param: torch.Tensor) -> tuple[int, ...]:
    """Shape of a parameter, also when DeepSpeed ZeRO-3 has partitioned it to an empty tensor."""
    return tuple(getattr(param, "ds_shape", param.shape))


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modifier_rank: int | None = 0) -> Iterator[None]:
    """Gather ZeRO-3-partitioned parameters for direct reads/writes; a no-op for ordinary tensors.

    Writes made inside the block on `modifier_rank` are broadcast back to the partitions.
    """
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed  # only reached when DeepSpeed already partitioned the model

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield
