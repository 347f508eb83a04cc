"""Evaluation by greedy generation or by rank classification, for seq2seq and causal backbones.

The model is anything with ``model(input_ids=, attention_mask=[, labels=])`` returning ``.logits``
and ``model.generate(input_ids=, attention_mask=, max_new_tokens=, ...)``. Causal logits may carry
extra leading positions (an ADePT/PT wrapper prepends m soft-prompt positions: (B, m + L, V)),
so the last L positions, ``logits[:, -L:]``, are the ones aligned with ``input_ids`` (B, L).
Causal ``generate`` returns the prompt followed by the new tokens; seq2seq returns decoder tokens.

``eval_mode`` (in `EvalConfig`) is explicit:

* ``generate``: greedy decoding (``num_beams=1``, ``do_sample=False``) of at most
  ``max_new_tokens`` (default: the task's, 20 as in the reference); the decoded text, stripped
  (causal: cut at ``stop_at``), is the prediction.
* ``rank``: every label string is scored by its summed log-likelihood given the source (causal:
  prompt + label + EOS, the same ids as training); the best-scoring label is the prediction.
  Needs a task with ``label_strings`` (classification; STS-B lists its 26 values).

Rank scoring runs each source once (`score_candidates`, "one pass") when the model is an `AdeptModel` or `FoldedAdeptModel`
(also folded) or a transformers model: causal, the prompt runs once with a KV cache that is then
repeated for the K labels, whose tokens (all but the last) run as one batch of continuations; seq2seq,
the encoder runs once and the K labels are decoded against the repeated encoder states. Scores equal
`score_candidates_reference` (one row per example × label, the model's plain forward) to float rounding.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from adept.model import PromptedModel, takes_boolean_logits_to_keep
from pipeline.core.data import IGNORE_INDEX, Encoder, TokenizeConfig, check_fits, pad_sequences, pad_token_id
from pipeline.core.errors import UserError
from pipeline.core.tasks.base import Task

EVAL_MODES = ("generate", "rank")
# One-pass rank scoring: label rows (example × label) per continuation / decoder forward <= this × batch_size,
# so the KV cache / encoder states repeated over the labels stay within 4 × a prompt batch's.
LABEL_ROWS_PER_EXAMPLE = 4


@dataclass(frozen=True)
class EvalConfig:
    """Attributes:
    tokenize: the `TokenizeConfig` used in training (same prompts, same truncation).
    eval_mode: ``generate`` or ``rank``.
    batch_size: examples per generate call, and examples per forward in rank mode: one pass runs the
        prompts (seq2seq: the encoder) on batch_size rows, then the labels as rows example × label over the
        KV cache (encoder states) repeated per label, at most 4 × batch_size rows a forward
        (`LABEL_ROWS_PER_EXAMPLE`; 2- and 3-label tasks take one forward). The reference path
        (`score_candidates_reference`) runs batch_size rows of example × label per forward.
    max_new_tokens: generation budget; None = ``task.max_new_tokens``.
    pad_to_length: DePT fixed length s for encoder inputs (seq2seq) or prompts / scored rows (causal).
    stop_at: causal generation: keep the text before the first occurrence (None keeps all).
    """

    tokenize: TokenizeConfig
    eval_mode: str = "generate"
    batch_size: int = 32
    max_new_tokens: int | None = None
    pad_to_length: int | None = None
    stop_at: str | None = "\n"

    def __post_init__(self) -> None:
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"EvalConfig.eval_mode={self.eval_mode!r}; choose one of {EVAL_MODES}")
        if self.batch_size < 1:
            raise ValueError(f"EvalConfig.batch_size={self.batch_size}; it must be >= 1")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"EvalConfig.max_new_tokens={self.max_new_tokens}; use None (task default) or >= 1")


@dataclass
class EvalResult:
    metrics: dict[str, float]
    primary_metric: str
    predictions: list[str]
    references: list
    sources: list[str] = field(repr=False)

    @property
    def score(self) -> float:
        """Value of the model-selection metric."""
        return self.metrics[self.primary_metric]

    def table(self) -> dict[str, list]:
        """Per-example columns (for ``mlflow.log_table``)."""
        refs = [r if isinstance(r, str) else " | ".join(r) for r in self.references]
        return {"source": list(self.sources), "reference": refs, "prediction": list(self.predictions)}


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


@torch.no_grad()
def predict_generate(model, tokenizer, sources: Sequence[str], config: EvalConfig, max_new_tokens: int) -> list[str]:
    """Greedy generation for each source; returns the decoded, stripped predictions."""
    causal = config.tokenize.backbone == "causal"
    encoder, pad, device = Encoder(tokenizer, config.tokenize), pad_token_id(tokenizer), _device(model)
    prompts, _ = encoder.sources(sources)
    side = "left" if causal else "right"
    predictions: list[str] = []
    for lo, hi in _chunks(len(prompts), config.batch_size):
        chunk = prompts[lo:hi]
        input_ids = pad_sequences(chunk, pad, side, config.pad_to_length).to(device)
        mask = pad_sequences([[1] * len(p) for p in chunk], 0, side, input_ids.shape[1]).to(device)
        out = model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, pad_token_id=pad,
        )
        new = out[:, input_ids.shape[1] :] if causal else out
        for text in tokenizer.batch_decode(new, skip_special_tokens=True):
            if causal and config.stop_at:
                text = text.split(config.stop_at)[0]
            predictions.append(text.strip())
    return predictions


def _summed_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (R, T, V) aligned so that logits[:, t] predicts labels[:, t]; labels (R, T) with -100 → (R,)."""
    mask = labels != IGNORE_INDEX
    picked = logits[mask].float().log_softmax(-1)  # (n_tokens, V), only the scored positions
    token_lp = picked.gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1)
    scores = torch.zeros(labels.shape[0], dtype=token_lp.dtype, device=labels.device)
    return scores.index_add_(0, mask.nonzero()[:, 0], token_lp)


