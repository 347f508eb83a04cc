"""Task metrics, all reported ×100 (T5 / DePT conventions).

Predictions are always strings (what the model generated or what rank classification picked).
Classification metrics first map strings to class ids through the task's label strings; a
prediction outside the label set gets id -1 and always counts as wrong. Metric names:

=============  ===========================================================  ==================
name           definition                                                   used by
=============  ===========================================================  ==================
accuracy       share of predictions equal to the reference class            most classifiers
f1             binary F1 of class 1; an invalid prediction is replaced by   MRPC, QQP, MultiRC
               the wrong class (T5 ``f1_score_with_invalid``)
macro_f1       unweighted mean F1 over all classes (a class absent from     CB
               both references and predictions counts as F1 0, as sklearn
               with ``labels=range(k)`` in the reference)
mcc            Matthews correlation; invalid → wrong class                  CoLA
pearson        Pearson r of parsed floats (unparsable → -1.0, as T5)        STS-B
spearman       Spearman ρ of parsed floats                                  STS-B
squad_em       SQuAD exact match after answer normalisation, max over golds MRQA, ReCoRD
squad_f1       SQuAD token F1, max over gold answers                        MRQA, ReCoRD
multirc_em     share of question groups whose answers are all correct      MultiRC
exact_match    stripped string equality                                     MBPP, custom
pass_at_1      share of predictions that pass their tests when run in       MBPP with
               `pipeline.core.code_eval`'s sandbox (one greedy sample)      execute_code
=============  ===========================================================  ==================
"""

from __future__ import annotations

import math
import re
import string
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from pipeline.core.code_eval import mbpp_pass_at_1

# scipy.stats and sklearn.metrics are imported where used: ~1.5 s in every process that imports the pipeline.

CLASS_METRICS = ("accuracy", "f1", "macro_f1", "mcc", "multirc_em")
REGRESSION_METRICS = ("pearson", "spearman")
TEXT_METRICS = ("squad_em", "squad_f1", "exact_match")
CODE_METRICS = ("pass_at_1",)  # run generated code: only with the task's tests and the user's opt-in
METRIC_NAMES = CLASS_METRICS + REGRESSION_METRICS + TEXT_METRICS + CODE_METRICS


def to_class_ids(texts: Sequence[str], label_strings: Sequence[str]) -> np.ndarray:
    """Map strings to class ids (whitespace-stripped exact match); unknown strings → -1. Shape (N,)."""
    index = {s: i for i, s in enumerate(label_strings)}
    return np.array([index.get(str(t).strip(), -1) for t in texts], dtype=np.int64)


def parse_float(text: str, default: float = -1.0) -> float:
    """Parse a generated number; T5's ``string_to_float`` default of -1.0 for anything unparsable."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return default
    return value if math.isfinite(value) else default


def _replace_invalid(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Binary tasks: an invalid prediction (-1) becomes the wrong class, 1 - reference."""
    return np.where(pred < 0, 1 - ref, pred)


def accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    return 100.0 * float(np.mean(pred == ref)) if len(ref) else 0.0


