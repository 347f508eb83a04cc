"""Everything checked before Ray starts: the base config, every value of the space, a resumed sweep."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from pipeline.core.config import TrainConfig, inside
from pipeline.core.errors import UserError
from pipeline.core.resolve import ResolvedRun
from pipeline.driver.launch import check_sizes, prepare
from pipeline.driver.pack import SHARED
from pipeline.driver.tune.config import (
    ALIASES,
    MAX_CHECKED_COMBINATIONS,
    STATE_FILE,
    TOGETHER,
    Dimension,
    SweepConfig,
    parse_space,
    trial_config,
)
from pipeline.driver.tune.trust import check_resume
from pipeline.tracking import check_tracking_server


@dataclass
class PreparedSweep:
    """Everything the sweep needs, checked before Ray starts."""

    base: ResolvedRun
    sweep: SweepConfig
    name: str
    dims: list[Dimension]
    metric: str
    storage: Path  # Tune's experiment folder: <storage_path>/<name>
    trials_storage: Path  # Train runs of the trials: <storage>/trials/<name>-<trial id>
    resume: bool

    @property
    def param_space(self) -> dict[str, Any]:
        return {d.key: d.tune_domain() for d in self.dims}

    @property
    def artifact_root(self) -> Path:  # where a new MLflow experiment keeps artifacts (local stores)
        return Path(self.base.config.storage_path) / "mlflow-artifacts"

    @property
    def total_trials(self) -> int:
        """num_samples × every grid combination (points_to_evaluate count among the samples)."""
        return self.sweep.num_samples * math.prod(len(d.values) for d in self.dims if d.kind == "grid")

    @property
    def grace_period(self) -> int:
        return self.sweep.grace_period or self.base.config.eval_steps

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a sweep and its resumption."""
        base = {k: v for k, v in self.base.config.to_dict().items() if k not in ("mlflow_uri",)}
        sweep = {k: v for k, v in self.sweep.to_dict().items() if k not in ("max_concurrent_trials", "top_k")}
        return json.loads(json.dumps({"base": base, "sweep": sweep}, default=str))


def prepare_sweep(cfg: TrainConfig, sweep: SweepConfig, check_mlflow: bool = True,
                  trust_storage: bool = False) -> PreparedSweep:
    """Validate the base config, the space (every discrete value, range ends) and a resumed sweep's settings and
    files (`trust.check_resume`: Tune unpickles them; `trust_storage` skips their manifest, not their owners)."""
    dims = parse_space(sweep.space)
    if "r" in {k for d in dims for k in d.keys} and cfg.budget is not None:
        raise UserError(f"budget={cfg.budget} derives r from m in every trial, so r cannot be in the space; "
                        "remove r from the space, or set budget: null and give r.")
    if sweep.search == "optuna":
        if any(d.kind == "grid" for d in dims):
            raise UserError("search=optuna samples the space itself: use choice lists, not grid.")
        if any(d.key == TOGETHER for d in dims):
            raise UserError("search=optuna cannot sample `together` entries (its choices are plain values); use "
                            "search: random (grid or choice over the entries), or vary the keys on their own.")
        try:
            import optuna  # noqa: F401
        except ImportError as err:
            raise UserError("search=optuna needs the optuna package: pip install 'adept-ray[tune]'.") from err
    run = prepare(cfg, check_mlflow=False)
    base = run.config
    metrics = run.task.metrics
    metric = sweep.metric or f"val_{metrics[0]}"
    allowed = [f"val_{m}" for m in metrics]  # reported at every evaluation and in the final report
    if metric not in allowed:
        raise UserError(f"sweep metric={metric!r} is not reported by task {run.task_name!r}; use one of {allowed}.")
    if sweep.scheduler == "asha" and (sweep.grace_period or base.eval_steps) >= base.max_steps:
        raise UserError(f"grace_period={sweep.grace_period or base.eval_steps} >= max_steps={base.max_steps}: ASHA would "
                        "never decide before a trial ends; lower grace_period (or eval_steps), or use scheduler: fifo.")
    _check_combinations(base, dims, run)
    _check_points(base, dims, sweep.points_to_evaluate, run)

    name = sweep.name or f"sweep-{run.task_name}-{Path(base.backbone).name}".replace("/", "-")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    storage = Path(base.storage_path) / name
    inside(base.storage_path, storage, "sweep name")  # Tune's folder and the trials' runs stay in storage_path
    prepared = PreparedSweep(run, sweep, name, dims, metric, storage, storage / "trials", resume=False)
    inside(storage, prepared.trials_storage / f"{name}-00000", "sweep name")  # a trial's run (`trials` no symlink out)
    check_packable(prepared)
    state = storage / STATE_FILE
    if state.is_file():
        before, now = json.loads(state.read_text()), prepared.fingerprint()
        changed = _diff(before, now)
        if changed:
            raise UserError(f"sweep {name!r} already exists in {str(storage)!r} with other settings "
                            f"({'; '.join(changed[:6])}); re-run it unchanged to resume, or pick another name.")
        prepared.resume = True
    if check_resume(storage, name, trust_storage):  # Tune's state: checked even without our state file
        prepared.resume = True
    if check_mlflow:
        check_tracking_server(run.tracking_uri)
    return prepared


def check_packable(prep) -> None:
    """Refuse, before Ray starts, a packed sweep whose members could not share a batch."""
    if prep.sweep.pack == 1:
        return
    varied = sorted({ALIASES.get(k, k) for d in prep.dims for k in d.keys} & set(SHARED))
    if varied:
        raise UserError(f"sweep.pack: the members of a pack share one batch, so the space cannot vary {varied}; "
                        "take them out of the space, or set sweep.pack: 1.")
    if prep.base.config.offload:
        raise UserError("sweep.pack with offload: true: a pack's optimizer state is its adapters' (kilobytes, one "
                        "AdamW per member); set offload: false, or sweep.pack: 1.")


def _check_combinations(base: TrainConfig, dims: list[Dimension], run: ResolvedRun) -> None:
    """Build the TrainConfig (and r, in budget mode) of every discrete combination before any trial runs."""
    probes = [d.probe_values() for d in dims]
    total = math.prod(len(p) for p in probes) if probes else 1
    if total > MAX_CHECKED_COMBINATIONS:  # check each dimension alone against the base instead
        combos = [{d.key: v} for d, values in zip(dims, probes, strict=True) for v in values]
    else:
        combos = [dict(zip((d.key for d in dims), values, strict=True)) for values in product(*probes)]
    for params in combos:
        try:
            cfg = trial_config(base, params)
            run.with_config(cfg)  # r from the budget, the adapter's own checks
            check_sizes(cfg, run.info)  # m beyond the backbone's positions or this machine's memory
        except UserError as err:
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            raise UserError(f"sweep space point ({shown}) is invalid: {err}") from None


def _check_points(base: TrainConfig, dims: list[Dimension], points: list[dict], run: ResolvedRun) -> None:
    keys = {d.key for d in dims if d.kind != "constant"}
    if points and TOGETHER in keys:
        raise UserError("sweep points_to_evaluate with a `together` space: put the point among the `together` "
                        "entries instead (a grid over them tries each).")
    for point in points:
        canonical = {ALIASES.get(k, k): v for k, v in point.items()}
        if set(canonical) != keys:
            raise UserError(f"sweep points_to_evaluate entry {point} must set exactly the searched keys {sorted(keys)}.")
        try:
            run.with_config(trial_config(base, canonical))
        except UserError as err:
            raise UserError(f"sweep points_to_evaluate entry {point} is invalid: {err}") from None


def _diff(before: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
