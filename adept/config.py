"""`AdeptConfig`: what a soft-prompt adapter is (method, sizes, init) plus the parameter-budget helper.

Notation used across `adept/`: d = backbone hidden size, m = prompt length (`num_virtual_tokens`),
r = ADePT FFN hidden size (`ffn_hidden_size`) or DePT rank (`rank`), s = DePT max input length
(`max_length`), M = prompt-tuning budget in tokens (the budget is M·d trainable parameters).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

METHODS = ("adept", "dept", "prompt")
PROMPT_INITS = ("text", "sample_vocab", "random")
# The official ADePT default init text, with its typo fixed ("postive").
DEFAULT_INIT_TEXT = "Classify this text is positive or not:"


@dataclass
class AdeptConfig:
    """Configuration of one soft-prompt adapter.

    Args:
        method: `"adept"` (prompt + token-shared FFN offset), `"dept"` (prompt + position-based
            low-rank offset) or `"prompt"` (vanilla prompt tuning).
        num_virtual_tokens: m, the soft-prompt length. ADePT and DePT allow 0 (offset only).
        ffn_hidden_size: r of ADePT's FFN `E + ReLU(E·W1 + b1)·W2 + b2`.
        ffn_dropout: dropout on the FFN hidden activations, training only (official: 0.1).
        rank: r of DePT's offset `scaling·(A·B)`, A: (s, r), B: (r, d).
        max_length: s, the fixed input length DePT's position offsets cover (inputs are padded to it).
        dept_alpha: DePT's scaling numerator: scaling = dept_alpha / sqrt(rank) (official: 8).
        prompt_init: `"text"` (embeddings of `prompt_init_text`, tiled to m), `"sample_vocab"`
            (random vocabulary rows) or `"random"` (N(0, 1), like `nn.Embedding`).
        prompt_init_text: the text for `"text"` init.
        base_model_name_or_path / revision: recorded in the adapter files for provenance; filled
            from the backbone by `get_adept_model` when left empty.
        seed: seed for `sample_vocab` / `random` init and the FFN / DePT init.
    """

    method: str = "adept"
    num_virtual_tokens: int = 60
    ffn_hidden_size: int | None = None
    ffn_dropout: float = 0.1
    rank: int | None = None
    max_length: int | None = None
    dept_alpha: float = 8.0
    prompt_init: str = "text"
    prompt_init_text: str = DEFAULT_INIT_TEXT
    base_model_name_or_path: str | None = None
    revision: str | None = None
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"AdeptConfig.method={self.method!r} is unknown; use one of {METHODS}.")
        min_m = 1 if self.method == "prompt" else 0
        if (not isinstance(self.num_virtual_tokens, int) or isinstance(self.num_virtual_tokens, bool)
                or self.num_virtual_tokens < min_m):
            raise ValueError(
                f"AdeptConfig.num_virtual_tokens={self.num_virtual_tokens!r} must be an integer >= {min_m} "
                f"for method {self.method!r}."
            )
        if self.method == "adept":
            _require_positive_int("ffn_hidden_size", self.ffn_hidden_size, "ADePT's FFN hidden size r")
            if not (0.0 <= self.ffn_dropout < 1.0):
                raise ValueError(f"AdeptConfig.ffn_dropout={self.ffn_dropout!r} must be in [0, 1).")
        if self.method == "dept":
            _require_positive_int("rank", self.rank, "DePT's low-rank r")
            _require_positive_int("max_length", self.max_length, "DePT's fixed input length s")
            if self.dept_alpha <= 0:
                raise ValueError(f"AdeptConfig.dept_alpha={self.dept_alpha!r} must be > 0.")
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(f"AdeptConfig.prompt_init={self.prompt_init!r} is unknown; use one of {PROMPT_INITS}.")
        if self.prompt_init == "text" and self.num_virtual_tokens > 0 and not self.prompt_init_text.strip():
            raise ValueError("AdeptConfig.prompt_init_text is empty; give a text or set prompt_init='sample_vocab'.")

    @property
    def dept_scaling(self) -> float:
        return self.dept_alpha / math.sqrt(self.rank) if self.method == "dept" else 0.0

    def num_trainable_params(self, hidden_size: int) -> int:
        """Trainable parameter count for a backbone of hidden size d."""
        return count_trainable_params(
            self.method, hidden_size, self.num_virtual_tokens,
            self.ffn_hidden_size if self.method == "adept" else self.rank, self.max_length,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdeptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdeptConfig field(s) {unknown}; known fields: {sorted(known)}.")
        return cls(**data)


def _require_positive_int(name: str, value: Any, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"AdeptConfig.{name}={value!r}: {what} must be an integer >= 1.")


def count_trainable_params(method: str, d: int, m: int, r: int | None = None, s: int | None = None) -> int:
    """Trainable parameters of each method.

    prompt: m·d;  adept: m·d + (d·r + r) + (r·d + d);  dept: m·d + s·r + r·d.
    """
    if method == "prompt":
        return m * d
    if method == "adept":
        return m * d + 2 * d * r + r + d
    if method == "dept":
        if s is None:
            raise ValueError("DePT's parameter count needs max_length s.")
        return m * d + s * r + r * d
    raise ValueError(f"method={method!r} is unknown; use one of {METHODS}.")


def budget_rank(method: str, hidden_size: int, num_virtual_tokens: int, budget_tokens: int = 100,
                max_length: int | None = None) -> int:
    """Largest r that keeps `method` within the prompt-tuning budget of `budget_tokens`·d parameters.

    ADePT: m·d + 2dr + r + d <= M·d  =>  r = floor(((M - m)·d - d) / (2d + 1))   (~ (M - m - 1) / 2)
    DePT:  m·d + s·r + r·d <= M·d    =>  r = floor((M - m)·d / (s + d))
    Example: d=768, m=60, M=100 -> ADePT r=19 (76,051 params); DePT with s=256 -> r=30.
    """
    d, m, budget = hidden_size, num_virtual_tokens, budget_tokens
    if method == "adept":
        r = ((budget - m) * d - d) // (2 * d + 1)
    elif method == "dept":
        if not max_length:
            raise ValueError("budget_rank(method='dept') needs max_length (s).")
        r = (budget - m) * d // (max_length + d)
    else:
        raise ValueError(f"budget_rank: method={method!r} has no rank to derive; use 'adept' or 'dept'.")
    if r < 1:
        raise ValueError(
            f"impossible budget: {method} with num_virtual_tokens={m} leaves no room for r >= 1 within "
            f"{budget}·d parameters (d={d}); lower num_virtual_tokens or raise the budget."
        )
    return r