@torch.no_grad()
def score_candidates(model, tokenizer, sources: Sequence[str], candidates: Sequence[str], config: EvalConfig,
                     *, one_pass: bool | None = None) -> torch.Tensor:
    """Summed log-likelihood of each candidate string given each source: a (N, K) float tensor.

    The candidate's tokens are the training target's (causal: + EOS when ``tokenize.add_eos``).
    ``one_pass``: None (default) scores every source once when the model allows it (an `AdeptModel` or `FoldedAdeptModel`,
    folded or not, or a transformers model; see the module docstring) and falls back to
    `score_candidates_reference` for other models; True requires it; False is the reference path.
    ``config.batch_size`` is examples per forward here (see `EvalConfig`).
    """
    causal = config.tokenize.backbone == "causal"
    backbone = _one_pass_backbone(model, causal)
    if one_pass is None:
        one_pass = backbone is not None
    if not one_pass:
        return score_candidates_reference(model, tokenizer, sources, candidates, config)
    if backbone is None:
        raise ValueError(f"one_pass=True needs an adept model or a {config.tokenize.backbone} transformers model "
                         f"taking a KV cache / encoder outputs; got {type(model).__name__}")
    encoder, pad, device = Encoder(tokenizer, config.tokenize), pad_token_id(tokenizer), _device(model)
    prompts, _ = encoder.sources(sources)
    cands, _ = encoder.targets(candidates)
    chunk_scores = _causal_one_pass if causal else _seq2seq_one_pass
    max_rows = LABEL_ROWS_PER_EXAMPLE * config.batch_size
    scores = [chunk_scores(model, backbone, prompts[lo:hi], cands, pad, config.pad_to_length, max_rows, device)
              for lo, hi in _chunks(len(prompts), config.batch_size)]
    return torch.cat(scores).cpu() if scores else torch.zeros(0, len(cands))


