"""Export an adapter for plain `transformers` + `peft` users: `<path>/base/` + `<path>/adapter/`.

    model.export_peft("export")                       # an AdeptModel (or a FoldedAdeptModel)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM     # AutoModelForSeq2SeqLM for T5
    base = AutoModelForCausalLM.from_pretrained("export/base")
    peft_model = PeftModel.from_pretrained(base, "export/adapter")   # same logits as `model`

What is written, per method:

* ADePT: ADePT = prompt tuning on a backbone whose input table is E' = E + FFN(E) (see `adept.fold`).
  `base/` is that folded backbone, a normal Hugging Face folder: causal models get E' as the input
  table and keep E in the (untied) LM head; T5 gets E' in `shared` and the encoder's table, E in the
  decoder's table and the LM head. `adapter/` is a PEFT `PROMPT_TUNING` adapter holding the soft prompt.
* Prompt tuning: `adapter/` only, pointing at the backbone the adapter records; `save_base=True` also
  writes the (unchanged) backbone to `base/` and points the adapter at it.
* DePT cannot be exported: its offset depends on the input *position*, and no PEFT method adds a learned
  per-position vector to the input embeddings (so `ValueError`).

The adapter is what PEFT itself writes for prompt tuning (`peft_type: PROMPT_TUNING`, weights key
`prompt_embeddings`), with `num_transformer_submodules: 1`: PEFT's default for seq2seq models is 2 (2·m
rows), but PEFT prepends only the first m rows, to the encoder input, which is also all ADePT does.
`base_model_name_or_path` is the absolute path of `base/` (so `AutoPeftModelFor*.from_pretrained(adapter)`
works where the export was written; after moving the folder, load `base/` yourself as above).

T5 note: T5 configs always declare `shared`, the encoder and decoder tables and the LM head tied. transformers
5 keeps checkpoint tensors that differ apart (it logs "...both are present in the checkpoints with different
values, so we will NOT tie them" for the decoder table and the LM head), which is what the folded T5 needs.
Do not call `tie_weights()` or `resize_token_embeddings()` on the loaded T5 base: that would re-tie them.

Nothing here imports `peft`: the files are written directly (tested against the PEFT versions named in
the tests). Nor does it import the model classes (`adept.prompted` imports this module for
`PromptedModel.export_peft`): a model is anything with their attributes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from ._version import __version__
from .io import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME
from .layers import gathered

BASE_DIR = "base"
ADAPTER_DIR = "adapter"
EXPORT_INFO_NAME = "adept_export.json"
EXPORT_FORMAT = "adept-ray-peft-export"


@dataclass(frozen=True)
class PeftExport:
    """Where `export_peft` wrote things. `base` is None when no backbone was written (prompt tuning)."""

    path: Path
    adapter: Path
    base: Path | None
    base_model_name_or_path: str | None


def export_peft(model: nn.Module, path: str | Path, *, save_base: bool | None = None,
                tokenizer=None) -> PeftExport:
    """Write `<path>/adapter` (a PEFT prompt-tuning adapter) and, where needed, `<path>/base` (the backbone).

    Args:
        model: an `AdeptModel` (method "adept" or "prompt") or a `FoldedAdeptModel`.
        path: the export folder; created if missing, files in it are overwritten.
        save_base: write the backbone to `<path>/base`. Default: yes for ADePT (required: the folded
            table *is* the adapter's offset), no for prompt tuning (the backbone is unchanged).
        tokenizer: saved into `<path>/base` (or `<path>/adapter` when no base is written), so the export
            is self-contained.
    """
    method = model.config.method
    if method == "dept":
        raise ValueError(
            "DePT cannot be exported as a PEFT adapter: its offset (A·B)[i] is added to the embedding of input "
            "position i, whatever the token, so it can be folded neither into the embedding table (that is "
            "indexed by token id) nor into the prompt, and no PEFT method adds a learned per-position vector to "
            "the input embeddings. Serve it with AdeptModel (or the MLflow pyfunc model) instead."
        )
    if method not in ("adept", "prompt"):
        raise ValueError(f"export_peft: unknown method {method!r}.")
    if any(hasattr(p, "ds_id") for p in model.base_model.parameters()):
        raise ValueError("export_peft needs an unsharded backbone, but DeepSpeed ZeRO-3 has partitioned this one: "
                         "save the adapter, load it onto a plain backbone with AdeptModel.from_pretrained, then export.")
    if method == "adept":
        if save_base is False:
            raise ValueError("export_peft: an ADePT export needs its base (save_base=True): the FFN offset lives in "
                             "the folded input embedding table, the PEFT adapter only holds the soft prompt.")
        save_base = True
        model = model.fold()  # a FoldedAdeptModel returns itself
    else:
        save_base = bool(save_base)
    if model.num_virtual_tokens == 0:
        raise ValueError(
            "export_peft: this adapter has no soft prompt (num_virtual_tokens=0), and PEFT prompt tuning needs at "
            "least one virtual token. An ADePT model without a prompt is just its folded backbone: "
            "model.fold().base_model.save_pretrained(dir) gives a plain Hugging Face model."
        )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    base_dir = path / BASE_DIR if save_base else None
    if base_dir is not None:
        model.base_model.save_pretrained(base_dir)
        base_ref, revision = str(base_dir.resolve()), None
    else:
        base_ref, revision = model.config.base_model_name_or_path, model.config.revision
    adapter_dir = path / ADAPTER_DIR
    adapter_dir.mkdir(parents=True, exist_ok=True)
    with gathered(model.prompt.parameters(), modifier_rank=None):
        prompt = model.prompt.weight.detach().cpu().clone().contiguous()
    save_file({"prompt_embeddings": prompt}, str(adapter_dir / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    peft_config = _peft_prompt_tuning_config(model, base_ref, revision)
    (adapter_dir / PEFT_CONFIG_NAME).write_text(json.dumps(peft_config, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(base_dir if base_dir is not None else adapter_dir)

    info = {
        "format": EXPORT_FORMAT,
        "library_version": __version__,
        "method": method,
        "base": BASE_DIR if base_dir is not None else None,
        "adapter": ADAPTER_DIR,
        "base_model_name_or_path": base_ref,
        "original_backbone": {"name_or_path": model.config.base_model_name_or_path,
                              "revision": model.config.revision},
        "folded": method == "adept",
        "adept_config": model.config.to_dict(),
    }
    (path / EXPORT_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return PeftExport(path, adapter_dir, base_dir, base_ref)


def _peft_prompt_tuning_config(model: nn.Module, base_ref: str | None, revision: str | None) -> dict[str, Any]:
    """The fields of PEFT's `PromptTuningConfig` that describe the adapter (PEFT fills the rest with defaults)."""
    cfg = model.base_model.config
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM" if model.is_encoder_decoder else "CAUSAL_LM",
        "base_model_name_or_path": base_ref,
        "revision": revision,
        "inference_mode": True,
        "num_virtual_tokens": model.num_virtual_tokens,
        "token_dim": model.hidden_size,
        # 1: the prompt goes before the encoder input only (PEFT's seq2seq default 2 stores decoder rows it never uses).
        "num_transformer_submodules": 1,
        "num_attention_heads": _first_attr(text_cfg, "num_attention_heads", "num_heads", "n_head"),
        "num_layers": _first_attr(text_cfg, "num_hidden_layers", "num_layers", "n_layer"),
        "prompt_tuning_init": "RANDOM",  # how PEFT would initialise a *new* prompt; the saved one is loaded over it
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
    }


def _first_attr(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None



__all__ = ["export_peft", "PeftExport", "BASE_DIR", "ADAPTER_DIR", "EXPORT_INFO_NAME"]
