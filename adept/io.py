"""Adapter files: `adapter_config.json` + `adapter_model.safetensors`, and import of official ADePT folders.

Nothing here unpickles arbitrary objects: our own files are safetensors + JSON, and an official
`adapter_model.bin` is read only through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import AdeptConfig
from .layers import _true_shape, gathered
from .model import AdeptModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
OFFICIAL_BIN_NAME = "adapter_model.bin"
FORMAT = "adept-ray"
# Official ADePT (peft_type PROMPT_TUNING_LORAX) key -> our key. Shapes are identical (A is d×r in both).
OFFICIAL_KEYS = {
    "prompt_embeddings": "prompt.weight",
    "prompt_encoder.lora_embedding_A": "ffn.w1",
    "prompt_encoder.lora_embedding_a": "ffn.b1",
    "prompt_encoder.lora_embedding_B": "ffn.w2",
    "prompt_encoder.lora_embedding_b": "ffn.b2",
}


def adapter_state_dict(model: AdeptModel) -> dict[str, torch.Tensor]:
    """Adapter tensors only, gathered if ZeRO-3 partitioned them, detached on CPU."""
    named = model.adapter_named_parameters()
    with gathered([p for _, p in named], modifier_rank=None):
        return {name: p.detach().cpu().clone().contiguous() for name, p in named}


def save_adapter(model: AdeptModel, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the adapter files; `state` (from `adapter_state_dict`) replaces the model's live tensors.

    Passing `state` lets one rank write while the others do not participate: under ZeRO-3 gathering
    the live tensors is a collective call that every rank must make.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = adapter_state_dict(model) if state is None else state
    base_cfg = model.base_model.config
    meta = {
        "format": FORMAT,
        "library_version": _version(),
        "peft_type": "ADEPT",
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


def load_adapter(base_model: nn.Module, path: str | Path) -> AdeptModel:
    path = Path(path)
    config_file = path / CONFIG_NAME
    if not path.is_dir():
        raise FileNotFoundError(f"adapter folder {str(path)!r} does not exist.")
    if not config_file.is_file():
        raise FileNotFoundError(f"{str(config_file)!r} is missing: not an adapter folder written by save_pretrained.")
    try:
        meta = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(config_file)!r} is not valid JSON ({err}); the adapter folder is corrupt.") from err
    if meta.get("peft_type") == "PROMPT_TUNING_LORAX" or meta.get("peft_type") == "PROMPT_TUNING":
        config, state = _read_official(path, meta)
    elif meta.get("format") == FORMAT:
        config = AdeptConfig.from_dict(meta["adept_config"])
        _check_backbone(meta["backbone"], base_model, config_file)
        state = _read_safetensors(path / WEIGHTS_NAME)
    else:
        raise ValueError(
            f"{str(config_file)!r} is neither an adept-ray adapter (format={FORMAT!r}) nor an official ADePT one "
            f"(peft_type PROMPT_TUNING_LORAX); got peft_type={meta.get('peft_type')!r}."
        )
    model = AdeptModel(base_model, config, init_prompt=False)
    _copy_into(model, state, path)
    return model


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


def _read_official(path: Path, meta: dict) -> tuple[AdeptConfig, dict[str, torch.Tensor]]:
    """An official ADePT (PROMPT_TUNING_LORAX) or prompt-tuning (PROMPT_TUNING) folder."""
    if (path / WEIGHTS_NAME).is_file():
        raw = _read_safetensors(path / WEIGHTS_NAME)
    elif (path / OFFICIAL_BIN_NAME).is_file():
        try:
            raw = torch.load(path / OFFICIAL_BIN_NAME, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several types for a bad/unsafe pickle
            raise ValueError(
                f"{str(path / OFFICIAL_BIN_NAME)!r} could not be read as plain tensors ({err}); "
                "only weights_only=True loading is allowed."
            ) from err
    else:
        raise FileNotFoundError(f"{str(path)!r} holds neither {WEIGHTS_NAME!r} nor {OFFICIAL_BIN_NAME!r}.")
    is_adept = meta["peft_type"] == "PROMPT_TUNING_LORAX"
    config = AdeptConfig(
        method="adept" if is_adept else "prompt",
        num_virtual_tokens=int(meta["num_virtual_tokens"]),
        ffn_hidden_size=int(meta["r"]) if is_adept else None,
        prompt_init="random",
        base_model_name_or_path=meta.get("base_model_name_or_path"),
        revision=meta.get("revision"),
    )
    wanted = OFFICIAL_KEYS if is_adept else {"prompt_embeddings": "prompt.weight"}
    # PEFT may prefix keys with "base_model.model." on some versions: match on the suffix.
    state = {}
    for official, ours in wanted.items():
        hits = [k for k in raw if k == official or k.endswith("." + official)]
        if hits:
            state[ours] = raw[hits[0]]
    token_dim = meta.get("token_dim")
    if token_dim is not None and "prompt.weight" in state and state["prompt.weight"].shape[1] != token_dim:
        raise ValueError(f"official adapter: prompt_embeddings has width {state['prompt.weight'].shape[1]}, "
                         f"but adapter_config.json says token_dim={token_dim}.")
    return config, state


def load_adapter_state_dict(model: AdeptModel, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy adapter tensors (as returned by `adapter_state_dict`) into an existing model, in place."""
    _copy_into(model, state, source)


def _copy_into(model: AdeptModel, state: dict[str, torch.Tensor], path: Path | str) -> None:
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


def _version() -> str:
    from . import __version__

    return __version__
