"""Ray Tune sweeps: each trial is one Ray Train fit (the Ray V2 pattern), tracked as nested MLflow runs.

    base TrainConfig + SweepConfig --validate_sweep--> (before Ray) --run_sweep--> Tuner
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
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import TrainConfig, apply_driver_env, driver_env
from pipeline.launch import PreparedRun, adapter_size

ALIASES = {"m": "num_virtual_tokens", "ffn_hidden_size": "r", "rank": "r"}
# Keys a trial may not change: they select the model/data/resources every trial shares or name the run.
FIXED_KEYS = ("task", "backbone", "dtype", "trust_remote_code", "num_workers", "use_gpu", "name", "storage_path",
              "mlflow_uri", "experiment", "eval_mode", "max_eval_examples")
DISTRIBUTIONS = ("choice", "grid", "loguniform", "uniform", "randint")
SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("random", "optuna")
STATE_FILE = "adept_sweep.json"  # the sweep's settings, beside Tune's state: a re-run must match them
ZERO_SHOT_FILE = "zero_shot.json"
SWEEP_TAG = "adept.sweep"
MAX_CHECKED_COMBINATIONS = 512


@dataclass
class SweepConfig:
    """How to search; the `sweep:` section of a config YAML (everything else is the base `TrainConfig`)."""

    name: str | None = None  # Tune experiment name; re-running it resumes. Default: sweep-<task>-<backbone>
    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 4  # samples of the space (× every grid combination)
    metric: str | None = None  # default: val_<the task's primary metric>, e.g. val_accuracy
    mode: str = "max"
    scheduler: str = "asha"  # asha: stop weak trials at rungs of grace_period · reduction_factor^k steps
    grace_period: int | None = None  # training steps before ASHA may stop a trial; default: eval_steps
    reduction_factor: float = 2.0
    search: str = "random"  # random (Tune's variant generator) | optuna (TPE; pip install optuna)
    seed: int | None = None  # of the search algorithm
    max_concurrent_trials: int | None = None  # default: what the cluster's CPUs / GPUs hold at once
    cpus_per_worker: int | None = None  # CPU trials: threads per Train worker (default: all a trial can get)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)  # tried first, e.g. a known-good point
    max_failures: int = 1  # Tune-level retries of a crashed trial (Train's own retries: max_failures)
    zero_shot: bool = False  # also score the backbone alone on the same validation rows
    top_k: int = 5  # rows of the printed best-trials table

    def __post_init__(self) -> None:
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", str(self.name)):
            raise ValueError(f"sweep name={self.name!r}: use letters, digits, '.', '_' and '-' only.")
        if not isinstance(self.space, dict):
            raise ValueError(f"sweep space must be a mapping of config keys to values, got {self.space!r}.")
        for key, value in (("num_samples", self.num_samples), ("top_k", self.top_k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"sweep {key}={value!r} must be an integer >= 1.")
        if self.mode not in ("max", "min"):
            raise ValueError(f"sweep mode={self.mode!r}: use max or min.")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sweep scheduler={self.scheduler!r}: use one of {SCHEDULERS}.")
        if self.search not in SEARCHERS:
            raise ValueError(f"sweep search={self.search!r}: use one of {SEARCHERS}.")
        if not self.reduction_factor > 1:
            raise ValueError(f"sweep reduction_factor={self.reduction_factor!r} must be > 1.")
        if self.grace_period is not None and (not isinstance(self.grace_period, int) or self.grace_period < 1):
            raise ValueError(f"sweep grace_period={self.grace_period!r} must be an integer >= 1 (training steps).")
        if self.max_concurrent_trials is not None and (not isinstance(self.max_concurrent_trials, int)
                                                       or self.max_concurrent_trials < 1):
            raise ValueError(f"sweep max_concurrent_trials={self.max_concurrent_trials!r} must be an integer >= 1.")
        if self.cpus_per_worker is not None and (not isinstance(self.cpus_per_worker, int) or self.cpus_per_worker < 1):
            raise ValueError(f"sweep cpus_per_worker={self.cpus_per_worker!r} must be an integer >= 1.")
        if not isinstance(self.points_to_evaluate, list) or not all(isinstance(p, dict) for p in self.points_to_evaluate):
            raise ValueError(f"sweep points_to_evaluate must be a list of mappings, got {self.points_to_evaluate!r}.")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError(f"sweep max_failures={self.max_failures!r} must be an integer >= 0.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SweepConfig:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sweep key(s) {unknown}; known: {sorted(known)} (see pipeline/tune.py).")
        for key in ("reduction_factor",):
            if isinstance(data.get(key), int | str) and not isinstance(data.get(key), bool):
                data[key] = float(data[key])
        return cls(**data)


# The embedded default (`python jobs/tune_adept.py` with no arguments, `make demo`): the real
# SmolLM2-135M-Instruct on the offline movie-review task, sized for ~15 minutes on 2 CPU cores: two
# single-threaded trials side by side, 60 steps of 8 reviews each, validation on 64 reviews every 20 steps,
# ASHA stopping the weaker trials at 20 / 40 steps. Learning rates fit SmolLM2's small embeddings
# (std 0.14; the paper's 0.3 / 1e-4 are for T5's large ones): higher rates collapse to one label.
DEFAULT_BASE: dict[str, Any] = {
    "method": "adept", "task": "movie-sentiment", "backbone": "smollm2-135m",
    "num_virtual_tokens": 8, "budget": 100, "prompt_init_text": "Is this movie review positive or negative?",
    "prompt_lr": 1.0e-2, "offset_lr": 3.0e-4, "warmup_steps": 5,
    "max_steps": 60, "eval_steps": 20, "log_steps": 10, "batch_size": 8,
    "max_source_length": 40, "max_target_length": 4, "max_train_examples": 2000, "max_eval_examples": 64,
    "eval_mode": "rank", "eval_batch_size": 32,
    "num_workers": 1, "deepspeed": False, "precision": "fp32", "num_checkpoints_to_keep": 1,
    "storage_path": "ray_results", "experiment": "adept-demo",
}
DEFAULT_SWEEP: dict[str, Any] = {
    "name": "adept-demo",
    "space": {"num_virtual_tokens": [4, 8, 16], "prompt_lr": {"loguniform": [5.0e-3, 3.0e-2]},
              "offset_lr": {"loguniform": [1.0e-4, 1.0e-3]}},
    "points_to_evaluate": [{"num_virtual_tokens": 8, "prompt_lr": 1.0e-2, "offset_lr": 3.0e-4}],
    "num_samples": 4, "scheduler": "asha", "grace_period": 20, "reduction_factor": 2, "seed": 0,
    "max_concurrent_trials": 2, "cpus_per_worker": 1, "zero_shot": True,
}
# A config YAML without a `sweep:` section gets the paper's learning-rate grid (DePT README / ADePT).
PAPER_SPACE: dict[str, Any] = {"prompt_lr": {"grid": [0.3, 0.4]}, "offset_lr": {"grid": [1.0e-4, 5.0e-4, 1.0e-3, 5.0e-3]}}


# ---------------------------------------------------------------------------------------------- loading
def load_sweep(path: str | Path | None = None, overrides: list[str] | None = None,
               sweep_overrides: list[str] | None = None) -> tuple[TrainConfig, SweepConfig]:
    """A config YAML (TrainConfig keys + a `sweep:` section) plus `key=value` overrides of either part.

    No path: the embedded default. `sweep_overrides` take `space.<key>=<yaml>` for the space.
    """
    if path is None:
        base, sweep = dict(DEFAULT_BASE), json.loads(json.dumps(DEFAULT_SWEEP))
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of keys to values.")
        sweep = data.pop("sweep", None)
        if sweep is None:
            sweep = {"space": PAPER_SPACE, "num_samples": 1}
        if not isinstance(sweep, dict):
            raise ValueError(f"{str(path)!r}: the sweep section must be a mapping, got {sweep!r}.")
        base = data
    for item in overrides or []:
        key, value = _split_override(item)
        base[key] = value
    for item in sweep_overrides or []:
        key, value = _split_override(item)
        if key.startswith("space."):
            sweep.setdefault("space", {})
            sweep["space"] = {**(sweep["space"] or {}), key.removeprefix("space."): value}
        else:
            sweep[key] = value
    return TrainConfig.from_dict(base), SweepConfig.from_dict(sweep)


def _split_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {item!r} is not of the form key=value.")
    return key.strip(), yaml.safe_load(value)


# ---------------------------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Dimension:
    key: str  # TrainConfig field
    kind: str  # constant | choice | grid | loguniform | uniform | randint
    values: tuple  # constant: (v,); choice/grid: the values; ranges: (lo, hi)

    def tune_domain(self):
        from ray import tune

        if self.kind == "constant":
            return self.values[0]
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "loguniform":
            return tune.loguniform(*self.values)
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        return tune.randint(self.values[0], self.values[1] + 1)  # inclusive upper bound

    def probe_values(self) -> list:
        """Values that validation tries: every discrete value, a range's ends (every integer if few)."""
        if self.kind == "randint":
            lo, hi = self.values
            return list(range(lo, hi + 1)) if hi - lo <= 64 else [lo, hi]
        return list(self.values)


