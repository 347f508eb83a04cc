"""The sweep's configuration: `SweepConfig` (the `sweep:` YAML section), the embedded default, the
search space (`Dimension`) and how one trial's values become a `TrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import TrainConfig, check_known_keys, check_name, parse_override, read_config_file
from pipeline.core.errors import UserError

ALIASES = {"m": "num_virtual_tokens", "ffn_hidden_size": "r", "rank": "r"}
# Keys a trial may not change: they select the model/data/resources every trial shares or name the run.
FIXED_KEYS = ("task", "backbone", "dtype", "trust_remote_code", "num_workers", "use_gpu", "placement_strategy",
              "name", "storage_path", "mlflow_uri", "experiment", "eval_mode", "max_eval_examples")
DISTRIBUTIONS = ("choice", "grid", "loguniform", "uniform", "randint")
SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("random", "optuna")
STATE_FILE = "adept_sweep.json"  # the sweep's settings, beside Tune's state: a re-run must match them
ZERO_SHOT_FILE = "zero_shot.json"
SWEEP_TAG = "adept.sweep"
MAX_CHECKED_COMBINATIONS = 512
# `space: {together: {grid: [{method: dept, prompt_lr: 3e-2, offset_lr: 1e-3}, ...]}}`: keys that vary as one
# (each method at its own learning rates, as the paper tunes them); a trial sees the entry's keys as its own.
TOGETHER = "together"


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
    pack: int | str = 1  # trials trained together over one backbone (K, or auto); 1 = each trial on its own
    pack_rows: int | None = None  # rows per forward pass in a pack (whole trials; 0 = all); default: GPU all, CPU one trial
    top_k: int = 5  # rows of the printed best-trials table

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name("sweep name", str(self.name))  # a number is a name; '..' or 'a/b' are not
        if not isinstance(self.space, dict):
            raise UserError(f"sweep space must be a mapping of config keys to values, got {self.space!r}.")
        for key, value in (("num_samples", self.num_samples), ("top_k", self.top_k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"sweep {key}={value!r} must be an integer >= 1.")
        if self.mode not in ("max", "min"):
            raise UserError(f"sweep mode={self.mode!r}: use max or min.")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"sweep scheduler={self.scheduler!r}: use one of {SCHEDULERS}.")
        if self.search not in SEARCHERS:
            raise UserError(f"sweep search={self.search!r}: use one of {SEARCHERS}.")
        if not isinstance(self.reduction_factor, int | float) or not self.reduction_factor > 1:
            raise UserError(f"sweep reduction_factor={self.reduction_factor!r} must be > 1.")
        if self.grace_period is not None and (not isinstance(self.grace_period, int) or self.grace_period < 1):
            raise UserError(f"sweep grace_period={self.grace_period!r} must be an integer >= 1 (training steps).")
        if self.max_concurrent_trials is not None and (not isinstance(self.max_concurrent_trials, int)
                                                       or self.max_concurrent_trials < 1):
            raise UserError(f"sweep max_concurrent_trials={self.max_concurrent_trials!r} must be an integer >= 1.")
        if self.cpus_per_worker is not None and (not isinstance(self.cpus_per_worker, int) or self.cpus_per_worker < 1):
            raise UserError(f"sweep cpus_per_worker={self.cpus_per_worker!r} must be an integer >= 1.")
        if not isinstance(self.points_to_evaluate, list) or not all(isinstance(p, dict) for p in self.points_to_evaluate):
            raise UserError(f"sweep points_to_evaluate must be a list of mappings, got {self.points_to_evaluate!r}.")
        if self.pack != "auto" and (not isinstance(self.pack, int) or isinstance(self.pack, bool) or self.pack < 1):
            raise UserError(f"sweep pack={self.pack!r} must be an integer >= 1 (trials per pack) or auto.")
        if self.pack_rows is not None and (not isinstance(self.pack_rows, int) or isinstance(self.pack_rows, bool)
                                           or self.pack_rows < 0):
            raise UserError(f"sweep pack_rows={self.pack_rows!r} must be an integer >= 0 (0: every trial of a pack "
                            "in one forward pass).")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise UserError(f"sweep max_failures={self.max_failures!r} must be an integer >= 0.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SweepConfig:
        data = dict(data or {})
        known = sorted(f.name for f in dataclasses.fields(cls))
        check_known_keys(data, known, "sweep key", f"known: {known} (see pipeline/driver/tune/config.py).")
        for key in ("reduction_factor",):
            if isinstance(data.get(key), int | str) and not isinstance(data.get(key), bool):
                try:
                    data[key] = float(data[key])
                except ValueError:
                    raise UserError(f"sweep {key}={data[key]!r} must be a number.") from None
        return cls(**data)


# The embedded default (`python jobs/tune_adept.py` with no --config, `make demo`) and the paper's grid
# (the sweep of a --config without a `sweep:` section) are YAML files in configs/: what users copy is what runs.
CONFIGS = Path(__file__).resolve().parents[3] / "configs"
DEFAULT_CONFIG = CONFIGS / "demo.yaml"
PAPER_GRID = CONFIGS / "paper_grid.yaml"


# ---------------------------------------------------------------------------------------------- loading
def load_sweep(path: str | Path | None = None, overrides: list[str] | None = None,
               sweep_overrides: list[str] | None = None, values: dict[str, Any] | None = None,
               sweep_values: dict[str, Any] | None = None) -> tuple[TrainConfig, SweepConfig]:
    """A config YAML (TrainConfig keys + a `sweep:` section) plus `key=value` overrides of either part.

    No path: the embedded default (configs/demo.yaml). `sweep_overrides` take `space.<key>=<yaml>`.
    """
    data = read_config_file(path if path is not None else DEFAULT_CONFIG)
    sweep = data.pop("sweep", None)
    if sweep is None:
        sweep = read_config_file(PAPER_GRID)["sweep"]
    if not isinstance(sweep, dict):
        raise UserError(f"{str(path)!r}: the sweep section must be a mapping, got {sweep!r}.")
    base = data
    for item in overrides or []:
        key, value = parse_override(item)
        base[key] = value
    for item in sweep_overrides or []:
        key, value = parse_override(item)
        if key.startswith("space."):
            sweep.setdefault("space", {})
            sweep["space"] = {**(sweep["space"] or {}), key.removeprefix("space."): value}
        else:
            sweep[key] = value
    base.update(values or {})  # typed job flags
    sweep.update(sweep_values or {})
    return TrainConfig.from_dict(base), SweepConfig.from_dict(sweep)


# ---------------------------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Dimension:
    key: str  # TrainConfig field
    kind: str  # constant | choice | grid | loguniform | uniform | randint
    values: tuple  # constant: (v,); choice/grid: the values; ranges: (lo, hi); together: mappings

    @property
    def keys(self) -> tuple[str, ...]:
        """The TrainConfig keys this dimension sets (a `together` one: every key its entries name)."""
        if self.key != TOGETHER:
            return (self.key,)
        return tuple(dict.fromkeys(k for entry in self.values for k in entry))

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


def flat_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as TrainConfig keys: a `together` entry's keys become the trial's own."""
    together = params.get(TOGETHER)
    flat = {k: v for k, v in params.items() if k != TOGETHER}
    return {**flat, **together} if isinstance(together, dict) else flat


