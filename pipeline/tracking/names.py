"""Names users read in the MLflow UI: metric keys grouped by prefix, short run names that stay distinct.

MLflow groups a run's charts by the part of a metric key before "/": `train/loss`, `train/lr_prompt`,
`val/accuracy`, `val/best`, `test/accuracy`, `perf/tokens_per_s`. Ray Tune takes the same values with
"_" instead of "/" (`val_accuracy`), since Tune reads "/" as nesting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import is_custom_task


def ray_key(key: str) -> str:
    """The name Ray Train / Tune report a metric under: "val/accuracy" -> "val_accuracy"."""
    return key.replace("/", "_")


def _short(value: Any) -> str:
    return f"{value:.2g}" if isinstance(value, float) else str(value)


def fit_run_name(method: str, m: int, r: int | None, task: str) -> str:
    """e.g. "adept m8 r45 · movie-sentiment" (the distinguishing part first: the UI truncates the end)."""
    task = Path(task).stem if is_custom_task(task) else task
    return f"{method} m{m}" + (f" r{r}" if r is not None else "") + f" · {task}"


def trial_run_name(index: int, params: dict[str, Any], r: int | None, sweep: str, m: int | None = None) -> str:
    """e.g. "t03 m8 r45 plr0.01 · adept-demo", or "t03 dept m8 r85 s1 plr0.03 · compare" when method/seed are searched."""
    parts = [f"t{index:02d}"]
    if "method" in params:
        parts.append(str(params["method"]))
    m = params.get("num_virtual_tokens", m)
    if m is not None:
        parts.append(f"m{m}")
    if r is not None:
        parts.append(f"r{r}")
    if "seed" in params:
        parts.append(f"s{params['seed']}")
    for key in ("prompt_lr", "offset_lr"):  # searched rates tell apart trials that differ only in them
        if key in params:
            parts.append(f"{key.split('_')[0][0]}lr{_short(params[key])}")
    return " ".join(parts) + f" · {sweep}"
