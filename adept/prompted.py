"""`PromptedModel`: a frozen Hugging Face backbone plus a soft prompt and (ADePT/DePT) input offsets.

The whole method is `_prompted_inputs` (the subclass gives the offset: `AdeptModel` computes it,
`FoldedAdeptModel` has it in its input table): for input ids X (B, L)

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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdeptConfig
from .layers import SoftPrompt, _true_shape
from .peft_export import export_peft

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
        return export_peft(self, path, **kwargs)


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
