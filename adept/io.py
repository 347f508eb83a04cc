"""Adapter files: `adept_config.json` + `adept_model.safetensors`, and import of older and official folders.

Three layouts are read (`find_adapter_files` tells which one a folder holds):

* `"adept"`: what `save_pretrained` writes today. The names are our own, so neither `transformers` (which
  treats any folder with `adapter_config.json` as a PEFT adapter once `peft` is installed) nor PEFT mistakes
  the folder for one of theirs: `AutoModelForCausalLM.from_pretrained(adapter_dir)` fails as for any folder
  without a model in it.
* `"adept-legacy"`: adept-ray 0.1 folders, `adapter_config.json` (`format: "adept-ray"`) +
  `adapter_model.safetensors`, with the same tensors.
* `"peft"`: official ADePT (`peft_type: PROMPT_TUNING_LORAX`) and PEFT prompt-tuning (`PROMPT_TUNING`)
  folders, `adapter_model.safetensors` or `adapter_model.bin`.

Nothing here unpickles arbitrary objects: our own files are safetensors + JSON, and an official
`adapter_model.bin` is read only through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._version import __version__
from .config import AdeptConfig
from .layers import _true_shape, gathered

# What `save_pretrained` writes: names no other library claims.
CONFIG_NAME = "adept_config.json"
WEIGHTS_NAME = "adept_model.safetensors"
# PEFT's names: official ADePT / PEFT prompt-tuning folders, adept-ray 0.1 adapters, and `export_peft`'s adapter.
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_BIN_NAME = "adapter_model.bin"
FORMAT = "adept-ray"
FORMAT_VERSION = 2  # 1: adept-ray 0.1 (PEFT's file names, peft_type "ADEPT"); 2: adept_config.json + adept_model.safetensors
OFFICIAL_PEFT_TYPES = ("PROMPT_TUNING_LORAX", "PROMPT_TUNING")
# Official ADePT (peft_type PROMPT_TUNING_LORAX) key -> our key. Shapes are identical (A is d×r in both).
OFFICIAL_KEYS = {
    "prompt_embeddings": "prompt.weight",
    "prompt_encoder.lora_embedding_A": "ffn.w1",
    "prompt_encoder.lora_embedding_a": "ffn.b1",
    "prompt_encoder.lora_embedding_B": "ffn.w2",
    "prompt_encoder.lora_embedding_b": "ffn.b2",
}


@dataclass(frozen=True)
class AdapterFiles:
    """The files of one adapter folder, as `find_adapter_files` found them.

    layout: `"adept"` (adept_config.json + adept_model.safetensors), `"adept-legacy"` (adept-ray 0.1:
    adapter_config.json with format "adept-ray" + adapter_model.safetensors) or `"peft"` (official ADePT
    PROMPT_TUNING_LORAX or PEFT PROMPT_TUNING: adapter_config.json + adapter_model.safetensors / .bin).
    weights: the file the tensors are read from; it may be missing (loading then says so).
    """

    layout: str
    config: Path
    weights: Path
    meta: dict[str, Any]

    def adept_config(self) -> AdeptConfig:
        """The AdeptConfig the folder describes (validated; the reason names the file)."""
        if self.layout == "peft":
            return _official_config(self)
        try:
            return AdeptConfig.from_dict(self.meta["adept_config"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{str(self.config)!r}: adept_config is invalid ({err}).") from err

    @property
    def backbone(self) -> str | None:
        """The backbone name or folder recorded in the adapter (None when none was recorded)."""
        if self.layout == "peft":
            return self.meta.get("base_model_name_or_path")
        return (self.meta.get("backbone") or {}).get("name_or_path")


def find_adapter_files(path: str | Path) -> AdapterFiles:
    """Which adapter layout the folder `path` holds; raises FileNotFoundError / ValueError when it holds none."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"adapter folder {str(path)!r} does not exist.")
    if (path / CONFIG_NAME).is_file():
        meta = _read_json(path / CONFIG_NAME)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{str(path / CONFIG_NAME)!r} is not an adept-ray adapter config "
                             f"(format={meta.get('format')!r}, expected {FORMAT!r}).")
        _check_keys(path / CONFIG_NAME, meta)
        return AdapterFiles("adept", path / CONFIG_NAME, path / WEIGHTS_NAME, meta)
    if (path / PEFT_CONFIG_NAME).is_file():
        config_file = path / PEFT_CONFIG_NAME
        meta = _read_json(config_file)
        if meta.get("peft_type") in OFFICIAL_PEFT_TYPES:
            weights = path / PEFT_WEIGHTS_NAME
            if not weights.is_file() and (path / PEFT_BIN_NAME).is_file():
                weights = path / PEFT_BIN_NAME
            return AdapterFiles("peft", config_file, weights, meta)
        if meta.get("format") == FORMAT:
            _check_keys(config_file, meta)
            return AdapterFiles("adept-legacy", config_file, path / PEFT_WEIGHTS_NAME, meta)
        raise ValueError(
            f"{str(config_file)!r} is neither an adept-ray adapter (format={FORMAT!r}) nor an official ADePT / PEFT "
            f"prompt-tuning one (peft_type {' or '.join(OFFICIAL_PEFT_TYPES)}); got peft_type={meta.get('peft_type')!r}."
        )
    raise FileNotFoundError(
        f"{str(path)!r} holds neither {CONFIG_NAME!r} (an adept-ray adapter) nor {PEFT_CONFIG_NAME!r} (an adept-ray 0.1, "
        "official ADePT or PEFT prompt-tuning adapter): not an adapter folder written by save_pretrained."
    )


