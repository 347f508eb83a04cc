"""ADePT (Adaptive Decomposed Prompt Tuning, ICLR 2025) with DePT and prompt-tuning baselines.

    from adept import AdeptConfig, get_adept_model
    model = get_adept_model(base_model, AdeptConfig(method="adept", num_virtual_tokens=60, ffn_hidden_size=19), tok)

Only the configuration is imported eagerly: `import adept` / `import adept.config` do not import torch
(a job's `--help` stays fast). The model classes are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__
from .config import METHODS, AdeptConfig, budget_rank, count_trainable_params

if TYPE_CHECKING:
    from .fold import FoldedAdeptModel
    from .model import AdeptModel, get_adept_model
    from .packed import PackedAdeptModel, PackedOutput, concat_member_batches
    from .prompted import PromptedModel

# name -> submodule that defines it; imported (with torch) on first access.
_LAZY = {
    "AdeptModel": "model",
    "PromptedModel": "prompted",
    "get_adept_model": "model",
    "FoldedAdeptModel": "fold",
    "PackedAdeptModel": "packed",
    "PackedOutput": "packed",
    "concat_member_batches": "packed",
}

__all__ = [
    "AdeptConfig", "AdeptModel", "FoldedAdeptModel", "PromptedModel", "get_adept_model", "budget_rank",
    "count_trainable_params", "METHODS", "__version__", "PackedAdeptModel", "PackedOutput", "concat_member_batches",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