def parse_space(space: dict[str, Any]) -> list[Dimension]:
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    dims, seen = [], set()
    for raw_key, spec in space.items():
        key = ALIASES.get(raw_key, raw_key)
        if key not in fields:
            hint = [k for k in fields if k.startswith(key[:3])][:3]
            raise ValueError(f"sweep space key {raw_key!r} is not a TrainConfig field (similar: {hint}).")
        if key in FIXED_KEYS:
            raise ValueError(f"sweep space key {raw_key!r} cannot vary between trials: set it in the base config.")
        if key in seen:
            raise ValueError(f"sweep space sets {key!r} twice (directly and through an alias).")
        seen.add(key)
        dims.append(_dimension(key, spec, fields[key]))
    return dims


def _dimension(key: str, spec: Any, annotation: str) -> Dimension:
    where = f"sweep space {key!r}"
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        return Dimension(key, "constant", (spec,))
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ValueError(f"{where}: {spec!r} is not one of a list, a constant or {{kind: values}} with kind in "
                         f"{DISTRIBUTIONS}.")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: {kind} needs a non-empty list, got {values!r}.")
    if kind in ("choice", "grid"):
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"{where}: {kind} values {values} repeat.")
        return Dimension(key, kind, tuple(values))
    if len(values) != 2:
        raise ValueError(f"{where}: {kind} takes [low, high], got {values!r}.")
    try:
        lo, hi = (int(v) for v in values) if kind == "randint" else (float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {kind} bounds {values!r} must be numbers.") from err
    if kind == "randint" and not annotation.startswith("int"):
        raise ValueError(f"{where}: randint is for integer keys; {key} is {annotation}.")
    if kind != "randint" and annotation.startswith("int"):
        raise ValueError(f"{where}: {kind} gives floats, but {key} is an integer; use randint or a list.")
    if not lo < hi:
        raise ValueError(f"{where}: {kind} needs low < high, got {values!r}.")
    if kind == "loguniform" and lo <= 0:
        raise ValueError(f"{where}: loguniform needs low > 0, got {values!r}.")
    return Dimension(key, kind, (lo, hi))


def trial_config(base: TrainConfig, params: dict[str, Any], name: str | None = None,
                 storage_path: str | None = None) -> TrainConfig:
    """The TrainConfig of one trial: the base with the sampled values (validated like any config)."""
    data = base.to_dict()
    data.update({ALIASES.get(k, k): v for k, v in params.items()})
    if data["method"] == "prompt":  # prompt tuning has no r: with a budget, the prompt is the whole budget
        if data.get("budget") is not None:
            data["num_virtual_tokens"] = data["budget"]
        data["r"] = data["budget"] = None
    elif data.get("r") is None and data.get("budget") is None:
        raise ValueError(f"method={data['method']!r} needs r or budget; set one in the base config or the space.")
    if name is not None:
        data["name"] = name
    if storage_path is not None:
        data["storage_path"] = storage_path
    return TrainConfig.from_dict(data)


# ---------------------------------------------------------------------------------------------- validation
@dataclass
class PreparedSweep:
    """Everything the sweep needs, checked before Ray starts."""

    base: PreparedRun
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
    def grace_period(self) -> int:
        return self.sweep.grace_period or self.base.config.eval_steps

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a sweep and its resumption."""
        base = {k: v for k, v in self.base.config.to_dict().items() if k not in ("mlflow_uri",)}
        sweep = {k: v for k, v in self.sweep.to_dict().items() if k not in ("max_concurrent_trials", "top_k")}
        return json.loads(json.dumps({"base": base, "sweep": sweep}, default=str))


def prepare_sweep(cfg: TrainConfig, sweep: SweepConfig, check_mlflow: bool = True) -> PreparedSweep:
    """Validate the base config, the space (every discrete value, range ends) and a resumed sweep's settings."""
    from pipeline.launch import prepare
    from pipeline.tasks import get_task
    from pipeline.tracking import check_tracking_server

    dims = parse_space(sweep.space)
    if "r" in {d.key for d in dims} and cfg.budget is not None:
        raise ValueError(f"budget={cfg.budget} derives r from m in every trial, so r cannot be in the space; "
                         "remove r from the space, or set budget: null and give r.")
    if sweep.search == "optuna":
        if any(d.kind == "grid" for d in dims):
            raise ValueError("search=optuna samples the space itself: use choice lists, not grid.")
        try:
            import optuna  # noqa: F401
        except ImportError as err:
            raise ValueError("search=optuna needs the optuna package: pip install 'adept-ray[tune]'.") from err
    run = prepare(cfg, check_mlflow=False)
    base = run.config
    task = get_task(run.task_name) if run.task_name and not base.task.endswith((".yaml", ".yml")) else None
    metrics = task.metrics if task is not None else _task_metrics(base)
    metric = sweep.metric or f"val_{metrics[0]}"
    allowed = [f"val_{m}" for m in metrics]  # reported at every evaluation and in the final report
    if metric not in allowed:
        raise ValueError(f"sweep metric={metric!r} is not reported by task {run.task_name!r}; use one of {allowed}.")
    if sweep.scheduler == "asha" and (sweep.grace_period or base.eval_steps) >= base.max_steps:
        raise ValueError(f"grace_period={sweep.grace_period or base.eval_steps} >= max_steps={base.max_steps}: ASHA would "
                         "never decide before a trial ends; lower grace_period (or eval_steps), or use scheduler: fifo.")
    _check_combinations(base, dims, run)
    _check_points(base, dims, sweep.points_to_evaluate, run)

    name = sweep.name or f"sweep-{run.task_name}-{Path(base.backbone).name}".replace("/", "-")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    storage = Path(base.storage_path) / name
    prepared = PreparedSweep(run, sweep, name, dims, metric, storage, storage / "trials", resume=False)
    state = storage / STATE_FILE
    if state.is_file():
        before, now = json.loads(state.read_text()), prepared.fingerprint()
        changed = _diff(before, now)
        if changed:
            raise ValueError(f"sweep {name!r} already exists in {str(storage)!r} with other settings "
                             f"({'; '.join(changed[:6])}); re-run it unchanged to resume, or pick another name.")
        prepared.resume = True
    if check_mlflow:
        check_tracking_server(run.tracking_uri)
    return prepared


def _task_metrics(cfg: TrainConfig) -> tuple[str, ...]:
    from pipeline.setup import resolve_task

    return resolve_task(cfg).metrics


def _check_combinations(base: TrainConfig, dims: list[Dimension], run: PreparedRun) -> None:
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
            adapter_size(cfg, run.hidden_size, run.kind)
        except (ValueError, TypeError) as err:
            shown = ", ".join(f"{k}={v}" for k, v in params.items())
            raise ValueError(f"sweep space point ({shown}) is invalid: {err}") from None


def _check_points(base: TrainConfig, dims: list[Dimension], points: list[dict], run: PreparedRun) -> None:
    keys = {d.key for d in dims if d.kind != "constant"}
    for point in points:
        canonical = {ALIASES.get(k, k): v for k, v in point.items()}
        if set(canonical) != keys:
            raise ValueError(f"sweep points_to_evaluate entry {point} must set exactly the searched keys {sorted(keys)}.")
        try:
            adapter_size(trial_config(base, canonical), run.hidden_size, run.kind)
        except (ValueError, TypeError) as err:
            raise ValueError(f"sweep points_to_evaluate entry {point} is invalid: {err}") from None


def _diff(before: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------------------------------------- running
def trial_resources(run: PreparedRun, worker_cpus: int | None = None) -> tuple[dict[str, float], int]:
    """(resources of one trial's driver, how many trials the cluster holds at once)."""
    import ray

    from pipeline.launch import cpus_per_worker

    cfg = run.config
    total = ray.cluster_resources()
    cpus = cfg.num_workers * (worker_cpus or cpus_per_worker(cfg)) + 1  # the workers + the trial's driver
    fits = int(total.get("CPU", 1) // cpus)
    if cfg.use_gpu:
        fits = min(fits, int(total.get("GPU", 0) // cfg.num_workers))
    return {"CPU": 1}, max(1, fits)


def _trial_driver(params: dict, *, base: dict, sweep: str, trials_storage: str, parent_run_id: str,
                  artifact_root: str, worker_cpus: int | None, hidden_size: int, kind: str, tracking_uri: str,
                  backbone_ref: str, task_name: str, env: dict[str, str]) -> None:
    """One Tune trial = one Ray Train fit, logged into a child MLflow run of the sweep's run."""
    apply_driver_env(env)  # the job's ADEPT_* settings, whenever and wherever the cluster started
    from ray import tune

    from pipeline.launch import make_trainer, mlflow_params_and_tags
    from pipeline.tracking import finish_run, start_or_resume_run

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(TrainConfig.from_dict(base), params, name=f"{sweep}-{trial_id}", storage_path=trials_storage)
    r, n_params = adapter_size(cfg, hidden_size, kind)
    run = PreparedRun(cfg, r, hidden_size, kind, n_params, tracking_uri, backbone_ref, task_name)
    mlflow_params, tags = mlflow_params_and_tags(run)
    tags.update({SWEEP_TAG: sweep, "ray.trial_id": trial_id, "adept.kind": "trial"})
    run_id = start_or_resume_run(tracking_uri, cfg.experiment, cfg.run_name, mlflow_params, tags,
                                 Path(artifact_root), parent_run_id=parent_run_id)
    ok = False
    try:  # fit() raises when the run fails (after Train's own max_failures); Tune then retries the trial
        make_trainer(run, run_id, callbacks=[_report_callback()], worker_cpus=worker_cpus).fit()
        ok = True
    finally:  # Tune may stop this driver first (final result received, ASHA): the summary fixes the status
        finish_run(tracking_uri, run_id, ok)


def _report_callback():
    """Tune's TuneReportCallback without the final report's `done` key.

    `done` is reserved by Tune: a result holding it ends the trial at once, stopping this driver while
    fit() still shuts Train down, and a Train controller stopped that way leaves its workers' CPUs/GPUs
    reserved until Ray's placement-group cleaner notices. Without it the trial ends when fit() returns.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class _TrialReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            metrics = [{k: v for k, v in m.items() if k != "done"} for m in metrics]
            super().after_report(run_context, metrics, checkpoint)

    return _TrialReport()


def local_cpus(prep: PreparedSweep) -> int:
    """Logical CPUs of a local cluster: the machine's for the workers, plus one per concurrent trial driver
    (a driver holds a CPU but computes nothing)."""
    machine, sweep, workers = os.cpu_count() or 1, prep.sweep, prep.base.config.num_workers
    if sweep.cpus_per_worker and sweep.max_concurrent_trials:
        concurrent = sweep.max_concurrent_trials
        return max(machine, concurrent * workers * sweep.cpus_per_worker) + concurrent
    return max(machine, workers) + 1


def _trial_dirname(trial) -> str:
    return trial.trial_id


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

    def flat(self, metric: str) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "status": self.status, **self.params, "r": self.r,
                "trainable_params": self.trainable_params, metric: self.score, "best_step": self.best_step,
                "last_step": self.last_step, **{f"test_{k}": v for k, v in self.test.items()},
                "mlflow_run_id": self.run_id, "adapter": self.adapter, "error": self.error}


@dataclass
class SweepOutcome:
    prepared: PreparedSweep
    rows: list[TrialRow]
    best: TrialRow | None
    zero_shot: dict[str, float] | None
    parent_run_id: str
    seconds: float
    plot: Path | None = None

    @property
    def ranked(self) -> list[TrialRow]:
        scored = [r for r in self.rows if r.score is not None]
        sign = -1 if self.prepared.sweep.mode == "max" else 1
        return sorted(scored, key=lambda r: sign * r.score) + [r for r in self.rows if r.score is None]


def run_sweep(prep: PreparedSweep, log=print) -> SweepOutcome:
    """Start (or resume) the sweep on the Ray cluster and summarise it in MLflow."""
    from ray import tune

    from pipeline.launch import init_ray, mlflow_params_and_tags
    from pipeline.tracking import start_or_resume_run

    t0 = time.time()
    run, cfg, sweep = prep.base, prep.base.config, prep.sweep
    init_ray(cfg.num_workers, num_cpus=local_cpus(prep))
    prep.storage.mkdir(parents=True, exist_ok=True)
    (prep.storage / STATE_FILE).write_text(json.dumps(prep.fingerprint(), indent=1))

    params, tags = mlflow_params_and_tags(run)
    params.update({f"sweep.{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in sweep.to_dict().items()})
    params["sweep.metric_resolved"] = prep.metric
    tags.update({SWEEP_TAG: prep.name, "adept.kind": "sweep", "metric": prep.metric})
    parent = start_or_resume_run(run.tracking_uri, cfg.experiment, prep.name, params, tags, prep.artifact_root)
    zero = zero_shot(prep, log) if sweep.zero_shot else None

    resources, fits = trial_resources(run, sweep.cpus_per_worker)
    concurrent = sweep.max_concurrent_trials or fits
    trainable = tune.with_resources(tune.with_parameters(
        _trial_driver, base=cfg.to_dict(), sweep=prep.name, trials_storage=str(prep.trials_storage),
        parent_run_id=parent, artifact_root=str(prep.artifact_root), worker_cpus=sweep.cpus_per_worker,
        hidden_size=run.hidden_size, kind=run.kind, tracking_uri=run.tracking_uri,
        backbone_ref=run.backbone_ref or cfg.backbone, task_name=run.task_name or "",
        env=driver_env()), resources)
    path = str(prep.storage)
    if tune.Tuner.can_restore(path):
        log(f"[adept] resuming sweep {prep.name!r} from {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler, search = scheduler_and_search(prep, concurrent)
        log(f"[adept] sweep {prep.name!r}: {sweep.num_samples} sample(s) of {_describe(prep.dims)}; "
            f"{sweep.scheduler} on {prep.metric} ({sweep.mode}); {concurrent} trial(s) at a time, "
            f"each {cfg.num_workers} worker(s)")
        tuner = tune.Tuner(
            trainable, param_space=prep.param_space,
            tune_config=tune.TuneConfig(metric=prep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                        # the variant generator caps itself; Tune limits a Searcher (Optuna)
                                        max_concurrent_trials=concurrent if sweep.search == "optuna" else None,
                                        scheduler=scheduler, search_alg=search, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=prep.name, storage_path=str(Path(cfg.storage_path)),
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
        )
    grid = tuner.fit()
    rows = [_trial_row(prep, res) for res in grid]
    outcome = SweepOutcome(prep, rows, None, zero, parent, time.time() - t0)
    ranked = [r for r in outcome.ranked if r.score is not None]
    outcome.best = ranked[0] if ranked else None
    _fix_child_runs(prep, outcome)
    outcome.plot = _summarise(prep, outcome)
    return outcome


def scheduler_and_search(prep: PreparedSweep, concurrent: int):
    """Tune's trial scheduler (ASHA or FIFO) and search algorithm (random/grid variants or Optuna TPE)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    sweep = prep.sweep
    points = [{ALIASES.get(k, k): v for k, v in p.items()} for p in sweep.points_to_evaluate]
    # ASHA decides only at its rungs, grace_period · reduction_factor^k steps < max_steps; a trial it keeps
    # is never stopped at max_t (stop_last_trials=False): it reaches its final (test) report and ends itself.
    scheduler = (ASHAScheduler(time_attr="step", max_t=prep.base.config.max_steps - 1, grace_period=prep.grace_period,
                               reduction_factor=sweep.reduction_factor, stop_last_trials=False)
                 if sweep.scheduler == "asha" else FIFOScheduler())
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return scheduler, OptunaSearch(seed=sweep.seed, points_to_evaluate=points or None)
    return scheduler, BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrent,
                                            points_to_evaluate=points or None)


def _describe(dims: list[Dimension]) -> str:
    parts = []
    for d in dims:
        v = d.values
        parts.append(f"{d.key}={v[0]}" if d.kind == "constant" else
                     f"{d.key}~{d.kind}{list(v)}" if d.kind in ("choice", "grid") else f"{d.key}~{d.kind}[{v[0]:g}, {v[1]:g}]")
    return ", ".join(parts) or "the base config"


def _trial_row(prep: PreparedSweep, res) -> TrialRow:
    import pandas as pd
    from mlflow import MlflowClient

    from pipeline.tracking import find_run, get_or_create_experiment

    cfg = prep.base.config
    trial_id = Path(res.path).name
    df = res.metrics_dataframe
    params = {k: res.config[k] for k in (d.key for d in prep.dims) if k in (res.config or {})}
    trial_cfg = trial_config(cfg, params)
    r, n_params = adapter_size(trial_cfg, prep.base.hidden_size, prep.base.kind)
    score = best_step = last_step = adapter = None
    test: dict[str, float] = {}
    if df is not None and len(df) and prep.metric in df:
        values = df[prep.metric].dropna()
        if len(values):
            best_index = values.idxmax() if prep.sweep.mode == "max" else values.idxmin()
            score = float(values[best_index])
            step = df.loc[best_index, "best_step"] if "best_step" in df else None
            best_step = int(step) if step is not None and not pd.isna(step) else None
        last = df.iloc[-1]
        last_step = int(last["step"]) if "step" in df else None
        test = {k.removeprefix("test_"): float(last[k]) for k in df.columns
                if k.startswith("test_") and last[k] == last[k]}
        if "checkpoint_path" in df:
            paths = df["checkpoint_path"].dropna()
            if len(paths) and (Path(paths.iloc[-1]) / "best_adapter").is_dir():
                adapter = str(Path(paths.iloc[-1]) / "best_adapter")
    if res.error is not None:
        status = "error"
    elif test:
        status = "completed"
    else:
        status = "stopped"
    run_name = f"{prep.name}-{trial_id}"
    client = MlflowClient(prep.base.tracking_uri)
    found = find_run(client, get_or_create_experiment(prep.base.tracking_uri, cfg.experiment, prep.artifact_root),
                     run_name)
    error = None
    if res.error is not None:
        error = (str(res.error).strip().splitlines() or [type(res.error).__name__])[-1][:300]
    return TrialRow(trial_id, status, params, r, n_params, score, best_step, last_step, test, run_name,
                    found.info.run_id if found else None, adapter, error)


RUN_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "error": "FAILED"}


def _fix_child_runs(prep: PreparedSweep, outcome: SweepOutcome) -> None:
    """Give every trial's run the status Tune decided, and the adapters of trials stopped early.

    Tune stops a trial's driver as soon as it has the final result (and ASHA stops weak trials at a
    rung), so a driver cannot be relied on to close its own run.
    """
    from mlflow import MlflowClient

    client = MlflowClient(prep.base.tracking_uri)
    for row in outcome.rows:
        if row.run_id is None:
            continue
        client.set_tag(row.run_id, "adept.trial_status", row.status)
        if row.score is not None:
            client.set_tag(row.run_id, "adept.score", f"{row.score:.6g}")
        if row.status == "stopped" and row.adapter and not client.list_artifacts(row.run_id, "best_adapter"):
            client.log_artifacts(row.run_id, row.adapter, "best_adapter")
        if client.get_run(row.run_id).info.status != RUN_STATUS[row.status]:
            client.set_terminated(row.run_id, status=RUN_STATUS[row.status])


def _summarise(prep: PreparedSweep, outcome: SweepOutcome) -> Path | None:
    """Summary table, plot, best-trial tags and counts on the sweep's parent run."""
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(prep.base.tracking_uri)
    pid, metric = outcome.parent_run_id, prep.metric
    table = pd.DataFrame([r.flat(metric) for r in outcome.ranked])
    out = prep.storage / "summary"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "summary.csv", index=False)
    client.log_table(pid, data=table.astype({c: "string" for c in ("adapter", "error", "mlflow_run_id")
                                             if c in table}), artifact_file="sweep/summary.json")
    client.log_artifact(pid, str(out / "summary.csv"), "sweep")
    plot = plot_sweep(outcome, out / "sweep_plot.png")
    if plot is not None:
        client.log_artifact(pid, str(plot), "sweep")
    counts = {s: sum(r.status == s for r in outcome.rows) for s in ("completed", "stopped", "error")}
    metrics = {"trials": len(outcome.rows), **{f"trials_{k}": v for k, v in counts.items()},
               "sweep_seconds": outcome.seconds}
    if outcome.best is not None:
        metrics[f"best_{metric}"] = outcome.best.score
    if outcome.zero_shot:
        metrics.update({f"zero_shot_{k}": v for k, v in outcome.zero_shot.items()})
    for k, v in metrics.items():
        client.log_metric(pid, k, float(v))
    if outcome.best is not None:
        b = outcome.best
        for key, value in {"best_trial_id": b.trial_id, "best_run_id": b.run_id or "", "best_score": f"{b.score:.6g}",
                           "best_metric": metric, "best_adapter": b.adapter or ""}.items():
            client.set_tag(pid, key, value)
    client.set_terminated(pid, status="FINISHED" if counts["completed"] + counts["stopped"] else "FAILED")
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


# ---------------------------------------------------------------------------------------------- zero-shot
def zero_shot(prep: PreparedSweep, log=print) -> dict[str, float]:
    """The backbone alone (no adapter) on the sweep's validation rows, evaluated as the trials are.

    Runs as a Ray task with a trial worker's resources; cached beside the sweep's state.
    """
    import ray

    from pipeline.launch import cpus_per_worker

    cache = prep.storage / ZERO_SHOT_FILE
    if cache.is_file():
        return json.loads(cache.read_text())
    cfg = prep.base.config
    log(f"[adept] zero-shot: scoring {cfg.backbone} without an adapter on the validation split "
        f"({cfg.max_eval_examples or 'all'} rows, {cfg.eval_mode}) ...")
    t0 = time.time()
    cpus = prep.sweep.cpus_per_worker or cpus_per_worker(cfg)
    task = ray.remote(num_cpus=cpus, num_gpus=1 if cfg.use_gpu else 0)(_zero_shot_task)
    metrics = ray.get(task.remote(cfg.to_dict()))
    log(f"[adept] zero-shot: {metrics} in {time.time() - t0:.0f} s")
    cache.write_text(json.dumps(metrics))
    return metrics


def _zero_shot_task(cfg_dict: dict) -> dict[str, float]:
    import torch

    from pipeline.backbones import load_backbone
    from pipeline.evaluation import EvalConfig, evaluate
    from pipeline.setup import resolve_task, tokenize_config

    cfg = TrainConfig.from_dict(cfg_dict)
    model, tokenizer, kind = load_backbone(cfg.backbone, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    model.to("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    task = resolve_task(cfg)
    validation = task.get_split("validation", max_examples=cfg.max_eval_examples)
    config = EvalConfig(tokenize=tokenize_config(cfg, kind), eval_mode=cfg.eval_mode, batch_size=cfg.eval_batch_size)
    return evaluate(model, tokenizer, task, validation, config).metrics


# ---------------------------------------------------------------------------------------------- report
def format_report(outcome: SweepOutcome) -> str:
    """The job's closing text: best trials, where the adapters are, MLflow, the register command."""
    prep, metric = outcome.prepared, outcome.prepared.metric
    cfg = prep.base.config
    counts = {s: sum(r.status == s for r in outcome.rows) for s in ("completed", "stopped", "error")}
    lines = [f"[adept] sweep {prep.name!r}: {len(outcome.rows)} trials ({counts['completed']} completed, "
             f"{counts['stopped']} stopped early, {counts['error']} errored) in {outcome.seconds:.0f} s"]
    keys = [d.key for d in prep.dims if d.kind != "constant"]
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
        lines.append(f"[adept] zero-shot {metric} (backbone alone, same {cfg.max_eval_examples or 'all'} validation "
                     f"rows, {cfg.eval_mode}): {zs:.2f}")
        if outcome.best:
            lines.append(f"[adept] best {metric}: {outcome.best.score:.2f}{gain}")
    if outcome.best is not None:
        lines.append(f"[adept] best adapter: {outcome.best.adapter}")
    lines.append(f"[adept] adapters of all trials: {prep.trials_storage}/<sweep>-<trial>/step_*/best_adapter")
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