def _check_keys(config_file: Path, meta: dict[str, Any]) -> None:
    missing = [k for k in ("adept_config", "backbone") if not isinstance(meta.get(k), dict)]
    if missing:
        raise ValueError(f"{str(config_file)!r} lacks the object(s) {missing}: an incomplete adept-ray adapter config "
                         "(write it with save_pretrained).")


def read_adapter_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The adapter tensors of a folder in any layout, under our names (`prompt.weight`, `ffn.w1`, ...)."""
    files = find_adapter_files(path)
    if files.layout == "peft":
        return _read_official(files)[1]
    return _read_safetensors(files.weights)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, gathered if ZeRO-3 partitioned them, detached on CPU."""
    named = model.adapter_named_parameters()
    with gathered([p for _, p in named], modifier_rank=None):
        return {name: p.detach().cpu().clone().contiguous() for name, p in named}


def save_adapter(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write `adept_config.json` + `adept_model.safetensors`; `state` (from `adapter_state_dict`) replaces the model's
    live tensors.

    Passing `state` lets one rank write while the others do not participate: under ZeRO-3 gathering
    the live tensors is a collective call that every rank must make. adept-ray 0.1 files of an adapter
    saved earlier into the same folder are removed (they would be read by nothing, but PEFT and
    transformers would still take the folder for a PEFT adapter).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = adapter_state_dict(model) if state is None else state
    base_cfg = model.base_model.config
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "adept_config": model.config.to_dict(),
        "backbone": {
            "name_or_path": model.config.base_model_name_or_path,
            "revision": model.config.revision,
            "model_type": getattr(base_cfg, "model_type", None),
            "hidden_size": model.hidden_size,
            "vocab_size": model.vocab_size,
            "is_encoder_decoder": model.is_encoder_decoder,
        },
        "dtype": str(next(iter(state.values())).dtype).removeprefix("torch.") if state else None,
        "num_trainable_params": sum(t.numel() for t in state.values()),
    }
    # Write both files beside their final names, then rename: a crash never leaves a half adapter.
    _atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    _atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    legacy = path / PEFT_CONFIG_NAME
    if legacy.is_file() and _is_legacy_config(legacy):
        legacy.unlink()
        (path / PEFT_WEIGHTS_NAME).unlink(missing_ok=True)


def read_adapter(base_model: nn.Module, path: str | Path) -> tuple[AdeptConfig, dict[str, torch.Tensor], Path]:
    """The config and tensors of an adapter folder in any layout, checked against `base_model`, and the folder.

    What `AdeptModel.from_pretrained` builds its model from (the model class lives in `adept.model`, which
    imports this module: this one never imports it back).
    """
    files = find_adapter_files(path)
    if files.layout == "peft":
        config, state = _read_official(files)
    else:
        config = files.adept_config()
        _check_backbone(files.meta["backbone"], base_model, files.config)
        state = _read_safetensors(files.weights)
    return config, state, files.config.parent


def _read_json(file: Path) -> dict[str, Any]:
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(file)!r} is not valid JSON ({err}); the adapter folder is corrupt.") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{str(file)!r} holds {type(meta).__name__}, not a JSON object; the adapter folder is corrupt.")
    return meta


