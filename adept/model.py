"""`AdeptModel`: a frozen Hugging Face backbone plus a soft prompt and (ADePT/DePT) input offsets.

The whole method is `_prompted_inputs`: for input ids X (B, L)

    E  = embed(X)                                   (B, L, d)   frozen vocabulary lookup
    E' = E + offset(E)                               ADePT: ReLU(E·W1 + b1)·W2 + b2;  DePT: scaling·(A·B)[:L]
    inputs_embeds = [P ; E']                         (B, m + L, d)   the prompt gets no offset
    attention_mask = [1_m ; mask]                    (B, m + L)

then the backbone runs on `inputs_embeds`. Seq2seq (T5): only the encoder input changes; the decoder
and its labels are untouched. Causal (Llama, SmolLM): labels get m leading -100s and the returned
logits cover the prompt positions too (B, m + L, V), as in the official code.

Training needs only the loss: `forward(..., loss_only=True)` (what the training engines call) computes
causal vocabulary logits at the labelled positions only, and returns the loss with `logits=None`.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdeptConfig
from .layers import PositionOffset, SoftPrompt, TokenOffsetFFN, _true_shape, gathered

if TYPE_CHECKING:
    from .fold import FoldedAdeptModel

IGNORE_INDEX = -100


class PromptedModel(nn.Module):
    """What `AdeptModel` and `FoldedAdeptModel` share: a frozen backbone, a soft prompt, and the prompted
    `forward` / `generate`.

    Subclasses say how input ids become embeddings (`embed_inputs`); the base prepends the prompt,
    extends the attention mask (and, for causal models, the labels) and calls the backbone.
    """

    def __init__(self, base_model: nn.Module, config: AdeptConfig, prompt: SoftPrompt):
        super().__init__()
        self.base_model = base_model
        self.config = config
        self.is_encoder_decoder = bool(getattr(base_model.config, "is_encoder_decoder", False))
        self.vocab_size, self.hidden_size = _true_shape(base_model.get_input_embeddings().weight)
        self.prompt = prompt

    @property
    def num_virtual_tokens(self) -> int:
        return self.config.num_virtual_tokens

    def input_offset(self, embeds: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor | None:
        """The offset added to token embeddings (B, L, d) at input positions start..start+L-1, or None.

        `start` may also be a (B, L) LongTensor: the input position of every token (0 = the first input
        token; the soft prompt is not counted). Only DePT's offset depends on it.
        """
        return None

    def embed_inputs(self, input_ids: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """E' = E + offset(E) for input ids (B, L) -> (B, L, d). The prompt is not included.

        `start`: the input position of the first column, or a (B, L) tensor of positions (see `input_offset`).
        """
        embeds = self.base_model.get_input_embeddings()(input_ids)
        offset = self.input_offset(embeds, start)
        return embeds if offset is None else embeds + offset

    def check_input_length(self, length: int) -> None:
        """Raise if inputs of `length` tokens are longer than the adapter handles (DePT: s; others: no limit)."""

    def _prompted_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        _check_shapes(input_ids, attention_mask)
        self.check_input_length(input_ids.shape[1])
        embeds = self.embed_inputs(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch, m = input_ids.shape[0], self.num_virtual_tokens
        if m:
            embeds = torch.cat([self.prompt(batch, embeds.dtype), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(batch, m), attention_mask], dim=1)
        return embeds, attention_mask

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None, *,
                loss_only: bool = False, **kwargs):
        """Same call as the backbone; returns the backbone's output object (loss, logits, ...).

        `loss_only=True` (needs `labels`; what training calls) returns the same loss with `logits=None`.
        For causal backbones whose forward takes a boolean `logits_to_keep` and whose loss is transformers'
        `ForCausalLMLoss` (Llama, SmolLM2, Mistral, Qwen, Gemma, ...), the vocabulary head then runs, forward
        and backward, only at the positions whose shifted label is not -100: the model's own head (and
        final-logit softcapping, where it has one), then the same cross-entropy (mean over the labelled
        tokens, or sum / `num_items_in_batch` when given). Other backbones (seq2seq: every decoder
        position is labelled) take the full path and drop the logits.
        """
        _refuse_inputs_embeds(inputs_embeds)
        if input_ids is None:
            raise ValueError("AdeptModel.forward needs input_ids (the offsets are computed from token ids).")
        embeds, mask = self._prompted_inputs(input_ids, attention_mask)
        if labels is not None and not self.is_encoder_decoder and self.num_virtual_tokens:
            labels = torch.cat([labels.new_full((labels.shape[0], self.num_virtual_tokens), IGNORE_INDEX), labels], 1)
        if not loss_only:
            return self.base_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)
        if labels is None:
            raise ValueError("AdeptModel.forward(loss_only=True) needs labels: the loss is all it returns.")
        if labelled_head_supported(self.base_model) and "shift_labels" not in kwargs:
            return self._labelled_positions_loss(embeds, mask, labels, **kwargs)
        out = self.base_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, **kwargs)
        out.logits = None
        return out

    def _labelled_positions_loss(self, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                                 num_items_in_batch: torch.Tensor | int | None = None, **kwargs):
        """transformers' causal LM loss with the vocabulary head applied only where a label is."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        # ForCausalLMLoss: position t predicts labels[t + 1]; the last position predicts nothing.
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
        keep = shift_labels != IGNORE_INDEX  # (B, m + L) bool: the positions whose logits the loss reads
        kwargs.setdefault("use_cache", False)
        logits = self.base_model(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep, **kwargs).logits
        targets = shift_labels[keep]
        if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise RuntimeError(
                f"{type(self.base_model).__name__} returned logits {tuple(logits.shape)} for a boolean logits_to_keep "
                f"selecting {targets.shape[0]} positions; this backbone cannot take loss_only=True"
            )
        reduction = "mean" if num_items_in_batch is None else "sum"
        loss = F.cross_entropy(logits.float(), targets.to(logits.device), reduction=reduction)
        if num_items_in_batch is not None:
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(loss.device)
            loss = loss / num_items_in_batch
        return CausalLMOutputWithPast(loss=loss, logits=None)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Seq2seq only: the encoder run once on [P ; E'].

        Returns (encoder outputs, attention mask with the m prompt positions); pass them to the backbone
        as `encoder_outputs=` / `attention_mask=` to decode any number of targets without re-encoding.
        """
        if not self.is_encoder_decoder:
            raise ValueError("encode() is for encoder-decoder backbones; this one is causal.")
        embeds, mask = self._prompted_inputs(input_ids, attention_mask)
        return self.base_model.get_encoder()(inputs_embeds=embeds, attention_mask=mask), mask

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Same call and return as the backbone's `generate`.

        Seq2seq returns decoder ids. Causal returns `input_ids` followed by the new tokens, and every
        generated token fed back into the model also gets its offset (the official ADePT code offsets
        only the first step's tokens; with this wrapper training and generation see the same inputs).
        Use left padding for batched causal generation.
        """
        _refuse_inputs_embeds(kwargs.pop("inputs_embeds", None))
        embeds, mask = self._prompted_inputs(input_ids, attention_mask)
        if self.is_encoder_decoder:
            return self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        with self._offset_fed_back_tokens(start=input_ids.shape[1]):
            new_tokens = self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        return torch.cat([input_ids, new_tokens.to(input_ids.device)], dim=1)

    def _offset_fed_back_tokens(self, start: int) -> contextlib.AbstractContextManager:
        """While generating, what makes the backbone's own embedding lookups match `embed_inputs`."""
        return contextlib.nullcontext()

    def export_peft(self, path: str | Path, **kwargs):
        """Write `<path>/base` + `<path>/adapter` for plain transformers + PEFT; see `adept.peft_export.export_peft`."""
        from .peft_export import export_peft

        return export_peft(self, path, **kwargs)


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
        from .io import save_adapter

        save_adapter(self, path)

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, path: str | Path) -> AdeptModel:
        """Load an adapter saved by `save_pretrained` (also adept-ray 0.1), or an official ADePT / PEFT prompt-tuning folder."""
        from .io import load_adapter

        return load_adapter(base_model, path)

    def fold(self) -> FoldedAdeptModel:
        """ADePT only: a `FoldedAdeptModel` whose input embedding table is E + FFN(E) (eval-mode exact)."""
        from .fold import fold_adept

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