def _forward_parameters(module) -> set[str]:
    try:
        return set(inspect.signature(type(module).forward).parameters)
    except (TypeError, ValueError):
        return set()


def _one_pass_backbone(model, causal: bool):
    """The transformers model under `model` when the one-pass scorer can drive it, else None."""
    from transformers import PreTrainedModel

    backbone = model.base_model if isinstance(model, PromptedModel) else model
    if not isinstance(backbone, PreTrainedModel):
        return None
    if bool(getattr(backbone.config, "is_encoder_decoder", False)) == causal:
        return None
    params = _forward_parameters(backbone)
    if causal:
        ok = {"position_ids", "inputs_embeds"} <= params and bool({"cache", "past_key_values"} & params)
    else:
        ok = "encoder_outputs" in params and hasattr(backbone, "get_encoder")
    return backbone if ok else None


def _causal_one_pass(model, backbone, prompts, cands, pad: int, pad_to_length: int | None, max_rows: int,
                     device) -> torch.Tensor:
    """(B, K) scores: the prompts run once (right-padded, as the reference rows), then all K candidates.

    Candidate j = c_j[0..T_j-1]. c_j[0] is scored by the logits at each prompt's last token. The rest,
    c_j[1:], are scored by a continuation: the prompt KV cache repeated over the candidates (row i·k + j)
    and the tokens c_j[:-1] fed at their reference positions (m + len(prompt_i) + t), every token embedded
    as in the full forward (the ADePT/DePT offset at its input position). The attention mask hides the
    prompt padding between a short prompt and its continuation; right padding of the continuation is
    causal-invisible. Continuations run in groups of candidates of at most `max_rows` rows.
    """
    adapter = model if isinstance(model, PromptedModel) else None
    m = adapter.num_virtual_tokens if adapter is not None else 0
    batch = len(prompts)
    longest_row = max(len(p) for p in prompts) + max((len(c) for c in cands), default=0)
    check_fits(longest_row, pad_to_length)  # the reference pads rows to pad_to_length: same error
    if adapter is not None:
        adapter.check_input_length(pad_to_length or longest_row)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    input_ids = pad_sequences(prompts, pad, "right").to(device)
    mask = pad_sequences([[1] * len(p) for p in prompts], 0, "right", input_ids.shape[1]).to(device)
    last = (m + lengths - 1).unsqueeze(1)  # (B, 1): the last prompt token, soft prompt included
    params = _forward_parameters(backbone)
    kwargs = {"use_cache": True}
    if takes_boolean_logits_to_keep(backbone):  # (B, 1) integer positions: one row of logits per prompt
        kwargs["logits_to_keep"] = last
    out = model(input_ids=input_ids, attention_mask=mask, **kwargs)
    logits = out.logits[:, 0] if "logits_to_keep" in kwargs else out.logits[torch.arange(batch, device=device), last[:, 0]]
    first_ids = torch.tensor([c[0] if c else pad for c in cands], device=device)
    scores = logits.float().log_softmax(-1)[:, first_ids]  # (B, K)
    scores = scores * torch.tensor([bool(c) for c in cands], device=device)  # an empty candidate scores 0
    multi = [j for j, c in enumerate(cands) if len(c) > 1]  # the labels with tokens after their first
    if not multi:
        return scores
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if not hasattr(cache, "batch_repeat_interleave"):
        raise ValueError(f"{type(backbone).__name__} returned no repeatable KV cache ({type(cache).__name__}); "
                         "use score_candidates(..., one_pass=False)")
    prefix = {"mask": torch.cat([mask.new_ones(batch, m), mask], 1), "lengths": lengths, "m": m,
              "cache_kwarg": "cache" if "cache" in params else "past_key_values"}
    groups = _label_groups(multi, batch, max_rows)
    for n, group in enumerate(groups):
        # a continuation appends to its cache: every group but the last takes a copy of the prompt cache
        group_cache = cache if n == len(groups) - 1 else copy.deepcopy(cache)
        scores[:, group] += _continuation_scores(adapter, backbone, group_cache, [cands[j] for j in group], prefix, pad)
    return scores