def _is_legacy_config(file: Path) -> bool:
    try:
        return json.loads(file.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_backbone(saved: dict, base_model: nn.Module, config_file: Path) -> None:
    vocab, hidden = _true_shape(base_model.get_input_embeddings().weight)
    actual = {
        "hidden_size": hidden,
        "vocab_size": vocab,
        "model_type": getattr(base_model.config, "model_type", None),
        "is_encoder_decoder": bool(getattr(base_model.config, "is_encoder_decoder", False)),
    }
    for key, value in actual.items():
        if saved.get(key) != value:
            raise ValueError(
                f"adapter {str(config_file.parent)!r} was trained for a backbone with {key}={saved.get(key)!r} "
                f"({saved.get('name_or_path')!r}), but the given backbone has {key}={value!r}. "
                "Load it onto the backbone it was trained on."
            )


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r} is missing: the adapter weights were not saved or were deleted.")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{str(file)!r} is not a readable safetensors file ({err}); the adapter is corrupt.") from err


def _official_config(files: AdapterFiles) -> AdeptConfig:
    """The AdeptConfig of an official ADePT / PEFT prompt-tuning config (its integer sizes checked)."""
    meta = files.meta
    is_adept = meta["peft_type"] == "PROMPT_TUNING_LORAX"
    needed = ["num_virtual_tokens"] + (["r"] if is_adept else [])
    bad = [k for k in needed if not isinstance(meta.get(k), int) or isinstance(meta.get(k), bool)]
    if bad:
        raise ValueError(f"{str(files.config)!r}: this {meta['peft_type']} config lacks the integer field(s) {bad}; "
                         "the adapter folder is incomplete.")
    return AdeptConfig(
        method="adept" if is_adept else "prompt",
        num_virtual_tokens=meta["num_virtual_tokens"],
        ffn_hidden_size=meta["r"] if is_adept else None,
        prompt_init="random",
        base_model_name_or_path=meta.get("base_model_name_or_path"),
        revision=meta.get("revision"),
    )


def _read_official(files: AdapterFiles) -> tuple[AdeptConfig, dict[str, torch.Tensor]]:
    """An official ADePT (PROMPT_TUNING_LORAX) or PEFT prompt-tuning (PROMPT_TUNING) folder."""
    path, meta = files.config.parent, files.meta
    if files.weights.name == PEFT_BIN_NAME:
        try:
            raw = torch.load(files.weights, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several types for a bad/unsafe pickle
            raise ValueError(
                f"{str(files.weights)!r} could not be read as plain tensors ({err}); "
                "only weights_only=True loading is allowed."
            ) from err
    elif files.weights.is_file():
        raw = _read_safetensors(files.weights)
    else:
        raise FileNotFoundError(f"{str(path)!r} holds neither {PEFT_WEIGHTS_NAME!r} nor {PEFT_BIN_NAME!r}.")
    config = _official_config(files)
    is_adept, m = config.method == "adept", config.num_virtual_tokens
    wanted = OFFICIAL_KEYS if is_adept else {"prompt_embeddings": "prompt.weight"}
    # PEFT may prefix keys with "base_model.model." on some versions: match on the suffix.
    state = {}
    for official, ours in wanted.items():
        hits = [k for k in raw if k == official or k.endswith("." + official)]
        if hits:
            state[ours] = raw[hits[0]]
    prompt = state.get("prompt.weight")
    token_dim = meta.get("token_dim")
    if token_dim is not None and prompt is not None and prompt.shape[1] != token_dim:
        raise ValueError(f"official adapter: prompt_embeddings has width {prompt.shape[1]}, "
                         f"but {files.config.name} says token_dim={token_dim}.")
    # PEFT's seq2seq prompt tuning defaults to num_transformer_submodules=2 and then stores 2·m rows, but it
    # prepends only the first m to the encoder input (the decoder is never prefixed), which is what we do.
    submodules = meta.get("num_transformer_submodules") or (2 if meta.get("task_type") == "SEQ_2_SEQ_LM" else 1)
    if not is_adept and prompt is not None and submodules > 1 and prompt.shape[0] == m * submodules:
        state["prompt.weight"] = prompt[:m].clone()
    return config, state


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy adapter tensors (as returned by `adapter_state_dict`) into an existing model, in place."""
    _copy_into(model, state, source)


def _copy_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    params = dict(model.adapter_named_parameters())
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"adapter {str(path)!r} does not match its config: missing tensors {missing}, "
                         f"unexpected tensors {unexpected}.")
    with gathered(params.values()), torch.no_grad():
        for name, param in params.items():
            if tuple(state[name].shape) != tuple(param.shape):
                raise ValueError(f"adapter {str(path)!r}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(param.shape)} for this config and backbone.")
            param.copy_(state[name].to(param.dtype))


def _atomic_write(final: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