def binary_f1(pred: np.ndarray, ref: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    pred = _replace_invalid(pred, ref)
    return 100.0 * float(f1_score(ref, pred, labels=[0, 1], pos_label=1, average="binary", zero_division=0))


def macro_f1(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> float:
    from sklearn.metrics import f1_score

    labels = list(range(num_classes))
    return 100.0 * float(f1_score(ref, pred, labels=labels, average="macro", zero_division=0))


def mcc(pred: np.ndarray, ref: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    if set(np.unique(ref)) <= {0, 1}:
        pred = _replace_invalid(pred, ref)
    return 100.0 * float(matthews_corrcoef(ref, pred))


def group_exact_match(pred: np.ndarray, ref: np.ndarray, groups: Sequence[int]) -> float:
    """Share of groups (MultiRC questions) in which every prediction is right."""
    correct: dict[int, bool] = defaultdict(lambda: True)
    for p, r, g in zip(pred, ref, groups, strict=True):
        correct[int(g)] &= bool(p == r)
    return 100.0 * sum(correct.values()) / len(correct) if correct else 0.0


def _correlation(fn, pred: Sequence[float], ref: Sequence[float]) -> float:
    """Correlation ×100; 0.0 when either side is constant (undefined, and NaN would break model selection)."""
    if len(ref) < 2 or np.ptp(pred) == 0 or np.ptp(ref) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return 100.0 * float(fn(pred, ref)[0])


def pearson(pred: Sequence[float], ref: Sequence[float]) -> float:
    from scipy import stats

    return _correlation(stats.pearsonr, pred, ref)


def spearman(pred: Sequence[float], ref: Sequence[float]) -> float:
    from scipy import stats

    return _correlation(stats.spearmanr, pred, ref)


_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_em(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    scores = [max(float(normalize_answer(p) == normalize_answer(g)) for g in gs) for p, gs in zip(predictions, golds, strict=True)]
    return 100.0 * float(np.mean(scores)) if scores else 0.0


def squad_f1(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
    scores = [max(_token_f1(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True)]
    return 100.0 * float(np.mean(scores)) if scores else 0.0


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    hits = [str(p).strip() == str(r).strip() for p, r in zip(predictions, references, strict=True)]
    return 100.0 * float(np.mean(hits)) if hits else 0.0


def _as_gold_lists(references: Sequence) -> list[list[str]]:
    golds = [[r] if isinstance(r, str) else [str(x) for x in r] for r in references]
    for i, g in enumerate(golds):
        if not g:
            raise ValueError(f"references[{i}] is an empty answer list; every example needs at least one gold answer")
    return golds


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence,
    *,
    label_strings: Sequence[str] = (),
    groups: Sequence[int] | None = None,
    tests: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """Compute the named metrics.

    Args:
        names: metric names from ``METRIC_NAMES``.
        predictions: N predicted strings.
        references: N gold strings, or N lists of gold strings (QA; the first is used for
            classification and regression metrics).
        label_strings: the class strings, required by class metrics; class id = position.
        groups: N group ids, required by ``multirc_em``.
        tests: N lists of Python statements (asserts) each prediction must pass, required by ``pass_at_1``.
    Returns:
        ``{name: value×100}`` in the order of ``names``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"predictions has {len(predictions)} items but references has {len(references)}")
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
    golds = _as_gold_lists(references)
    first = [g[0] for g in golds]
    out: dict[str, float] = {}
    if any(n in CLASS_METRICS for n in names):
        if not label_strings:
            raise ValueError(f"metrics {list(names)} need label_strings (the task's class strings)")
        ref_ids = to_class_ids(first, label_strings)
        if (ref_ids < 0).any():
            bad = first[int(np.argmax(ref_ids < 0))]
            raise ValueError(f"reference {bad!r} is not one of the label strings {list(label_strings)}")
        pred_ids = to_class_ids(predictions, label_strings)
    for name in names:
        if name == "accuracy":
            out[name] = accuracy(pred_ids, ref_ids)
        elif name == "f1":
            out[name] = binary_f1(pred_ids, ref_ids)
        elif name == "macro_f1":
            out[name] = macro_f1(pred_ids, ref_ids, len(label_strings))
        elif name == "mcc":
            out[name] = mcc(pred_ids, ref_ids)
        elif name == "multirc_em":
            if groups is None:
                raise ValueError("metric 'multirc_em' needs groups (one question id per example)")
            out[name] = group_exact_match(pred_ids, ref_ids, groups)
        elif name in REGRESSION_METRICS:
            fn = pearson if name == "pearson" else spearman
            out[name] = fn([parse_float(p) for p in predictions], [parse_float(r) for r in first])
        elif name == "squad_em":
            out[name] = squad_em(predictions, golds)
        elif name == "squad_f1":
            out[name] = squad_f1(predictions, golds)
        elif name == "exact_match":
            out[name] = exact_match(predictions, first)
        elif name == "pass_at_1":
            if tests is None:
                raise ValueError("metric 'pass_at_1' needs tests (the asserts each program must pass)")
            # the opt-in is the task's: only `Task.with_code_execution` lists this metric
            out[name] = mbpp_pass_at_1(predictions, tests, allow_code_execution=True)
    return out