def _label_groups(labels: list[int], batch: int, max_rows: int) -> list[list[int]]:
    """Split label indices so that batch × (labels in a group) <= max_rows (at least one label a group)."""
    size = max(1, max_rows // batch)
    return [labels[i:i + size] for i in range(0, len(labels), size)]


def _continuation_scores(adapter, backbone, cache, cands, prefix: dict, pad: int) -> torch.Tensor:
    """(B, k) summed log-probs of c[1:] for k candidates of >= 2 tokens, fed c[:-1] after the cached prompts."""
    lengths, m = prefix["lengths"], prefix["m"]
    batch, k, device = len(lengths), len(cands), lengths.device
    width = max(len(c) for c in cands) - 1
    cache.batch_repeat_interleave(k)  # row i·k + j: prompt i, candidate j
    cont_ids = pad_sequences([c[:-1] for c in cands], pad, "right", width).to(device).repeat(batch, 1)
    cont_mask = pad_sequences([[1] * (len(c) - 1) for c in cands], 0, "right", width).to(device).repeat(batch, 1)
    targets = pad_sequences([c[1:] for c in cands], IGNORE_INDEX, "right", width).to(device).repeat(batch, 1)
    positions = lengths.repeat_interleave(k).unsqueeze(1) + torch.arange(width, device=device)  # input positions
    kwargs = {prefix["cache_kwarg"]: cache, "position_ids": m + positions, "use_cache": True,
              "attention_mask": torch.cat([prefix["mask"].repeat_interleave(k, 0), cont_mask], 1)}
    if adapter is not None:
        logits = backbone(inputs_embeds=adapter.embed_inputs(cont_ids, positions), **kwargs).logits
    else:
        logits = backbone(input_ids=cont_ids, **kwargs).logits
    return _summed_logprob(logits, targets).view(batch, k)


def _seq2seq_one_pass(model, backbone, sources, cands, pad: int, pad_to_length: int | None, max_rows: int,
                      device) -> torch.Tensor:
    """(B, K) scores: each source encoded once, the K candidates decoded against the repeated encoder states
    (in groups of candidates of at most `max_rows` rows)."""
    from transformers.modeling_outputs import BaseModelOutput

    batch, k = len(sources), len(cands)
    input_ids = pad_sequences(sources, pad, "right", pad_to_length).to(device)
    mask = pad_sequences([[1] * len(s) for s in sources], 0, "right", input_ids.shape[1]).to(device)
    if isinstance(model, PromptedModel):
        encoded, mask = model.encode(input_ids, mask)
    else:
        encoded = backbone.get_encoder()(input_ids=input_ids, attention_mask=mask)
    scores = []
    for group in _label_groups(list(range(k)), batch, max_rows):
        n = len(group)
        hidden = BaseModelOutput(last_hidden_state=encoded.last_hidden_state.repeat_interleave(n, 0))
        labels = pad_sequences([cands[j] for j in group], IGNORE_INDEX, "right").to(device).repeat(batch, 1)
        logits = backbone(encoder_outputs=hidden, attention_mask=mask.repeat_interleave(n, 0), labels=labels).logits
        scores.append(_summed_logprob(logits, labels).view(batch, n))  # row i·n + j: source i, candidate j
    return torch.cat(scores, 1)


@torch.no_grad()
def score_candidates_reference(model, tokenizer, sources: Sequence[str], candidates: Sequence[str],
                               config: EvalConfig) -> torch.Tensor:
    """`score_candidates` the direct way, one row per (source, candidate); for any model with ``.logits``.

    Causal: rows prompt_i + candidate_j (+ EOS when ``tokenize.add_eos``), right-padded; the
    logits of position t-1 score token t. Seq2seq: encoder input source_i, labels candidate_j.
    ``config.batch_size`` is rows (example × candidate) per forward here.
    """
    causal = config.tokenize.backbone == "causal"
    encoder, pad, device = Encoder(tokenizer, config.tokenize), pad_token_id(tokenizer), _device(model)
    prompts, _ = encoder.sources(sources)
    cands, _ = encoder.targets(candidates)
    rows = [(p, c) for p in prompts for c in cands]  # example-major: row i*K + j
    scores = []
    for lo, hi in _chunks(len(rows), config.batch_size):
        chunk = rows[lo:hi]
        if causal:
            ids = [p + c for p, c in chunk]
            input_ids = pad_sequences(ids, pad, "right", config.pad_to_length).to(device)
            length = input_ids.shape[1]
            mask = pad_sequences([[1] * len(s) for s in ids], 0, "right", length).to(device)
            labels = pad_sequences([[IGNORE_INDEX] * len(p) + c for p, c in chunk], IGNORE_INDEX, "right", length).to(device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, -length:]
            scores.append(_summed_logprob(logits[:, :-1], labels[:, 1:]))
        else:
            src = [p for p, _ in chunk]
            input_ids = pad_sequences(src, pad, "right", config.pad_to_length).to(device)
            mask = pad_sequences([[1] * len(s) for s in src], 0, "right", input_ids.shape[1]).to(device)
            labels = pad_sequences([c for _, c in chunk], IGNORE_INDEX, "right").to(device)
            logits = model(input_ids=input_ids, attention_mask=mask, labels=labels).logits
            scores.append(_summed_logprob(logits, labels))
    return torch.cat(scores).view(len(prompts), len(cands)).cpu()


def predict_rank(model, tokenizer, sources: Sequence[str], label_strings: Sequence[str], config: EvalConfig) -> list[str]:
    """Rank classification: the label string with the highest summed log-likelihood per source."""
    best = score_candidates(model, tokenizer, sources, label_strings, config).argmax(-1)
    return [label_strings[i] for i in best.tolist()]


def predict(model, tokenizer, task: Task, sources, config: EvalConfig) -> list[str]:
    """Predictions for `sources` in ``config.eval_mode``; the model is in eval mode meanwhile."""
    if config.eval_mode == "rank" and not task.label_strings:
        raise UserError(
            f"eval_mode='rank' needs label strings, but task {task.name!r} ({task.task_type}) has none; "
            "use eval_mode='generate'"
        )
    sources = list(sources)
    # Sources of similar length share a batch: less padding computed for nothing (each row's result is the
    # same whatever batch it is in, up to float rounding); the predictions come back in the input order.
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    ranked = [sources[i] for i in order]
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        if config.eval_mode == "rank":
            out = predict_rank(model, tokenizer, ranked, task.label_strings, config)
        else:
            out = predict_generate(model, tokenizer, ranked, config, config.max_new_tokens or task.max_new_tokens)
    finally:
        model.train(was_training)
    predictions = [""] * len(sources)
    for position, index in enumerate(order):
        predictions[index] = out[position]
    return predictions


def score(task: Task, dataset, predictions: list[str]) -> EvalResult:
    """Score predictions for every row of a formatted split with the task metrics."""
    references = list(dataset["answers"]) if task.task_type == "generation" else list(dataset["target"])
    groups = list(dataset["group"]) if "group" in dataset.column_names else None
    if groups is not None and all(g < 0 for g in groups):
        groups = None
    sources = list(dataset["source"])
    metrics = task.compute_metrics(predictions, references, groups, sources)
    return EvalResult(metrics, task.primary_metric, predictions, references, sources)


def evaluate(model, tokenizer, task: Task, dataset, config: EvalConfig) -> EvalResult:
    """Predict every row of a formatted split (``Task.get_split``) and score it with the task metrics."""
    return score(task, dataset, predict(model, tokenizer, task, list(dataset["source"]), config))
