"""Tiny models and a tiny tokenizer built from configs, so no test touches a model hub.

Every builder is deterministic (seeded) and small enough that a forward pass takes milliseconds.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

SPECIAL = ["<pad>", "</s>", "<unk>"]
WORDS = (
    "classify this text is positive or not negative good bad great awful movie film plot acting "
    "sentence question answer premise hypothesis yes no true false 0 1 2 : . , the a an"
).split()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over a fixed vocabulary: pad=0, eos=1, unk=2."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


VOCAB_SIZE = len(SPECIAL) + len(WORDS)


def tiny_t5(d_model: int = 32, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(cfg).eval()


def tiny_llama(hidden_size: int = 32, vocab_size: int = VOCAB_SIZE, tie: bool = False, seed: int = 0,
               init_std: float = 0.2) -> LlamaForCausalLM:
    """`init_std` 0.2 (HF default 0.02) gives a random model whose output depends on its input, like a trained one."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=tie, initializer_range=init_std,
    )
    return LlamaForCausalLM(cfg).eval()


def batch(tokenizer, texts: list[str], padding_side: str = "right") -> dict[str, torch.Tensor]:
    tokenizer.padding_side = padding_side
    return dict(tokenizer(texts, return_tensors="pt", padding=True))
