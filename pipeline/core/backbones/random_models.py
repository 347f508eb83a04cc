"""The ``random:*`` aliases: backbones of real shapes with seeded random weights, for scale tests and benchmarks.

A random alias's cache folder holds ``config.json``, an offline byte-level tokenizer and the marker (with
``random_init``), no weights: nothing is downloaded. `load_backbone` builds the model from the config with
`build_random_model` (the same weights on every load; partitioned while it is built under ZeRO-3).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.backbones.cache import MARKER, BackboneError, read_marker


@dataclass(frozen=True)
class RandomAlias:
    """A random-init backbone: a transformers config (``AutoConfig.for_model(model_type, **config)``), the
    offline byte-level tokenizer, and the seed of its weights. ``parameters`` is the exact count."""

    model_type: str  # "llama" or "t5"
    config: dict
    parameters: int
    about: str
    seed: int = 0


# Special tokens of the random aliases' tokenizer, at ids 0-3 (T5's pad/eos/unk ids); the 256 bytes follow.
SPECIALS = ("<pad>", "</s>", "<unk>", "<s>")
_IDS = {"pad_token_id": 0, "eos_token_id": 1}
_LLAMA = {**_IDS, "bos_token_id": 3, "tie_word_embeddings": False, "max_position_embeddings": 2048,
          "architectures": ["LlamaForCausalLM"]}
_T5 = {**_IDS, "decoder_start_token_id": 0, "vocab_size": 32128, "d_kv": 64, "feed_forward_proj": "relu",
       "tie_word_embeddings": True, "architectures": ["T5ForConditionalGeneration"]}
RANDOM_PREFIX = "random:"
RANDOM_ALIASES = {
    "random:llama-tiny": RandomAlias(
        "llama", {**_LLAMA, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 172,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4},
        164_672, "LLaMA, d=64, 2 layers, ffn 172, 4 heads, vocab 512, untied (fast, for tests)"),
    "random:llama-1b": RandomAlias(
        "llama", {**_LLAMA, "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5504,
                  "num_hidden_layers": 18, "num_attention_heads": 32, "num_key_value_heads": 32},
        1_041_836_032, "LLaMA, d=2048, 18 layers, ffn 5504, 32 heads, vocab 32000, untied"),
    "random:t5-base": RandomAlias(
        "t5", {**_T5, "d_model": 768, "d_ff": 3072, "num_layers": 12, "num_heads": 12},
        222_903_552, "T5-base shape: d=768, 12+12 layers, ffn 3072, 12 heads, vocab 32128, tied"),
    "random:t5-large": RandomAlias(
        "t5", {**_T5, "d_model": 1024, "d_ff": 4096, "num_layers": 24, "num_heads": 16},
        737_668_096, "T5-large shape: d=1024, 24+24 layers, ffn 4096, 16 heads, vocab 32128, tied"),
}


_TOKENIZER_VERSION = 1  # part of a random folder's spec: bump when the tokenizer below changes
# How `build_random_model` turns (config, seed) into weights: part of a random backbone's serving fingerprint
# (`pipeline.core.backbone_info.fingerprint`), so an adapter trained on weights drawn one way is refused on
# weights drawn another way. Bump it whenever the draws change (RNG seeding, init order, the init function called).
# /1: the torch default generator seeded with the seed, from_config without torch's init, then init_weights.
INIT_SCHEME = "build_random_model/1"


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of byte-level BPE (fixed order: by byte)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_tokenizer(model_type: str, model_max_length: int):
    """The random aliases' tokenizer, built offline and deterministically: byte-level BPE without merges.

    ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``<s>`` 3, then the 256 bytes (4-259); every text round-trips.
    Special tokens as the real families place them: LLaMA prepends ``<s>``, T5 appends ``</s>``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for char in _byte_to_unicode().values():
        vocab[char] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    if model_type == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="<s>", model_max_length=model_max_length)


def random_config(alias: RandomAlias):
    """The transformers config of a random alias (what its cached ``config.json`` holds)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(alias.model_type, **alias.config)


def random_spec(alias: RandomAlias) -> str:
    blob = json.dumps({"model_type": alias.model_type, "config": alias.config, "seed": alias.seed,
                       "tokenizer": _TOKENIZER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def random_builder(alias_name: str, alias: RandomAlias):
    """Write config.json + the tokenizer (no weights) into the staging folder."""

    def build(stage: Path) -> tuple[dict, str]:
        config = random_config(alias)
        config.save_pretrained(stage)
        max_len = alias.config.get("max_position_embeddings", 512)
        byte_level_tokenizer(alias.model_type, max_len).save_pretrained(stage)
        meta = {"alias": alias_name, "source": "random init from config.json (no weights)",
                "model_type": alias.model_type, "parameters": alias.parameters,
                "random_init": {"seed": alias.seed}}
        return meta, f"config + tokenizer, no weights: random init with seed {alias.seed} at load"

    return build


def random_init(path: str | Path) -> dict | None:
    """``{"seed": int}`` when ``path`` is a random alias's folder (recognised by its marker), else None."""
    folder = Path(path)
    if not (folder / MARKER).is_file():
        return None
    spec = read_marker(folder).get("random_init")
    if spec is None:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("seed"), int):
        raise BackboneError(f"{folder / MARKER} has a malformed random_init entry {spec!r}; fix: delete "
                            f"{folder} and resolve the alias again")
    return spec


def build_random_model(cls, config, dtype, seed: int):
    """``cls.from_config(config, dtype=dtype)`` with weights drawn from ``seed``: the same on every call.

    The RNG is forked (the caller's random state is untouched). Without ZeRO-3 the model is built without
    torch's default init (which transformers' init would overwrite: it doubles the time), then
    ``init_weights`` runs transformers' ``_init_weights`` (e.g. LLaMA: normal(0, 0.02) for linears and
    embeddings, ones for norms; T5: its scaled normals) and ties the tied weights. random:llama-1b on 2 busy
    CPU cores: 23 s in bf16, 31 s in fp32 (transformers' own from_config: ~46 s in bf16).

    ZeRO-3: when a ``transformers.integrations.HfDeepSpeedConfig`` with stage 3 is alive (it is held by a
    weak reference: keep the object), ``is_deepspeed_zero3_enabled()`` is true and ``from_config`` ->
    ``PreTrainedModel._from_config`` builds under ``deepspeed.zero.Init`` (each parameter is partitioned as
    its module is created, so no rank ever holds the full model), then ``initialize_weights_zero3`` gathers
    module by module and runs the same ``_init_weights`` in the same order on rank 0, which broadcasts. So
    the weights equal the non-ZeRO build when the draws run on the same device type (CPU: checked by the
    tests; on GPUs zero.Init holds the parameters there, so the CUDA generator draws them: the same on every
    run, other numbers than a CPU build). Under zero.Init the parameters take DeepSpeed's dtype (bf16 / fp16
    when enabled in the DeepSpeed config, else fp32), not ``dtype``: keep the two consistent.
    """
    import torch
    from transformers import initialization
    from transformers.integrations import is_deepspeed_zero3_enabled

    zero3 = is_deepspeed_zero3_enabled()
    if zero3 and torch.cuda.is_available():
        torch.cuda.init()  # zero.Init puts the partitions on the GPU: its RNG must be seeded (and restored)
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for device in cuda:
            torch.cuda.default_generators[device].manual_seed(seed)
        if zero3:
            model = cls.from_config(config, dtype=dtype)
        else:
            with initialization.no_init_weights():
                model = cls.from_config(config, dtype=dtype)
            model.init_weights()
    return model.eval()  # as from_pretrained returns it
