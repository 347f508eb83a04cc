"""The sweep's outcome: one row per trial, MLflow statuses and summary, the plot, the closing text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.driver.tune.prepare import PreparedSweep


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | stopped (ASHA, or an interrupted sweep) | error
    params: dict[str, Any]
    r: int | None
    trainable_params: int
    score: float | None  # best value of the sweep metric over the trial's reports
    best_step: int | None
    last_step: int | None
    test: dict[str, float]
    run_name: str
    run_id: str | None
    adapter: str | None  # best_adapter folder of the trial's latest checkpoint
    error: str | None = None
    step_s: float | None = None  # median seconds per training step (its logged windows)

    def flat(self, metric: str) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "status": self.status, **self.params, "r": self.r,
                "trainable_params": self.trainable_params, metric: self.score, "best_step": self.best_step,
                "last_step": self.last_step, **{f"test_{k}": v for k, v in self.test.items()},
                "step_s": self.step_s, "mlflow_run_id": self.run_id, "adapter": self.adapter, "error": self.error}


@dataclass
class SweepOutcome:
    prepared: PreparedSweep
    rows: list[TrialRow]
    best: TrialRow | None
    zero_shot: dict[str, float] | None
    parent_run_id: str
    seconds: float
    plot: Path | None = None
    comparison: Any = None  # pandas DataFrame from pipeline.driver.tune.compare when the space holds `method`

    @property
    def ranked(self) -> list[TrialRow]:
        scored = [r for r in self.rows if r.score is not None]
        sign = -1 if self.prepared.sweep.mode == "max" else 1
        return sorted(scored, key=lambda r: sign * r.score) + [r for r in self.rows if r.score is None]


def summarise(prep: PreparedSweep, outcome: SweepOutcome) -> Path | None:
    """Summary table, plot, method comparison, best-trial tags and counts on the sweep's parent run; closes it."""
    import pandas as pd

    from pipeline.driver.tune.compare import compare_methods, plot_comparison
    from pipeline.tracking import FAILED, FINISHED, close_run, log_to_run

    uri, pid, metric = prep.base.tracking_uri, outcome.parent_run_id, prep.metric
    table = pd.DataFrame([r.flat(metric) for r in outcome.ranked])
    out = prep.storage / "summary"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    strings = table.astype({c: "string" for c in ("adapter", "error", "mlflow_run_id") if c in table})
    log_to_run(uri, pid, tables={"sweep/summary.json": strings}, files=[(out / "summary.csv", "sweep")])
    plot = plot_sweep(outcome, out / "sweep_plot.png")
    if plot is not None:
        log_to_run(uri, pid, files=[(plot, "sweep")])
    outcome.comparison = compare_methods(outcome)
    if outcome.comparison is not None:
        outcome.comparison.to_csv(out / "methods.csv", index=False)
        log_to_run(uri, pid, tables={"comparison/methods.json": outcome.comparison},
                   files=[(out / "methods.csv", "comparison")])
        comparison_plot = plot_comparison(outcome, out / "methods.png")
        if comparison_plot is not None:
            log_to_run(uri, pid, files=[(comparison_plot, "comparison")])
    counts = {s: sum(r.status == s for r in outcome.rows) for s in ("completed", "stopped", "error")}
    metrics = {"sweep/trials": len(outcome.rows), **{f"sweep/trials_{k}": v for k, v in counts.items()},
               "sweep/seconds": outcome.seconds}
    if outcome.best is not None:
        metrics[f"val/best_{metric.removeprefix('val_')}"] = outcome.best.score
    if outcome.zero_shot:
        metrics.update({f"zero_shot/{k}": v for k, v in outcome.zero_shot.items()})
    log_to_run(uri, pid, metrics=metrics)
    tags = {}
    if outcome.best is not None:
        b = outcome.best
        tags = {"best_trial_id": b.trial_id, "best_run_id": b.run_id or "", "best_score": f"{b.score:.6g}",
                "best_metric": metric, "best_adapter": b.adapter or ""}
    close_run(uri, pid, FINISHED if counts["completed"] + counts["stopped"] else FAILED, tags=tags,
              budget_s=prep.base.config.tracking_outage_s)
    return plot


