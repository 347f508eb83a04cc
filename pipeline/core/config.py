"""`TrainConfig`: the one run configuration that flows from a job to every Ray worker.

Loaded from YAML (`configs/*.yaml`) plus `key=value` overrides; every check that can fail is done in
`__post_init__` (types and values) or in `pipeline.driver.launch.prepare` (the backbone, the task, the stores),
before Ray starts a single worker.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adept.config import METHODS, PROMPT_INITS
from pipeline.core.errors import MissingFile, UserError

PRECISIONS = ("fp32", "bf16", "fp16")
EVAL_MODES = ("rank", "generate")
# Ray placement-group strategies for a fit's workers (STRICT_SPREAD: one worker per node).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class TrainConfig:
    """One ADePT / DePT / prompt-tuning fit. Field names are the YAML keys and `--set` keys."""

    # what to train
    method: str = "adept"
    task: str = "movie-sentiment"  # registry name, or the path of a custom-task YAML
    backbone: str = "smollm2-135m"  # HF id, local folder, or an offline alias (pipeline.core.backbones)
    dtype: str = "float32"  # backbone weights: float32 | bfloat16 | float16
    trust_remote_code: bool = False
    label_strings: list[str] | None = None  # verbalizer override, e.g. ["no", "yes"] for a causal LM
    # the adapter
    num_virtual_tokens: int = 60
    r: int | None = None  # ADePT FFN hidden size / DePT rank; None with `budget` set derives it
    budget: int | None = None  # prompt-tuning budget M: keep trainable params <= M·d
    prompt_init: str = "text"
    prompt_init_text: str | None = None
    ffn_dropout: float = 0.1
    # data and evaluation
    max_source_length: int = 256
    max_target_length: int = 16
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    eval_mode: str = "rank"  # rank classification, or greedy generation of the label string
    eval_batch_size: int = 32
    execute_code: bool = False  # mbpp: also pass_at_1, running generated code in pipeline.core.code_eval's sandbox
    # optimisation (paper: AdamW eps 1e-6, two lrs, linear warmup 500 then linear decay, clip 1.0)
    prompt_lr: float = 0.3
    offset_lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    max_steps: int = 30_000
    batch_size: int = 32  # global: micro batch × workers × grad_accum
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    eval_steps: int = 1000
    log_steps: int = 50
    # distribution
    num_workers: int = 1
    use_gpu: bool = False
    deepspeed: bool = True
    zero_stage: int = 2
    offload: bool = False
    # ZeRO-3: backbone elements a worker may hold gathered at once, and how far ahead a gathered weight is kept for
    # reuse. DeepSpeed's default (1e9 each) keeps a backbone of up to 1e9 parameters whole on every worker from its
    # forward use to its backward use, which undoes the partitioning of a ~1B backbone; 1e8 re-gathers instead.
    zero3_live_params: int = 100_000_000
    precision: str = "fp32"
    placement_strategy: str = "PACK"  # of the workers on Ray nodes: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    # bookkeeping
    name: str | None = None  # Ray Train run name; re-running the same name resumes it
    storage_path: str = "ray_results"
    max_failures: int = 0
    num_checkpoints_to_keep: int = 2
    mlflow_uri: str | None = None  # default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlflow.db
    experiment: str = "adept"
    tracking_outage_s: float = 600.0  # keep training while MLflow is unreachable this long (logs buffered)
    node_wait_s: float = 300.0  # after losing a node: wait this long for capacity to come back, then fail
    # recipe callbacks, each "module:Name" or "path/to/file.py:Name", optionally with keyword arguments:
    # "my_hooks:LogGradNorms(every=10)". Called by every worker after each optimizer step (pipeline.worker.callbacks).
    callbacks: list[str] | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        _check_types(self)
        _one_of("method", self.method, METHODS)
        _one_of("prompt_init", self.prompt_init, PROMPT_INITS)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("eval_mode", self.eval_mode, EVAL_MODES)
        _one_of("placement_strategy", self.placement_strategy, PLACEMENT_STRATEGIES)
        _one_of("dtype", self.dtype, ("float32", "bfloat16", "float16"))
        for name in ("max_steps", "batch_size", "grad_accum", "eval_steps", "log_steps", "num_workers",
                     "max_source_length", "max_target_length", "eval_batch_size", "num_checkpoints_to_keep"):
            _positive_int(name, getattr(self, name))
        for name in ("prompt_lr", "offset_lr", "max_grad_norm", "tracking_outage_s", "node_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{name}={value!r} must be a finite number > 0.")
        for name in ("warmup_steps", "weight_decay", "max_failures", "ffn_dropout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"{name}={value!r} must be a finite number >= 0.")
        if not self.ffn_dropout < 1:
            raise UserError(f"ffn_dropout={self.ffn_dropout!r} must be < 1.")
        if self.zero_stage not in (0, 1, 2, 3):
            raise UserError(f"zero_stage={self.zero_stage!r}: DeepSpeed ZeRO stages are 0, 1, 2, 3.")
        if not (isinstance(self.zero3_live_params, int) and self.zero3_live_params >= 0):
            raise UserError(f"zero3_live_params={self.zero3_live_params!r} must be an integer >= 0 (elements; "
                            "DeepSpeed's own default is 1000000000).")
        if self.offload and (not self.deepspeed or self.zero_stage == 0):
            raise UserError("offload=true needs deepspeed=true and zero_stage >= 1.")
        if self.deepspeed and self.zero_stage == 3 and self.dtype != {"bf16": "bfloat16", "fp16": "float16"}.get(
                self.precision, "float32"):
            raise UserError(f"dtype={self.dtype!r} with precision={self.precision!r}: under ZeRO-3 DeepSpeed builds the "
                            "backbone in the precision's dtype; set them to match (bfloat16 with bf16, float32 with fp32).")
        if self.precision == "fp16" and not self.use_gpu:
            raise UserError("precision='fp16' is not supported on CPU; use 'bf16' or 'fp32', or set use_gpu=true.")
        per_step = self.num_workers * self.grad_accum
        if self.batch_size % per_step:
            raise UserError(
                f"batch_size={self.batch_size} is not divisible by num_workers × grad_accum = {self.num_workers} × "
                f"{self.grad_accum}; choose a multiple of {per_step}."
            )
        if self.method == "prompt":
            if self.r is not None or self.budget is not None:
                raise UserError("method='prompt' has no r; remove r/budget (the prompt length is num_virtual_tokens).")
        elif (self.r is None) == (self.budget is None):
            raise UserError(f"method={self.method!r} needs exactly one of r (e.g. r=19) or budget (e.g. budget=100).")
        if self.num_virtual_tokens < (1 if self.method == "prompt" else 0):
            raise UserError(f"num_virtual_tokens={self.num_virtual_tokens} is too small for method {self.method!r}.")
        if self.eval_steps > self.max_steps:
            raise UserError(f"eval_steps={self.eval_steps} > max_steps={self.max_steps}: the run would never evaluate.")
        if self.name is not None:
            check_name("name", self.name)
        check_name("experiment", self.experiment)

    # ------------------------------------------------------------------ derived values
    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.num_workers * self.grad_accum)

    @property
    def run_name(self) -> str:
        backbone = Path(self.backbone.rstrip("/")).name
        task = Path(self.task).stem if is_custom_task(self.task) else self.task
        default = f"{self.method}-{task}-{backbone}-m{self.num_virtual_tokens}-s{self.seed}"
        return self.name or re.sub(r"[^A-Za-z0-9._-]+", "-", default)  # "random:llama-1b" -> "random-llama-1b"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_uri or default_tracking_uri()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_known_keys(data, [f.name for f in dataclasses.fields(cls)], "config key",
                         "the keys are the fields of pipeline/core/config.py:TrainConfig.")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{k: _coerce(k, v, types[k]) for k, v in data.items()})

    @classmethod
    def from_resolved(cls, data: dict[str, Any]) -> TrainConfig:
        """From a run's config/resolved_config.json (the config plus derived keys such as r_resolved)."""
        return cls.from_dict({k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None,
             values: dict[str, Any] | None = None) -> TrainConfig:
        """YAML file (optional) + `key=value` overrides (values parsed as YAML: 3e-1, true, [a, b]).

        A `sweep:` section (read by jobs/tune_adept.py) is ignored, so one file serves both jobs.
        """
        data = read_config_file(path) if path is not None else {}
        data.pop("sweep", None)
        for item in overrides or []:
            key, value = parse_override(item)
            data[key] = value
        data.update(values or {})  # typed values (job flags): not re-parsed as YAML
        return cls.from_dict(data)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config YAML as a mapping (a clear error for a missing file, bad YAML, or YAML that is not a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"--config: the file {str(path)!r} does not exist.")
    data = load_yaml(path.read_text(), f"config file {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of keys to values, not {type(data).__name__}.")
    return data


def load_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with an error that names the file (or override) and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}: invalid YAML{at} ({problem}); fix the syntax (quote values with : [ ] {{ }}).") from None


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (3e-1, true, [a, b])."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: not of the form key=value.")
    return key.strip(), load_yaml(value, f"--set {key.strip()}")


NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def check_name(field: str, value: Any) -> str:
    """The one check of every name that becomes a folder or a registry entry: a fit's `name`, a sweep's `name`,
    `experiment`, a registered model's name. Letters, digits, '.', '_', '-', and no leading dot: '..' would put
    the run into storage_path's parent, '.' into storage_path itself, '.x' hides it; '/' nests it elsewhere."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UserError(f"{field}: {value!r} is not a usable name; use letters, digits, '.', '_' and '-', not "
                        "starting with '.' (so neither '.' nor '..'), e.g. 'run-1'.")
    return value


def inside(root: str | Path, path: str | Path, field: str) -> Path:
    """`path` resolved, refused unless it lies strictly below `root` (a run folder under storage_path, a sweep's
    trials, an artifact root): a path built from user input must never leave its root, symlinks followed."""
    root_resolved, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved == root_resolved or not resolved.is_relative_to(root_resolved):
        raise UserError(f"{field}: {str(path)!r} resolves to {str(resolved)!r}, outside {str(root_resolved)!r}; "
                        "pick a plain name (and no symlink leading out of the storage folder).")
    return resolved


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise UserError(f"{name}={value!r} is not allowed; use one of {allowed}.")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name}={value!r} must be an integer >= 1.")


def check_known_keys(data: Mapping[str, Any], known: Iterable[str], what: str, hint: str, where: str = "") -> None:
    """Every key of `data` is one of `known`, else a UserError naming the unknown ones and the closest known key.

    The one unknown-key check of every config: TrainConfig, the sweep section, a custom-task spec, the serving
    config and its load options. `what` names a key ("config key", "load option"), `hint` says where the keys are
    listed, `where` (optional) prefixes the message ("custom task spec"):

        custom task spec: unknown key(s) ['colour'] (did you mean 'label_column'?); <hint>
    """
    known = sorted(str(k) for k in known)
    unknown = sorted((k for k in data if k not in known), key=str)
    if not unknown:
        return
    close = {u: c for u in unknown if (c := _closest(str(u), known)) is not None}
    if len(unknown) == 1 and close:
        guess = f" (did you mean {close[unknown[0]]!r}?)"
    elif close:
        guess = " (did you mean " + ", ".join(f"{c!r} for {u!r}" for u, c in close.items()) + "?)"
    else:
        guess = ""
    prefix = f"{where}: " if where else ""
    raise UserError(f"{prefix}unknown {what}(s) {unknown}{guess}; {hint}")


def _closest(word: str, known: Iterable[str]) -> str | None:
    import difflib

    hits = difflib.get_close_matches(word, sorted(known), n=1)
    return hits[0] if hits else None


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """YAML gives 3e-1 as a string and 1 as an int where a float is meant: fix the obvious cases."""
    if value is None:
        return None
    if annotation.startswith("float") and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as err:
            raise UserError(f"{key}={value!r} must be a number.") from err
    if annotation.startswith("int") and isinstance(value, float) and value.is_integer():
        return int(value)
    if annotation.startswith("str") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # --name 123: a name, not a number
    if annotation.startswith("bool") and not isinstance(value, bool):
        raise UserError(f"{key}={value!r} must be true or false.")
    return value


def _check_types(cfg: TrainConfig) -> None:
    """Every field has the type its annotation says (YAML can give a list or a bool anywhere)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        if not _is_instance(value, hint):
            raise UserError(f"{f.name}={value!r} has the wrong type: expected {_type_name(hint)}, got "
                            f"{type(value).__name__}; fix it in the config file or --set.")


def _is_instance(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args) + (" or null" if type(None) in typing.get_args(hint) else "")
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(args[0])}"
    return getattr(hint, "__name__", str(hint))


def is_custom_task(task: str) -> bool:
    """A `task` value that is the path of a custom-task YAML rather than a registry name."""
    return str(task).endswith((".yaml", ".yml"))


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store `mlflow.db` in the current directory (MLflow 3's own default)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


# ADEPT_* variables (cache dir, test hooks) are the driver's settings for its workers. Ray reuses worker
# processes and a local cluster outlives a job, so a worker takes exactly the driver's set: stale ones go.
ENV_PREFIX = "ADEPT_"


def driver_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def apply_driver_env(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX) and k not in env]:
        del os.environ[key]
    os.environ.update(env)
