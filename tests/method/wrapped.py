"""Wrapped tiny backbones for the adept tests: every backbone kind × every method."""

import torch
from tiny import batch, tiny_llama, tiny_t5

from adept import AdeptConfig, get_adept_model

BACKBONES = {"t5": tiny_t5, "llama": tiny_llama, "llama_tied": lambda: tiny_llama(tie=True)}
METHOD_CONFIGS = {
    "adept": dict(method="adept", num_virtual_tokens=4, ffn_hidden_size=3),
    "dept": dict(method="dept", num_virtual_tokens=4, rank=2, max_length=12),
    "prompt": dict(method="prompt", num_virtual_tokens=4),
}


def make_model(backbone: str, method: str, tok, randomize_offsets: bool = True, **overrides):
    """A wrapped tiny backbone; offsets get non-zero weights so tests can see them."""
    model = get_adept_model(BACKBONES[backbone](), AdeptConfig(**{**METHOD_CONFIGS[method], **overrides}), tok)
    if randomize_offsets:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.adapter_named_parameters():
                if not name.startswith("prompt."):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def inputs(tok, backbone: str, texts=("good movie", "bad film plot acting")):
    """Batch of two; causal batches are left-padded (generation), seq2seq right-padded."""
    b = batch(tok, list(texts), "right" if backbone == "t5" else "left")
    if backbone == "t5":
        b["decoder_input_ids"] = torch.tensor([[0, 5, 6], [0, 7, 8]])
    return b
