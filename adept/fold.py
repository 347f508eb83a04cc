"""Fold ADePT's FFN into the input embedding table: zero-overhead inference.

The FFN sees only the context-free vocabulary row E[v] (no position, no context) and dropout is off
in eval mode, so the offset is a fixed function of the token id:

    E'[v] = E[v] + ReLU(E[v]·W1 + b1)·W2 + b2        for every v in the vocabulary (V × d table)

Replacing the backbone's *input* table with E' gives the same logits as the on-the-fly model (up to
matmul rounding, ~1e-7 in fp32) at exactly the cost of prompt tuning with m tokens. The output side
must not change, so tied weights are untied first. After folding, `get_input_embeddings()` is E' for
every backbone:

* causal models: the input table is E', the LM head keeps E;
* seq2seq models (T5): `shared` and the encoder's table are E', the decoder's input table and the LM
  head keep E (own tensors, so a saved folder holds all of them; transformers 5 loads tables that
  differ in the checkpoint without re-tying them, with a warning that they differ).

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
from .prompted import PromptedModel

FOLDED_CONFIG_NAME = "adept_folded.json"
FOLDED_WEIGHTS_NAME = "adept_folded.safetensors"
FOLDED_FORMAT = "adept-ray-folded"
_ROWS_PER_CHUNK = 8192  # bounds the V×r hidden activations while folding a large vocabulary


@torch.no_grad()
def folded_embedding_table(model: PromptedModel) -> torch.Tensor:
    """E + FFN(E) of an ADePT `AdeptModel` over the whole vocabulary, computed in fp32 and returned in the table's dtype: (V, d)."""
    if model.ffn is None:
        raise ValueError(f"only ADePT can be folded (method={model.config.method!r}): DePT's offset depends on "
                         "the position and prompt tuning has no offset to fold.")
    table = model.base_model.get_input_embeddings().weight
    with gathered([table, *model.ffn.parameters()], modifier_rank=None):
        weights = {name: p.detach().float().clone() for name, p in model.ffn.named_parameters()}
        # an fp32 copy beside the table (a GPU backbone's table is on the GPU), dropout off (eval semantics)
        ffn = TokenOffsetFFN(*weights["w1"].shape, dropout=0.0).to(table.device)
        ffn.load_state_dict(weights)
        rows = [chunk.float() + ffn(chunk.float()) for chunk in table.split(_ROWS_PER_CHUNK)]
        return torch.cat(rows).to(table.dtype)


def fold_adept(model: PromptedModel) -> FoldedAdeptModel:
    """What `AdeptModel.fold()` returns: a copy of the backbone whose input embedding table is E' = E + FFN(E), plus the soft prompt."""
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
    """Make `table` (E') the backbone's input table; the output side (and a seq2seq decoder's input) keeps E.

    Idempotent: E is taken from the side that keeps it (the decoder's table for seq2seq models).
    """
    embedding = nn.Embedding.from_pretrained(table.clone(), freeze=True)
    is_seq2seq = bool(backbone.config.is_encoder_decoder)
    original = backbone.get_decoder().get_input_embeddings() if is_seq2seq else backbone.get_input_embeddings()
    head = backbone.get_output_embeddings()
    if head is not None and head.weight is original.weight:
        # The head gets its own copy of E: tied to nothing, it is saved (and loaded) as itself.
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    if is_seq2seq:
        # T5's set_input_embeddings also sets the decoder's table: give the decoder E back afterwards.
        # Its config always says tie_word_embeddings=True (it also decides T5's output scaling): left alone.
        backbone.set_input_embeddings(embedding)
        backbone.get_encoder().set_input_embeddings(embedding)
        backbone.get_decoder().set_input_embeddings(original)
        return
    backbone.config.tie_word_embeddings = False
    if hasattr(backbone.config, "get_text_config"):
        backbone.config.get_text_config().tie_word_embeddings = False
    backbone.set_input_embeddings(embedding)


class FoldedAdeptModel(PromptedModel):
    """Backbone with E' as its input table + the soft prompt; same `forward` / `generate` as `AdeptModel`.

    Made by `AdeptModel.fold()`. `save_pretrained(dir)` writes a normal Hugging Face model folder (its
    input table *is* E', untied from the head, so any HF runtime can use it) plus `adept_folded.json`
    and `adept_folded.safetensors` (the soft prompt; for seq2seq also the encoder's E', so loading does
    not depend on how transformers treats T5's always-tied tables). `FoldedAdeptModel.load(dir)` loads it.

    Args:
        base_model: the folded backbone (E' installed, see `_install_input_table`); frozen, eval mode.
        prompt: the soft prompt P, (m, d).
        config: the `AdeptConfig` of the adapter that was folded.
    """

    def __init__(self, base_model: nn.Module, prompt: torch.Tensor, config: AdeptConfig):
        base_model = base_model.eval().requires_grad_(False)
        soft_prompt = SoftPrompt(0, prompt.shape[1])  # empty: no random init drawn, P is set below
        soft_prompt.weight = nn.Parameter(prompt.detach().clone(), requires_grad=False)
        super().__init__(base_model, config, soft_prompt)
        self.prompt.to(self.base_model.get_input_embeddings().weight.device)
        if self.prompt.num_virtual_tokens != config.num_virtual_tokens:
            raise ValueError(f"FoldedAdeptModel: the prompt has {self.prompt.num_virtual_tokens} rows, but the config "
                             f"says num_virtual_tokens={config.num_virtual_tokens}.")

    def embed_inputs(self, input_ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """E'[ids]: a plain lookup, the offset is in the table (no call into `input_offset`; `start` is unused)."""
        return self.base_model.get_input_embeddings()(input_ids)

    def fold(self) -> FoldedAdeptModel:
        return self

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.base_model.save_pretrained(path)
        tensors = {"prompt.weight": self.prompt.weight.detach().cpu().contiguous()}
        if self.is_encoder_decoder:
            tensors["encoder_input_embeddings"] = self.base_model.get_input_embeddings().weight.detach().cpu().contiguous()
        save_file(tensors, str(path / FOLDED_WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {"format": FOLDED_FORMAT, "adept_config": self.config.to_dict(),
                "is_encoder_decoder": self.is_encoder_decoder}
        (path / FOLDED_CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, **model_kwargs) -> FoldedAdeptModel:
        """Load a folder written by `save_pretrained`; `model_kwargs` go to the backbone's `from_pretrained`
        (e.g. `dtype=torch.bfloat16`, `device_map=...`).

        Unlike `AdeptModel.from_pretrained(base_model, path)` no backbone is passed: the folder holds it.
        """
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
            _install_input_table(backbone, table.to(backbone.get_input_embeddings().weight.device))
        prompt = tensors["prompt.weight"]
        return cls(backbone, prompt, AdeptConfig.from_dict(meta["adept_config"]))

    @classmethod
    def from_pretrained(cls, path: str | Path, **model_kwargs) -> FoldedAdeptModel:
        """Alias of `load(path, **model_kwargs)`, kept for code written against adept-ray 0.1.

        Note the signature differs from `AdeptModel.from_pretrained(base_model, path)`: the folded folder
        holds its backbone. New code should call `FoldedAdeptModel.load`.
        """
        return cls.load(path, **model_kwargs)
