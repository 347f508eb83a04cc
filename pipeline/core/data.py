"""Tokenisation and batching for seq2seq (T5) and causal (LLaMA, SmolLM2) backbones.

* seq2seq: ``input_ids`` = source with the tokenizer's own special tokens (T5: ``</s>``),
  ``labels`` = target ids (T5 appends ``</s>``); padded labels are -100.
* causal: ``input_ids`` = prompt + target where prompt = [tokenizer prefix, e.g. BOS] + source
  + separator and target = target ids + EOS; ``labels`` are -100 on the prompt, so the loss
  covers only the target. Source, separator and target are tokenised separately, so the prompt
  of a training row is token-for-token the prompt used at evaluation.

Truncation cuts the end of the source (the separator and the special tokens are kept) to
``max_source_length`` and the end of the target to ``max_target_length``; `tokenize_dataset`
counts the truncated rows, logs a warning when there are any, and returns the counts.

Padding is dynamic (longest in the batch) unless ``pad_to_length`` is set: DePT needs every input
padded to its fixed length s (seq2seq: ``max_source_length``; causal: see `fixed_length`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import torch

from pipeline.core.errors import UserError

logger = logging.getLogger(__name__)
BACKBONES = ("seq2seq", "causal")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizeConfig:
    """Attributes:
    backbone: ``seq2seq`` or ``causal``.
    max_source_length: seq2seq: encoder tokens incl. specials; causal: prompt tokens incl. separator.
    max_target_length: target tokens incl. EOS.
    separator: causal only, text between source and target.
    add_eos: causal only, append the EOS token to each target (teaches the model to stop).
    """

    backbone: str
    max_source_length: int = 256
    max_target_length: int = 128
    separator: str = "\n"
    add_eos: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"TokenizeConfig.backbone={self.backbone!r}; choose one of {BACKBONES}")
        if self.max_source_length < 2 or self.max_target_length < 1:
            raise UserError(
                f"TokenizeConfig: max_source_length={self.max_source_length} (needs >= 2) and "
                f"max_target_length={self.max_target_length} (needs >= 1)"
            )


def fixed_length(config: TokenizeConfig) -> int:
    """The DePT fixed input length s: the longest training input this config can produce."""
    if config.backbone == "seq2seq":
        return config.max_source_length
    return config.max_source_length + config.max_target_length


@dataclass
class TruncationReport:
    split: str
    total: int
    source_truncated: int
    target_truncated: int
    longest_source: int
    longest_target: int

    def message(self) -> str:
        return (
            f"{self.split or 'data'}: {self.source_truncated}/{self.total} sources truncated "
            f"(longest {self.longest_source} tokens), {self.target_truncated}/{self.total} targets truncated "
            f"(longest {self.longest_target} tokens)"
        )


def pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token; set one first, e.g. tokenizer.pad_token = tokenizer.eos_token "
            "(usual for decoder-only models: padded positions are masked and never used as labels)"
        )
    return int(tokenizer.pad_token_id)


class Encoder:
    """Turns source/target strings into id lists for one tokenizer and `TokenizeConfig`."""

    def __init__(self, tokenizer, config: TokenizeConfig) -> None:
        self.tokenizer, self.config = tokenizer, config
        self.prefix, self.suffix = special_token_layout(tokenizer)
        self.separator = self._body([config.separator])[0] if config.backbone == "causal" else []
        if config.backbone == "causal":
            if config.add_eos and tokenizer.eos_token_id is None:
                raise ValueError("add_eos=True but the tokenizer has no eos_token; set tokenizer.eos_token or add_eos=False")
            if not self.separator:
                _warn_once(f"separator {config.separator!r} tokenises to no tokens; source and target will touch")
            budget = config.max_source_length - len(self.prefix) - len(self.separator)
        else:
            budget = config.max_source_length - len(self.prefix) - len(self.suffix)
        if budget < 1:
            raise UserError(f"max_source_length={config.max_source_length} leaves no room for source tokens after special tokens")
        self.source_budget = budget

    def _body(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def sources(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Encoder inputs (seq2seq) or prompts (causal), and the untruncated lengths."""
        out, lengths = [], []
        for body in self._body(texts):
            if self.config.backbone == "causal":
                out.append(self.prefix + body[: self.source_budget] + self.separator)
                lengths.append(len(self.prefix) + len(body) + len(self.separator))
            else:
                out.append(self.prefix + body[: self.source_budget] + self.suffix)
                lengths.append(len(self.prefix) + len(body) + len(self.suffix))
        return out, lengths

    def targets(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """Label ids (seq2seq: with the tokenizer's specials; causal: + EOS), and untruncated lengths."""
        cfg = self.config
        if cfg.backbone == "causal":
            end = [self.tokenizer.eos_token_id] if cfg.add_eos else []
        else:
            end = self.suffix
        keep = max(cfg.max_target_length - len(end), 0)
        bodies = self._body(texts)
        return [b[:keep] + end for b in bodies], [len(b) + len(end) for b in bodies]

    def encode(self, sources: Sequence[str], targets: Sequence[str]) -> dict[str, list]:
        """Training rows: ``input_ids``, ``labels`` and the truncation flags."""
        src, src_len = self.sources(sources)
        tgt, tgt_len = self.targets(targets)
        if self.config.backbone == "causal":
            input_ids = [p + t for p, t in zip(src, tgt, strict=True)]
            labels = [[IGNORE_INDEX] * len(p) + t for p, t in zip(src, tgt, strict=True)]
        else:
            input_ids, labels = src, tgt
        return {
            "input_ids": input_ids,
            "labels": labels,
            "source_length": src_len,
            "target_length": tgt_len,
        }


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Encoders are built for every evaluation: say a tokenizer quirk once per process, not every time."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def special_token_layout(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence (T5: [], [</s>]; LLaMA: [<s>], [])."""
    probe = "hello"
    body = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(body) + 1):
        if full[start : start + len(body)] == body:
            return list(full[:start]), list(full[start + len(body) :])
    raise ValueError("cannot locate the text inside the tokenizer's output with special tokens; unsupported tokenizer")