def takes_boolean_logits_to_keep(backbone: nn.Module) -> bool:
    """Whether `backbone`'s forward takes `logits_to_keep` as a tensor of per-row positions or a (B, L) mask.

    True for transformers models that slice with `slice_logits_to_keep` (1D/2D integer positions or a
    boolean mask; nearly every causal LM of transformers 5), checked on the module that defines `forward`.
    """
    forward = type(backbone).forward
    try:
        if "logits_to_keep" not in inspect.signature(forward).parameters:
            return False
    except (TypeError, ValueError):
        return False
    module = sys.modules.get(getattr(forward, "__module__", None) or "")
    return getattr(module, "slice_logits_to_keep", None) is not None


def labelled_head_supported(backbone: nn.Module) -> bool:
    """Whether `AdeptModel.forward(loss_only=True)` can run `backbone`'s vocabulary head at labelled positions only.

    Needs a causal transformers model that takes a boolean `logits_to_keep` (`takes_boolean_logits_to_keep`)
    and whose loss is the stock `ForCausalLMLoss` (no custom `loss_function`).
    """
    config = getattr(backbone, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not takes_boolean_logits_to_keep(backbone):
        return False
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING
    except ImportError:
        return False
    causal_lm_loss = LOSS_MAPPING.get("ForCausalLM")
    return (causal_lm_loss is not None and getattr(backbone, "_loss_function", None) is None
            and LOSS_MAPPING.get(getattr(backbone, "loss_type", None) or "") is causal_lm_loss)


def _check_shapes(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """input_ids (B, L) and a mask of exactly that shape: a shorter mask would silently shift every position."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}; "
                         "add the batch dimension (input_ids.unsqueeze(0)).")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids {tuple(input_ids.shape)}: "
                         "they must match (one mask value per token); build both with the same tokenizer call.")


def _refuse_inputs_embeds(inputs_embeds) -> None:
    if inputs_embeds is not None:
        raise ValueError(
            "AdeptModel does not accept inputs_embeds: the ADePT/DePT offsets are computed from token ids, "
            "and passing embeddings would silently skip them (a bug of the official code). Pass input_ids."
        )


def _load_tokenizer(name_or_path: str | None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # noqa: BLE001 - any failure means the same fix
        raise ValueError(
            f"prompt_init='text' needs a tokenizer, and none could be loaded from {name_or_path!r} ({err}). "
            "Pass tokenizer= to get_adept_model, or set AdeptConfig.prompt_init='sample_vocab'."
        ) from err


__all__ = ["PromptedModel", "AdeptModel", "get_adept_model", "labelled_head_supported", "IGNORE_INDEX", "gathered"]
