"""`AdeptModel`: the trainable adapter (soft prompt + ADePT's token offset FFN or DePT's position offsets) on a
frozen backbone, and `get_adept_model`.

The prompted forward / generate are `PromptedModel`'s (`adept.prompted`, re-exported here); this module adds the
offsets, the parameter groups, and the file, fold and export entry points (`save_pretrained`,
`from_pretrained`, `fold`), which call `adept.io` and `adept.fold`: they never import this module back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .config import AdeptConfig
from .fold import FoldedAdeptModel, fold_adept
from .io import load_adapter_state_dict, read_adapter, save_adapter
from .layers import PositionOffset, SoftPrompt, TokenOffsetFFN, _true_shape, gathered
from .prompted import IGNORE_INDEX, PromptedModel, labelled_head_supported, takes_boolean_logits_to_keep


class AdeptModel(PromptedModel):
    """Wraps `base_model` (a transformers `PreTrainedModel`), freezes it and adds the adapter.

    Build it with `get_adept_model(base_model, config, tokenizer)`; reload a saved adapter with
    `AdeptModel.from_pretrained(base_model, path)`.
    """

    def __init__(self, base_model: nn.Module, config: AdeptConfig, tokenizer=None, *, init_prompt: bool = True):
        base_model.requires_grad_(False)
        embedding = base_model.get_input_embeddings()
        d = _true_shape(embedding.weight)[1]
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(base_model, "name_or_path", None) or None
        if config.revision is None:
            config.revision = getattr(base_model.config, "_commit_hash", None)

        device = embedding.weight.device
        # Seed the adapter init without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            super().__init__(base_model, config, SoftPrompt(config.num_virtual_tokens, d))
            self.ffn = (
                TokenOffsetFFN(d, config.ffn_hidden_size, config.ffn_dropout) if config.method == "adept" else None
            )
            self.position_offset = (
                PositionOffset(config.max_length, config.rank, d, config.dept_alpha) if config.method == "dept" else None
            )
            for module in (self.prompt, self.ffn, self.position_offset):
                if module is not None:
                    module.to(device)
            if init_prompt:
                self._init_prompt(embedding, tokenizer)

    # ------------------------------------------------------------------ init
    def _init_prompt(self, embedding: nn.Embedding, tokenizer) -> None:
        cfg = self.config
        if cfg.num_virtual_tokens == 0 or cfg.prompt_init == "random":
            return
        if cfg.prompt_init == "sample_vocab":
            ids = torch.randint(0, self.vocab_size, (cfg.num_virtual_tokens,)).tolist()
        else:
            tokenizer = tokenizer or _load_tokenizer(cfg.base_model_name_or_path)
            ids = tokenizer(cfg.prompt_init_text, add_special_tokens=True)["input_ids"]
        self.prompt.init_from_token_ids(ids, embedding)

    # ------------------------------------------------------------------ the method
    def input_offset(self, embeds: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor | None:
        """ADePT: FFN(E); DePT: the position offsets at `start` (see `PromptedModel.input_offset`); PT: None."""
        if self.ffn is not None:
            return self.ffn(embeds)
        if self.position_offset is not None:
            return self.position_offset(embeds, start)
        return None

    def check_input_length(self, length: int) -> None:
        """Raise if inputs of `length` tokens are longer than DePT's s (no-op for ADePT and PT)."""
        if self.position_offset is not None and length > self.position_offset.max_length:
            raise ValueError(
                f"DePT input length {length} exceeds max_length={self.position_offset.max_length}; "
                "truncate inputs to AdeptConfig.max_length (DePT's offsets cover exactly s positions)."
            )

    @contextlib.contextmanager
    def _offset_fed_back_tokens(self, start: int) -> Iterator[None]:
        """While generating, route the backbone's own embedding lookups through the offset."""
        original = self.base_model.get_input_embeddings()
        if self.ffn is None and self.position_offset is None:
            yield
            return
        self.base_model.set_input_embeddings(_OffsetEmbedding(original, self, start))
        try:
            yield
        finally:
            self.base_model.set_input_embeddings(original)

    # ------------------------------------------------------------------ training helpers
    def adapter_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The adapter's own tensors (`prompt.weight`, `ffn.w1`, ...), never the backbone's."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("base_model.")]

    def parameter_groups(self, prompt_lr: float, offset_lr: float, weight_decay: float = 0.0) -> list[dict]:
        """Two AdamW groups as in the paper: the soft prompt at `prompt_lr`, FFN/low-rank offsets at `offset_lr`.

        Empty groups are left out (DeepSpeed fails on them), so PT yields one group and ADePT with m=0 too.
        """
        prompt = [p for n, p in self.adapter_named_parameters() if n.startswith("prompt.") and p.numel()]
        offset = [p for n, p in self.adapter_named_parameters() if not n.startswith("prompt.")]
        groups = [
            {"name": "prompt", "params": prompt, "lr": prompt_lr, "weight_decay": weight_decay},
            {"name": "offset", "params": offset, "lr": offset_lr, "weight_decay": weight_decay},
        ]
        return [g for g in groups if g["params"]]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def print_trainable_parameters(self) -> None:
        trainable = self.num_trainable_parameters()
        total = sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # ------------------------------------------------------------------ files
    def save_pretrained(self, path: str | Path) -> None:
        """Write `adept_config.json` + `adept_model.safetensors` (adapter tensors only; see `adept.io`)."""
        save_adapter(self, path)

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, path: str | Path) -> AdeptModel:
        """Load an adapter saved by `save_pretrained` (also adept-ray 0.1), or an official ADePT / PEFT prompt-tuning folder."""
        config, state, folder = read_adapter(base_model, path)
        model = cls(base_model, config, init_prompt=False)
        load_adapter_state_dict(model, state, str(folder))
        return model

    def fold(self) -> FoldedAdeptModel:
        """ADePT only: a `FoldedAdeptModel` whose input embedding table is E + FFN(E) (eval-mode exact)."""
        return fold_adept(self)


class _OffsetEmbedding(nn.Module):
    """Stands in for the backbone's input embedding during causal generation (see `generate`)."""

    def __init__(self, embedding: nn.Module, adapter: AdeptModel, start: int):
        super().__init__()
        self.embedding, self.adapter, self.position = embedding, adapter, start

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.embedding(input_ids)
        offset = self.adapter.input_offset(embeds, self.position)
        self.position += input_ids.shape[1]
        return embeds if offset is None else embeds + offset


def get_adept_model(base_model: nn.Module, config: AdeptConfig, tokenizer=None) -> AdeptModel:
    """Freeze `base_model` and wrap it with the adapter described by `config`.

    `tokenizer` is needed for `prompt_init="text"`; when omitted it is loaded from the backbone's name.
    """
    return AdeptModel(base_model, config, tokenizer)


def _load_tokenizer(name_or_path: str | None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # noqa: BLE001 - any failure means the same fix
        raise ValueError(
            f"prompt_init='text' needs a tokenizer, and none could be loaded from {name_or_path!r} ({err}). "
            "Pass tokenizer= to get_adept_model, or set AdeptConfig.prompt_init='sample_vocab'."
        ) from err


__all__ = ["PromptedModel", "AdeptModel", "get_adept_model", "labelled_head_supported", "takes_boolean_logits_to_keep",
           "IGNORE_INDEX", "gathered"]