def tokenize_dataset(
    dataset: datasets.Dataset, tokenizer, config: TokenizeConfig, split: str = ""
) -> tuple[datasets.Dataset, TruncationReport]:
    """Add ``input_ids`` and ``labels`` to a formatted split (columns ``source``, ``target``).

    Returns the dataset (all original columns kept) and a `TruncationReport`, also logged.
    """
    encoder = Encoder(tokenizer, config)
    # A module-level function with the encoder as an argument: `datasets` hashes both for its cache, and
    # hashing a closure makes dill print its disassembled bytecode (Ray workers then forward every line).
    out = dataset.map(_encode_batch, batched=True, fn_kwargs={"encoder": encoder}, desc=f"tokenize {split}".strip())
    s_len, t_len = list(out["source_length"]), list(out["target_length"])
    s_max = config.max_source_length  # = specials + source budget (+ separator for causal)
    report = TruncationReport(
        split=split,
        total=len(out),
        source_truncated=sum(n > s_max for n in s_len),
        target_truncated=sum(n > config.max_target_length for n in t_len),
        longest_source=max(s_len, default=0),
        longest_target=max(t_len, default=0),
    )
    logger.info("truncation: %s", report.message())  # the job reports truncation once, as a warning (pipeline.worker.setup)
    return out.remove_columns(["source_length", "target_length"]), report


def _encode_batch(batch: Mapping[str, list], encoder: Encoder) -> dict[str, list]:
    return encoder.encode(batch["source"], batch["target"])


def check_fits(longest: int, pad_to_length: int | None) -> None:
    """Raise when a sequence of `longest` tokens cannot be padded to `pad_to_length` (None: no fixed length)."""
    if pad_to_length is not None and longest > pad_to_length:
        raise ValueError(
            f"a sequence has {longest} tokens but pad_to_length={pad_to_length}; raise pad_to_length or truncate "
            "to it (for DePT set max_source_length to the prompt's fixed length s)"
        )


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_value: int, side: str = "right", length: int | None = None
) -> torch.Tensor:
    """Stack id lists into a (B, L) LongTensor, L = ``length`` or the longest sequence."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side={side!r}; use 'left' or 'right'")
    longest = max((len(s) for s in seqs), default=0)
    if length is None:
        length = longest
    check_fits(longest, length)
    out = torch.full((len(seqs), length), pad_value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if side == "right":
                out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            else:
                out[i, length - len(s) :] = torch.as_tensor(s, dtype=torch.long)
    return out


def _mask(seqs: Sequence[Sequence[int]], side: str, length: int) -> torch.Tensor:
    return pad_sequences([[1] * len(s) for s in seqs], 0, side, length)


@dataclass
class Seq2SeqCollator:
    """features (dicts with ``input_ids``, ``labels``) → ``input_ids``/``attention_mask`` (B, S) and
    ``labels`` (B, T) padded with -100. S = ``pad_to_length`` (DePT) or the batch's longest."""

    pad_token_id: int
    pad_to_length: int | None = None

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        input_ids = pad_sequences(ids, self.pad_token_id, "right", self.pad_to_length)
        batch = {"input_ids": input_ids, "attention_mask": _mask(ids, "right", input_ids.shape[1])}
        if "labels" in features[0]:
            batch["labels"] = pad_sequences([f["labels"] for f in features], IGNORE_INDEX, "right")
        return batch


@dataclass
class CausalCollator:
    """features → ``input_ids``, ``attention_mask``, ``labels`` (B, L), labels -100 on padding.

    ``padding_side="left"`` for generation batches; L = ``pad_to_length`` (DePT) or the longest.
    """

    pad_token_id: int
    padding_side: str = "right"
    pad_to_length: int | None = None

    def __call__(self, features: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        input_ids = pad_sequences(ids, self.pad_token_id, self.padding_side, self.pad_to_length)
        length = input_ids.shape[1]
        batch = {"input_ids": input_ids, "attention_mask": _mask(ids, self.padding_side, length)}
        if "labels" in features[0]:
            batch["labels"] = pad_sequences([f["labels"] for f in features], IGNORE_INDEX, self.padding_side, length)
        return batch


def make_collator(tokenizer, config: TokenizeConfig, pad_to_length: int | None = None, padding_side: str = "right"):
    """The training collator for ``config.backbone``."""
    pad = pad_token_id(tokenizer)
    if config.backbone == "seq2seq":
        return Seq2SeqCollator(pad, pad_to_length)
    return CausalCollator(pad, padding_side, pad_to_length)