def parse_space(space: dict[str, Any]) -> list[Dimension]:
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    dims, seen = [], set()
    for raw_key, spec in space.items():
        if raw_key == TOGETHER:
            dim = _together(spec, fields)
            for key in dim.keys:
                if key in seen:
                    raise UserError(f"sweep space sets {key!r} twice (in `together` and on its own); keep one.")
                seen.add(key)
            dims.append(dim)
            continue
        key = ALIASES.get(raw_key, raw_key)
        if key not in fields:
            hint = [k for k in fields if k.startswith(key[:3])][:3]
            raise UserError(f"sweep space key {raw_key!r} is not a TrainConfig field (similar: {hint}).")
        if key in FIXED_KEYS:
            raise UserError(f"sweep space key {raw_key!r} cannot vary between trials: set it in the base config.")
        if key in seen:
            raise UserError(f"sweep space sets {key!r} twice (directly, through an alias or in `together`).")
        seen.add(key)
        dims.append(_dimension(key, spec, fields[key]))
    return dims


def _together(spec: Any, fields: dict[str, str]) -> Dimension:
    """`together: {grid: [mapping, ...]}` (or choice, or a bare list = choice): each entry sets its keys at once."""
    where = "sweep space 'together'"
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("grid", "choice"):
        raise UserError(f"{where}: use {{grid: [{{key: value, ...}}, ...]}} (or choice), got {spec!r}.")
    kind, entries = next(iter(spec.items()))
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) and e for e in entries):
        raise UserError(f"{where}: {kind} needs a non-empty list of non-empty mappings of config keys, e.g. "
                        f"[{{method: adept, prompt_lr: 1.0e-2}}, {{method: prompt, prompt_lr: 3.0e-2}}]; got {entries!r}.")
    canonical = []
    for entry in entries:
        keys = {}
        for raw_key, value in entry.items():
            key = ALIASES.get(raw_key, raw_key)
            if key not in fields:
                raise UserError(f"{where}: {raw_key!r} in {entry} is not a TrainConfig field.")
            if key in FIXED_KEYS or key == TOGETHER:
                raise UserError(f"{where}: {raw_key!r} cannot vary between trials: set it in the base config.")
            if key in keys or isinstance(value, dict | list):
                raise UserError(f"{where}: {entry} must give each key once, as a plain value (no distributions).")
            keys[key] = value
        canonical.append(keys)
    if len(set(map(repr, canonical))) != len(canonical):
        raise UserError(f"{where}: {kind} entries repeat.")
    return Dimension(TOGETHER, kind, tuple(canonical))


