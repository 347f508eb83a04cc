"""The method comparison a sweep writes when its space holds `method` (and usually `seed`).

Per method: the configuration with the best mean validation score (over its seeds), and for it the mean ±
sd over seeds of the best validation score and of the test score of that best adapter, the trainable
parameters, and the median training step time. Trials stopped early have no test score: `n_test` says how
many seeds each test mean covers (use `scheduler: fifo` for a comparison, as configs/compare_methods.yaml).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def compare_methods(outcome) -> Any:
    """A pandas DataFrame, one row per method (best first), or None when the space has no `method`."""
    import pandas as pd

    prep = outcome.prepared
    searched = [k for d in prep.dims if d.kind != "constant" for k in d.keys]
    if "method" not in searched:
        return None
    metric, short = prep.metric, prep.metric.removeprefix("val_")
    primary = short if short in _test_keys(outcome) else next(iter(sorted(_test_keys(outcome))), short)
    others = [k for k in searched if k not in ("method", "seed")]
    groups: dict[tuple, list] = {}
    for row in outcome.rows:
        if row.score is None:
            continue
        config = tuple((k, row.params.get(k)) for k in others)
        groups.setdefault((row.params["method"], config), []).append(row)
    best: dict[str, tuple] = {}
    sign = 1 if prep.sweep.mode == "max" else -1
    for (method, config), rows in groups.items():
        mean = statistics.fmean(r.score for r in rows)
        if method not in best or sign * mean > sign * best[method][0]:
            best[method] = (mean, config, rows)
    table = []
    for method, (_, config, rows) in best.items():
        val = [r.score for r in rows]
        test = [r.test[primary] for r in rows if primary in r.test]
        steps = [r.step_s for r in rows if r.step_s is not None]
        table.append({"method": method, "config": ", ".join(f"{k}={v}" for k, v in config) or "-",
                      "seeds": len(rows), f"{metric}_mean": statistics.fmean(val), f"{metric}_sd": _sd(val),
                      "n_test": len(test), f"test_{primary}_mean": statistics.fmean(test) if test else None,
                      f"test_{primary}_sd": _sd(test), "trainable_params": rows[0].trainable_params,
                      "r": rows[0].r, "step_s": statistics.median(steps) if steps else None})
    frame = pd.DataFrame(table)
    return frame.sort_values(f"{metric}_mean", ascending=prep.sweep.mode != "max").reset_index(drop=True)


def format_comparison(frame, metric: str) -> list[str]:
    """The printed table: "adept  57,043  78.12 ± 1.20  70.31 ± 2.01 (3)  0.41 s"."""
    test_col = next(c for c in frame.columns if c.startswith("test_") and c.endswith("_mean"))
    seeds = sorted(set(frame["seeds"]))
    lines = [f"[adept] methods at equal budget (mean ± sd over {'/'.join(map(str, seeds))} seed(s); per method the "
             "configuration with the best mean validation score):"]
    header = ["method", "trainable", metric, test_col.removesuffix("_mean") + " (n)", "step", "config"]
    body = []
    for row in frame.to_dict("records"):
        test = (f"{row[test_col]:.2f} ± {_fmt_sd(row[test_col.replace('_mean', '_sd')])} ({row['n_test']})"
                if row[test_col] is not None and row[test_col] == row[test_col] else "-")
        step = f"{row['step_s']:.2f} s" if row["step_s"] is not None and row["step_s"] == row["step_s"] else "-"
        body.append([row["method"], f"{row['trainable_params']:,}",
                     f"{row[f'{metric}_mean']:.2f} ± {_fmt_sd(row[f'{metric}_sd'])}", test, step, row["config"]])
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    for cells in [header, *body]:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return lines


def plot_comparison(outcome, path: Path) -> Path | None:
    """Bars: mean best validation and test score per method, sd as error bars, each seed as a dot."""
    frame = getattr(outcome, "comparison", None)
    if frame is None or not len(frame):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = outcome.prepared.metric
    test_col = next(c for c in frame.columns if c.startswith("test_") and c.endswith("_mean"))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = range(len(frame))
    ax.bar([i - 0.2 for i in x], frame[f"{metric}_mean"], 0.4, yerr=frame[f"{metric}_sd"].fillna(0), capsize=4,
           label=f"best {metric}")
    ax.bar([i + 0.2 for i in x], frame[test_col].fillna(0), 0.4, yerr=frame[test_col.replace("_mean", "_sd")].fillna(0),
           capsize=4, label=test_col.removesuffix("_mean"))
    for i, method in enumerate(frame["method"]):
        scores = [r.score for r in outcome.rows if r.params.get("method") == method and r.score is not None]
        ax.scatter([i - 0.2] * len(scores), scores, color="black", s=10, zorder=3)
    ax.set_xticks(list(x), [f"{m}\n{p:,} params" for m, p in zip(frame["method"], frame["trainable_params"],
                                                                       strict=True)])
    ax.set_ylabel("score")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{outcome.prepared.name}: methods at equal budget")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _test_keys(outcome) -> set[str]:
    return {k for row in outcome.rows for k in row.test}


def _sd(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _fmt_sd(value) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"
