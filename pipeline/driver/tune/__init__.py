"""Ray Tune sweeps: each trial is one Ray Train fit (the Ray V2 pattern), tracked as nested MLflow runs.

    base TrainConfig + SweepConfig --prepare_sweep--> (before Ray) --run_sweep--> Tuner
      trial driver (a Tune function):  TorchTrainer(train_loop_per_worker, TuneReportCallback)
                                       -> metrics reach Tune for ASHA; checkpoints stay Train's
      MLflow:  parent run per sweep  +  one child run per trial (`mlflow.parentRunId`)
      at the end: summary table + plot on the parent run, best trial's id/score as tags

Search space (`SweepConfig.space`, YAML): a `TrainConfig` key (or `m` for num_virtual_tokens) mapped to

    [4, 8, 16]                          choice (also {choice: [...]})
    {grid: [0.3, 0.4]}                  every value, × num_samples (not with search: optuna)
    {loguniform: [1.0e-3, 1.0e-1]}      {uniform: [lo, hi]}   {randint: [lo, hi]} (inclusive)
    0.3                                 a constant

Budget mode: with `budget` set in the base config (e.g. 100, i.e. 100·d trainable parameters), r is
derived from m in every trial (`adept.budget_rank`), so searching m explores the paper's m <-> r
trade-off at equal cost; r itself cannot then be in the space. With `method` in the space, prompt
tuning spends the whole budget on the prompt (m = budget), as the paper's PT baseline does.

Re-running a sweep name resumes it (`Tuner.restore`): finished trials are kept, unfinished and
crashed ones continue from their last Train checkpoint (Train run names are derived from trial ids).

Modules: `config` (SweepConfig, the embedded default, the space), `prepare` (checks before Ray),
`run` (trials on Ray, zero-shot baseline; imported only once a sweep starts: it imports Ray and torch),
`report` (MLflow summary, plot, closing text).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Loaded on first use (PEP 562): `config` is light, but `prepare` and `report` import the driver's launch module
# (torch, transformers), and a job reads its sweep config and refuses a typo before those imports.
_EXPORTS = {"DEFAULT_CONFIG": "config", "PAPER_GRID": "config", "Dimension": "config", "SweepConfig": "config",
            "load_sweep": "config", "parse_space": "config", "trial_config": "config", "PreparedSweep": "prepare",
            "prepare_sweep": "prepare", "SweepOutcome": "report", "TrialRow": "report", "format_report": "report",
            "plot_sweep": "report"}
__all__ = ["DEFAULT_CONFIG", "PAPER_GRID", "Dimension", "PreparedSweep", "SweepConfig", "SweepOutcome", "TrialRow",
           "format_report", "load_sweep", "parse_space", "plot_sweep", "prepare_sweep", "trial_config"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


if TYPE_CHECKING:  # for readers, type checkers and tests/house/test_wings.py (which reads imports, not runs them)
    from pipeline.driver.tune.config import (
        DEFAULT_CONFIG,
        PAPER_GRID,
        Dimension,
        SweepConfig,
        load_sweep,
        parse_space,
        trial_config,
    )
    from pipeline.driver.tune.prepare import PreparedSweep, prepare_sweep
    from pipeline.driver.tune.report import SweepOutcome, TrialRow, format_report, plot_sweep
