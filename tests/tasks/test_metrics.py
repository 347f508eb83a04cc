"""Metrics against hand-computed values, including predictions outside the label set."""

import math

import pytest

from pipeline.core import metrics as M

BIN = ("0", "1")


def test_accuracy_and_binary_f1_with_invalid_prediction():
    # refs 1 1 0 0 1; "maybe" is invalid and becomes the wrong class (0) for F1.
    # pred ids 1 0 1 0 0 → TP=1 FP=1 FN=2 → P=1/2 R=1/3 F1=0.4; accuracy 2/5.
    out = M.compute_metrics(["accuracy", "f1"], ["1", "0", "1", "0", "maybe"], ["1", "1", "0", "0", "1"], label_strings=BIN)
    assert out == pytest.approx({"accuracy": 40.0, "f1": 40.0})


def test_invalid_prediction_is_wrong_even_when_it_would_help_f1():
    # ref 0, prediction "2" (outside {0,1}) must not count as class 1 nor as correct.
    out = M.compute_metrics(["accuracy", "f1"], ["1", "2"], ["1", "0"], label_strings=BIN)
    # invalid → 1 - 0 = 1: TP=1, FP=1 → F1 = 2/3
    assert out == pytest.approx({"accuracy": 50.0, "f1": 200 / 3})


def test_matthews_correlation():
    # refs 1 1 1 0 0 0, preds 1 1 ? 0 0 1 (invalid → 0): TP=2 FN=1 TN=2 FP=1 → (4-1)/sqrt(3^4) = 1/3
    out = M.compute_metrics(["mcc"], ["1", "1", "?", "0", "0", "1"], ["1", "1", "1", "0", "0", "0"], label_strings=BIN)
    assert out["mcc"] == pytest.approx(100 / 3)


def test_macro_f1_three_classes():
    # refs 0 0 1 2 2, preds 0 1 1 2 x → per-class F1: 2/3, 2/3, 2/3 → 66.67; accuracy 3/5.
    out = M.compute_metrics(["macro_f1", "accuracy"], ["0", "1", "1", "2", "x"], ["0", "0", "1", "2", "2"], label_strings=("0", "1", "2"))
    assert out == pytest.approx({"macro_f1": 200 / 3, "accuracy": 60.0})


def test_pearson_spearman_and_unparsable_prediction():
    out = M.compute_metrics(["pearson", "spearman"], ["1.0", "2.0", "3.0"], ["1.0", "2.0", "4.0"])
    # x = 1 2 3, y = 1 2 4: cov·n = 3, |dx| = sqrt 2, |dy| = sqrt(42)/3 → r = 9 / sqrt(84)
    assert out == pytest.approx({"pearson": 900 / math.sqrt(84), "spearman": 100.0})
    out = M.compute_metrics(["pearson", "spearman"], ["abc", "2.0", "3.0"], ["1.0", "2.0", "4.0"])
    # "abc" → -1.0: dx = -7/3 2/3 5/3 → r = 51 / sqrt(78 · 42); ranks unchanged
    assert out == pytest.approx({"pearson": 5100 / math.sqrt(78 * 42), "spearman": 100.0})


def test_constant_predictions_give_zero_correlation_not_nan():
    out = M.compute_metrics(["pearson", "spearman"], ["2.0", "2.0", "2.0"], ["1.0", "2.0", "4.0"])
    assert out == {"pearson": 0.0, "spearman": 0.0}


def test_squad_em_f1_max_over_golds():
    preds = ["The Eiffel Tower!", "in Paris France"]
    golds = [["Paris", "eiffel tower"], ["Paris"]]
    # row 1: normalised match with the 2nd gold; row 2: tokens {in, paris, france} vs {paris} → P 1/3, R 1 → F1 0.5
    out = M.compute_metrics(["squad_em", "squad_f1"], preds, golds)
    assert out == pytest.approx({"squad_em": 50.0, "squad_f1": 75.0})


def test_normalize_answer():
    assert M.normalize_answer("  The  Cat's, a HAT. ") == "cats hat"


def test_multirc_group_exact_match():
    # groups 1 1 2 2 3: group 2 has one wrong answer → 2 of 3 groups right
    out = M.compute_metrics(["multirc_em", "f1"], ["1", "0", "1", "0", "0"], ["1", "0", "1", "1", "0"], label_strings=BIN, groups=[1, 1, 2, 2, 3])
    # F1: TP=2 FN=1 FP=0 → 0.8
    assert out == pytest.approx({"multirc_em": 200 / 3, "f1": 80.0})


def test_exact_match_strips_whitespace():
    assert M.compute_metrics(["exact_match"], [" def f(): pass\n", "x"], ["def f(): pass", "y"]) == {"exact_match": 50.0}


def test_class_ids_strip_and_invalid():
    assert M.to_class_ids([" 1 ", "0", "yes"], BIN).tolist() == [1, 0, -1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"names": ["accuracy"], "predictions": ["1"], "references": ["1", "0"], "label_strings": BIN}, "predictions has 1"),
        ({"names": ["bleu"], "predictions": ["1"], "references": ["1"]}, "unknown metric"),
        ({"names": ["accuracy"], "predictions": ["1"], "references": ["7"], "label_strings": BIN}, "reference '7'"),
        ({"names": ["accuracy"], "predictions": ["1"], "references": ["1"]}, "need label_strings"),
        ({"names": ["multirc_em"], "predictions": ["1"], "references": ["1"], "label_strings": BIN}, "needs groups"),
        ({"names": ["squad_em"], "predictions": ["a"], "references": [[]]}, "empty answer list"),
    ],
)
def test_metric_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        M.compute_metrics(**kwargs)
