"""ADePT (Adaptive Decomposed Prompt Tuning, ICLR 2025) with DePT and prompt-tuning baselines.

    from adept import AdeptConfig, get_adept_model
    model = get_adept_model(base_model, AdeptConfig(method="adept", num_virtual_tokens=60, ffn_hidden_size=19), tok)
"""

from .config import METHODS, AdeptConfig, budget_rank, count_trainable_params
from .fold import FoldedAdeptModel
from .model import AdeptModel, get_adept_model

__version__ = "0.1.0"

__all__ = [
    "AdeptConfig", "AdeptModel", "FoldedAdeptModel", "get_adept_model", "budget_rank", "count_trainable_params", "METHODS",
    "__version__",
]