def _dimension(key: str, spec: Any, annotation: str) -> Dimension:
    where = f"sweep space {key!r}"
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        return Dimension(key, "constant", (spec,))
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise UserError(f"{where}: {spec!r} is not one of a list, a constant or {{kind: values}} with kind in "
                        f"{DISTRIBUTIONS}.")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}: {kind} needs a non-empty list, got {values!r}.")
    if kind in ("choice", "grid"):
        if len(set(map(repr, values))) != len(values):
            raise UserError(f"{where}: {kind} values {values} repeat.")
        return Dimension(key, kind, tuple(values))
    if len(values) != 2:
        raise UserError(f"{where}: {kind} takes [low, high], got {values!r}.")
    try:
        lo, hi = (int(v) for v in values) if kind == "randint" else (float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {kind} bounds {values!r} must be numbers.") from err
    if kind == "randint" and not annotation.startswith("int"):
        raise UserError(f"{where}: randint is for integer keys; {key} is {annotation}.")
    if kind != "randint" and annotation.startswith("int"):
        raise UserError(f"{where}: {kind} gives floats, but {key} is an integer; use randint or a list.")
    if not lo < hi:
        raise UserError(f"{where}: {kind} needs low < high, got {values!r}.")
    if kind == "loguniform" and lo <= 0:
        raise UserError(f"{where}: loguniform needs low > 0, got {values!r}.")
    return Dimension(key, kind, (lo, hi))


def trial_config(base: TrainConfig, params: dict[str, Any], name: str | None = None,
                 storage_path: str | None = None) -> TrainConfig:
    """The TrainConfig of one trial: the base with the sampled values (validated like any config)."""
    data = base.to_dict()
    data.update({ALIASES.get(k, k): v for k, v in flat_params(params).items()})
    if data["method"] == "prompt":  # prompt tuning has no r: with a budget, the prompt is the whole budget
        if data.get("budget") is not None:
            data["num_virtual_tokens"] = data["budget"]
        data["r"] = data["budget"] = None
    elif data.get("r") is None and data.get("budget") is None:
        raise UserError(f"method={data['method']!r} needs r or budget; set one in the base config or the space.")
    if name is not None:
        data["name"] = name
    if storage_path is not None:
        data["storage_path"] = storage_path
    return TrainConfig.from_dict(data)