def plot_sweep(outcome: SweepOutcome, path: Path) -> Path | None:
    """Validation metric against m, r and each learning rate (one panel each), zero-shot as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prep, metric = outcome.prepared, outcome.prepared.metric
    rows = [r for r in outcome.rows if r.score is not None]
    if not rows:
        return None
    cfg = prep.base.config
    axes_keys = [("num_virtual_tokens", "m (prompt length)", False), ("r", "r (FFN hidden size / rank)", False),
                 ("prompt_lr", "prompt lr", True), ("offset_lr", "offset lr", True)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), sharey=True)
    markers = {"completed": "o", "stopped": "x", "error": "s"}
    methods = sorted({r.params.get("method", cfg.method) for r in rows})
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for ax, (key, label, log_x) in zip(axes, axes_keys, strict=True):
        for status, marker in markers.items():
            for method in methods:
                pts = [(r.r if key == "r" else r.params.get(key, getattr(cfg, key)), r.score) for r in rows
                       if r.status == status and r.params.get("method", cfg.method) == method]
                pts = [(x, y) for x, y in pts if x is not None]
                if pts:
                    ax.scatter(*zip(*pts, strict=True), marker=marker, color=colors[method],
                               label=f"{method} {status}" if len(methods) > 1 else status)
        if outcome.zero_shot and metric.removeprefix("val_") in outcome.zero_shot:
            ax.axhline(outcome.zero_shot[metric.removeprefix("val_")], ls="--", color="grey", label="zero-shot")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"sweep {prep.name}: {metric} per trial (best over its evaluations)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- report
def format_report(outcome: SweepOutcome) -> str:
    """The job's closing text: best trials, where the adapters are, MLflow, the register command."""
    prep, metric = outcome.prepared, outcome.prepared.metric
    cfg = prep.base.config
    counts = {s: sum(r.status == s for r in outcome.rows) for s in ("completed", "stopped", "error")}
    lines = [f"[adept] sweep {prep.name!r}: {len(outcome.rows)} trials ({counts['completed']} completed, "
             f"{counts['stopped']} stopped early, {counts['error']} errored) in {outcome.seconds:.0f} s"]
    keys = [k for d in prep.dims if d.kind != "constant" for k in d.keys if k != "r"]  # r has its own column
    header = ["#", "trial", "status", *keys, "r", metric, "step"]
    body = []
    ranked = outcome.ranked
    shown = ranked[:prep.sweep.top_k] + [r for r in ranked[prep.sweep.top_k:] if r.status == "error"]
    for i, row in enumerate(shown, 1):
        body.append([str(i), row.trial_id, row.status, *(_fmt(row.params.get(k)) for k in keys), _fmt(row.r),
                     _fmt(row.score), _fmt(row.best_step)])
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    for cells in [header, *body]:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    for row in outcome.rows:
        if row.error:
            lines.append(f"  trial {row.trial_id} failed: {row.error}")
    short = metric.removeprefix("val_")
    if outcome.zero_shot and short in outcome.zero_shot:
        zs = outcome.zero_shot[short]
        gain = f" ({outcome.best.score - zs:+.1f} over zero-shot)" if outcome.best else ""
        rows = f"the first {cfg.max_eval_examples}" if cfg.max_eval_examples else "all"
        lines.append(f"[adept] zero-shot {metric} (the backbone alone, on {rows} validation rows the trials use, "
                     f"{cfg.eval_mode} evaluation): {zs:.2f}")
        if outcome.best:
            lines.append(f"[adept] best {metric}: {outcome.best.score:.2f}{gain}")
    if outcome.comparison is not None:
        from pipeline.driver.tune.compare import format_comparison

        lines += format_comparison(outcome.comparison, metric)
    if outcome.best is not None:
        lines.append(f"[adept] best adapter: {outcome.best.adapter}")
    where = "step_*/best_adapter" if prep.sweep.pack == 1 else "step_*/members/<k>/best_adapter"  # a pack's k-th
    lines.append(f"[adept] adapters of all trials: {prep.trials_storage}/<sweep>-<trial>/{where}")
    if outcome.plot:
        lines.append(f"[adept] plot: {outcome.plot}")
    uri = prep.base.tracking_uri
    lines.append(f"[adept] MLflow: {uri} (experiment {cfg.experiment!r}, parent run {prep.name!r}, id "
                 f"{outcome.parent_run_id})")
    if uri.startswith(("http://", "https://")):
        lines.append(f"[adept] MLflow UI: {uri}")
    else:
        lines.append(f"[adept] MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    if outcome.best is not None:
        lines.append(f"[adept] register the best adapter: python jobs/register_best.py --sweep {prep.name} "
                     f"--mlflow-uri {uri}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.1 else f"{value:.2f}"
    return str(value)
