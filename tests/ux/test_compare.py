"""The method comparison: per method, the best configuration's mean ± sd over seeds, against the trials."""

import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.driver.tune.compare import compare_methods, format_comparison, plot_comparison
from pipeline.driver.tune.config import Dimension
from pipeline.driver.tune.report import TrialRow

pytestmark = pytest.mark.ux


def row(method, seed, lr, score, test, params, step_s=0.5):
    return TrialRow(f"t_{method}_{seed}_{lr}", "completed", {"method": method, "seed": seed, "prompt_lr": lr},
                    19 if method == "adept" else None, params, score, 20, 20, {"accuracy": test}, "run", None, None,
                    None, step_s)


def outcome(rows):
    dims = [Dimension("method", "grid", ("adept", "dept", "prompt")), Dimension("seed", "grid", (1, 2, 3)),
            Dimension("prompt_lr", "grid", (0.01, 0.1))]
    prep = SimpleNamespace(dims=dims, metric="val_accuracy", sweep=SimpleNamespace(mode="max"), name="cmp")
    return SimpleNamespace(prepared=prep, rows=rows, comparison=None)


def test_table_numbers_come_from_the_trials_it_summarises(tmp_path):
    rows = [row("adept", s, 0.01, v, t, 76051) for s, v, t in [(1, 80, 70), (2, 82, 72), (3, 84, 71)]]
    rows += [row("adept", s, 0.1, v, 60, 76051) for s, v in [(1, 50), (2, 52), (3, 51)]]  # worse lr: not reported
    rows += [row("prompt", s, 0.01, v, t, 76800, 0.7) for s, v, t in [(1, 70, 65), (2, 74, 66), (3, 72, 64)]]
    rows += [row("dept", 1, 0.01, 75, 70, 76800)]  # one seed only: no sd
    out = outcome(rows)
    table = compare_methods(out)
    assert list(table["method"]) == ["adept", "dept", "prompt"]  # best mean validation first
    adept = table.iloc[0]
    assert adept["config"] == "prompt_lr=0.01" and adept["seeds"] == 3 and adept["n_test"] == 3
    assert adept["val_accuracy_mean"] == pytest.approx(82.0) and adept["val_accuracy_sd"] == pytest.approx(2.0)
    assert adept["test_accuracy_mean"] == pytest.approx(71.0)
    assert adept["test_accuracy_sd"] == pytest.approx(statistics.stdev([70, 72, 71]))
    assert adept["trainable_params"] == 76051 and adept["step_s"] == pytest.approx(0.5)
    assert table.iloc[1]["val_accuracy_sd"] is None or table.iloc[1]["val_accuracy_sd"] != table.iloc[1]["val_accuracy_sd"]
    assert table.iloc[2]["step_s"] == pytest.approx(0.7)

    text = "\n".join(format_comparison(table, "val_accuracy"))
    assert "adept   76,051     82.00 ± 2.00" in text and "71.00 ± 1.00 (3)" in text and "dept" in text
    out.comparison = table
    png = plot_comparison(out, tmp_path / "m.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_method_at_its_own_rates():
    """A `together` space (method with its own learning rates) × seeds: per method its best rates, the rows
    flattened as the sweep flattens them."""
    rows = [row("adept", s, lr, v, 70, 76051) for s in (1, 2) for lr, v in [(0.01, 80 + s), (0.03, 60 + s)]]
    rows += [row("prompt", s, lr, v, 65, 76800) for s in (1, 2) for lr, v in [(0.01, 50 + s), (0.3, 70 + s)]]
    out = outcome(rows)
    out.prepared.dims = [Dimension("together", "grid", ({"method": "adept", "prompt_lr": 0.01},
                                                        {"method": "adept", "prompt_lr": 0.03},
                                                        {"method": "prompt", "prompt_lr": 0.01},
                                                        {"method": "prompt", "prompt_lr": 0.3})),
                         Dimension("seed", "grid", (1, 2))]
    table = compare_methods(out)
    assert list(table["method"]) == ["adept", "prompt"]
    assert list(table["config"]) == ["prompt_lr=0.01", "prompt_lr=0.3"]
    assert list(table["val_accuracy_mean"]) == [pytest.approx(81.5), pytest.approx(71.5)]


def test_no_table_without_a_method_dimension():
    out = outcome([row("adept", 1, 0.01, 80, 70, 1)])
    out.prepared.dims = [Dimension("prompt_lr", "grid", (0.01, 0.1))]
    assert compare_methods(out) is None
