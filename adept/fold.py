"""Fold ADePT's FFN into the input embedding table: zero-overhead inference.

The FFN sees only the context-free vocabulary row E[v] (no position, no context) and dropout is off
in eval mode, so the offset is a fixed function of the token id:

    E'[v] = E[v] + ReLU(E[v]·W1 + b1)·W2 + b2        for every v in the vocabulary (V × d table)

Replacing the backbone's *input* table with E' gives the same logits as the on-the-fly model (up to
matmul rounding, ~1e-7 in fp32) at exactly the cost of prompt tuning with m tokens. The output side
must not change, so tied weights are untied first: for causal models the LM head keeps E, for
seq2seq models (T5) the decoder input and LM head keep `shared` = E and only the encoder gets E'.

Memory: `fold()` copies the backbone (V·d for the new table plus the copy itself); fold large models
on a machine with room for two copies, outside any ZeRO-3 engine.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import AdeptConfig
from .layers import SoftPrompt, TokenOffsetFFN, gathered
from .model import AdeptModel

FOLDED_CONFIG_NAME = "adept_folded.json"
FOLDED_WEIGHTS_NAME = "adept_folded.safetensors"
_ROWS_PER_CHUNK = 8192  # bounds the V×r hidden activations while folding a large vocabulary


@torch.no_grad()
def folded_embedding_table(model: AdeptModel) -> torch.Tensor:
    """E + FFN(E) over the whole vocabulary, computed in fp32 and returned in the table's dtype: (V, d)."""
    if model.ffn is None:
        raise ValueError(f"only ADePT can be folded (method={model.config.method!r}): DePT's offset depends on "
                         "the position and prompt tuning has no offset to fold.")
    table = model.base_model.get_input_embeddings().weight
    with gathered([table, *model.ffn.parameters()], modifier_rank=None):
        weights = {name: p.detach().float().clone() for name, p in model.ffn.named_parameters()}
        ffn = TokenOffsetFFN(*weights["w1"].shape, dropout=0.0)  # fp32 copy, dropout off (eval semantics)
        ffn.load_state_dict(weights)
        rows = [chunk.float() + ffn(chunk.float()) for chunk in table.split(_ROWS_PER_CHUNK)]
        return torch.cat(rows).to(table.dtype)


def fold_adept(model: AdeptModel) -> FoldedAdeptModel:
    """A copy of the backbone whose input embedding table is E' = E + FFN(E), plus the soft prompt."""
    if any(hasattr(p, "ds_id") for p in model.base_model.parameters()):
        raise ValueError("fold() needs an unsharded backbone, but DeepSpeed ZeRO-3 has partitioned this one: "
                         "save the adapter, load it onto a plain backbone with AdeptModel.from_pretrained, then fold.")
    new_table = folded_embedding_table(model)
    backbone = copy.deepcopy(model.base_model)
    _install_input_table(backbone, new_table)
    with gathered(model.prompt.parameters(), modifier_rank=None):
        prompt = model.prompt.weight.detach().clone()
    return FoldedAdeptModel(backbone, prompt, model.config)


def _install_input_table(backbone: nn.Module, table: torch.Tensor) -> None:
    embedding = nn.Embedding.from_pretrained(table.clone(), freeze=True)
    if backbone.config.is_encoder_decoder:
        # `shared` stays E for the decoder input and the LM head; only the encoder reads E'.
        backbone.get_encoder().set_input_embeddings(embedding)
        return
    head = backbone.get_output_embeddings()
    if head is not None and head.weight is backbone.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    backbone.config.tie_word_embeddings = False
    if hasattr(backbone.config, "get_text_config"):
        backbone.config.get_text_config().tie_word_embeddings = False
    backbone.set_input_embeddings(embedding)


class FoldedAdeptModel(AdeptModel):
    """Backbone with E' as its input table + the soft prompt; same `forward` / `generate` as `AdeptModel`.

    `save_pretrained(dir)` writes a normal Hugging Face model folder (for causal models its input
    embedding *is* E', untied from the head, so any HF runtime can use it) plus `adept_folded.json` and
    `adept_folded.safetensors` (the soft prompt; for seq2seq also the encoder's E', because T5 configs
    always re-tie the encoder table to `shared` on load). `FoldedAdeptModel.from_pretrained(dir)` loads it.
    """

    def __init__(self, backbone: nn.Module, prompt: torch.Tensor, config: AdeptConfig):
        nn.Module.__init__(self)
        self.base_model = backbone.eval().requires_grad_(False)
        self.config = config
        self.is_encoder_decoder = bool(backbone.config.is_encoder_decoder)
        self.vocab_size, self.hidden_size = self._input_table().weight.shape
        self.prompt = SoftPrompt(prompt.shape[0], prompt.shape[1]).requires_grad_(False)
        self.prompt.weight.data = prompt.to(self._input_table().weight.device)
        self.ffn = self.position_offset = None

    def _input_table(self) -> nn.Module:
        if self.is_encoder_decoder:
            return self.base_model.get_encoder().get_input_embeddings()
        return self.base_model.get_input_embeddings()

    def embed_inputs(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self._input_table()(input_ids)

    def fold(self):
        return self

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.base_model.save_pretrained(path)
        tensors = {"prompt.weight": self.prompt.weight.detach().cpu().contiguous()}
        if self.is_encoder_decoder:
            tensors["encoder_input_embeddings"] = self._input_table().weight.detach().cpu().contiguous()
        save_file(tensors, str(path / FOLDED_WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {"format": "adept-ray-folded", "adept_config": self.config.to_dict(),
                "is_encoder_decoder": self.is_encoder_decoder}
        (path / FOLDED_CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, **model_kwargs) -> FoldedAdeptModel:  # type: ignore[override]
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        path = Path(path)
        meta_file = path / FOLDED_CONFIG_NAME
        if not meta_file.is_file():
            raise FileNotFoundError(f"{str(meta_file)!r} is missing: not a folder written by FoldedAdeptModel.save_pretrained.")
        meta = json.loads(meta_file.read_text())
        tensors = load_file(str(path / FOLDED_WEIGHTS_NAME))
        auto = AutoModelForSeq2SeqLM if meta["is_encoder_decoder"] else AutoModelForCausalLM
        backbone = auto.from_pretrained(path, **model_kwargs)
        if meta["is_encoder_decoder"]:
            table = tensors["encoder_input_embeddings"].to(backbone.get_input_embeddings().weight.dtype)
            _install_input_table(backbone, table)
        return cls(backbone, tensors["prompt.weight"], AdeptConfig.from_dict(meta["adept_config"]))
