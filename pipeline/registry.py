"""MLflow Model Registry for adapters: register a run's best adapter as `adept-<task>`, keep `@champion` honest.

    candidate = best_of_sweep(uri, "adept-demo")           # or candidate_from_run(uri, run_id)
    result = register(uri, candidate)                      # new version (or the existing one for that run)

Each registered version is an `mlflow.pyfunc` model logged from code (`pipeline/adept_pyfunc.py`): its
artifacts are the adapter files, its `model_config` the backbone reference and the input format; the
project's `adept/` and `pipeline/` packages travel along as code paths. The version carries tags
(task, method, metric, score, backbone, run, sweep, trial). The alias `champion` moves to the new
version only when its score beats the current champion's on the same metric, or with `force=True`.
Versions are never deleted or overwritten; registering the same run twice reuses its version.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAMPION = "champion"
MODEL_CODE = Path(__file__).with_name("adept_pyfunc.py")
PACKAGES = [Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "adept"]
PIP_REQUIREMENTS = ["torch>=2.4", "transformers>=5,<6", "safetensors>=0.4", "datasets>=4", "pyyaml>=6",
                    "scipy>=1.11", "scikit-learn>=1.3", "platformdirs>=4", "regex", "pandas", "mlflow>=3,<4"]


@dataclass
class Candidate:
    """A run whose `best_adapter` artifact may become a model version."""

    run_id: str
    score: float
    metric: str
    mode: str
    task_name: str
    params: dict[str, str]
    tags: dict[str, str]
    sweep: str | None = None
    trial_id: str | None = None

    @property
    def model_name(self) -> str:
        return "adept-" + re.sub(r"[^a-z0-9]+", "-", self.task_name.lower()).strip("-")

    @property
    def backbone_ref(self) -> str:
        return self.tags.get("backbone_ref") or self.params["backbone"]

    def better_than(self, score: float) -> bool:
        return self.score > score if self.mode == "max" else self.score < score


@dataclass
class Registration:
    name: str
    version: str
    new_version: bool
    champion: str | None  # the version @champion points to afterwards
    moved: bool
    previous: dict[str, Any] = field(default_factory=dict)  # the former champion's version and score
    reason: str = ""


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def best_of_sweep(uri: str, sweep: str, experiment: str | None = None) -> Candidate:
    """The best trial of a sweep (the `best_run_id` tag its parent run got at the end)."""
    from pipeline.tracking import RUN_NAME_TAG

    client = _client(uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ValueError(f"no MLflow experiment {experiment!r} in {uri}.")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(ids, filter_string=f"tags.`{RUN_NAME_TAG}` = '{sweep}' and tags.`adept.kind` = 'sweep'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ValueError(f"no sweep named {sweep!r} in {uri}" + (f" (experiment {experiment!r})" if experiment else "")
                         + "; run jobs/tune_adept.py first or pass --run-id.")
    parent = parents[0]
    best = parent.data.tags.get("best_run_id")
    if not best:
        raise ValueError(f"sweep {sweep!r} has no best trial yet (still running, or every trial failed).")
    return candidate_from_run(uri, best, metric=parent.data.tags.get("metric"))


def candidate_from_run(uri: str, run_id: str, metric: str | None = None) -> Candidate:
    """A trial or single-fit run: score = its best validation value of `metric` (default: the task's primary)."""
    client = _client(uri)
    run = client.get_run(run_id)
    params, tags = run.data.params, run.data.tags
    if "task" not in params:
        raise ValueError(f"run {run_id} is not an adept fit (no 'task' param).")
    if not client.list_artifacts(run_id, "best_adapter"):
        raise ValueError(f"run {run_id} has no best_adapter artifact (it never finished an evaluation).")
    task_name = tags.get("task_name") or _task_name(params["task"])
    metric = metric or tags.get("metric")
    if metric is None:
        metric = f"val_{_primary_metric(params)}"
    score_tag = tags.get("adept.score")
    if score_tag is not None:
        score = float(score_tag)
    else:
        history = client.get_metric_history(run_id, metric)
        if not history:
            raise ValueError(f"run {run_id} has no metric {metric!r}.")
        score = max(m.value for m in history)
    return Candidate(run_id, score, metric, "max", task_name, dict(params), dict(tags),
                     sweep=tags.get("adept.sweep"), trial_id=tags.get("ray.trial_id"))


def _task_name(task: str) -> str:
    if task.endswith((".yaml", ".yml")):
        try:
            from pipeline.tasks import get_task

            return get_task(task).name
        except (OSError, ValueError, KeyError):
            return Path(task).stem
    return task


def _primary_metric(params: dict[str, str]) -> str:
    from pipeline.tasks import get_task

    return get_task(params["task"]).primary_metric


def model_config(candidate: Candidate) -> dict[str, Any]:
    """What the pyfunc needs besides the adapter: backbone, input format, scoring mode, lengths."""
    import ast

    from pipeline.tasks import get_task

    p = candidate.params
    try:
        task = get_task(p["task"])
        if p.get("label_strings") not in (None, "None"):  # the run's verbalizer override (logged as a list repr)
            task = task.with_label_strings(ast.literal_eval(p["label_strings"]))
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"task {p['task']!r} of run {candidate.run_id} cannot be loaded here ({err}); register on "
                         "a machine that has the task files.") from err
    config = {
        "backbone": candidate.backbone_ref, "dtype": p.get("dtype", "float32"), "task": task.name,
        "task_type": task.task_type, "label_strings": list(task.label_strings), "eval_mode": p.get("eval_mode", "rank"),
        "max_source_length": int(p.get("max_source_length", 256)), "max_target_length": int(p.get("max_target_length", 16)),
        "max_new_tokens": task.max_new_tokens, "batch_size": int(p.get("eval_batch_size", 32)), "folded": False,
    }
    if p["task"].endswith((".yaml", ".yml")):  # a custom task: its input columns, in order
        from pipeline.tasks import CustomTaskSpec

        spec = CustomTaskSpec.from_yaml(p["task"])
        config["input_columns"] = [list(c) for c in spec.columns]
    if config["eval_mode"] == "rank" and not config["label_strings"]:
        config["eval_mode"] = "generate"
    return config


def input_columns(config: dict[str, Any]) -> list[str]:
    """The raw input columns predict() reads (a custom task's, or those a registered task's formatter asks for)."""
    if config.get("input_columns"):
        return [c for c, _ in config["input_columns"]]
    from pipeline.adept_pyfunc import LABEL_KEYS, _Row
    from pipeline.tasks import get_task

    probe = _Row({})
    try:
        get_task(config["task"]).formatter(probe)
    except Exception:  # noqa: BLE001 - a formatter that needs real values: no column list, no signature
        return []
    return [k for k in dict.fromkeys(probe.missing) if k not in LABEL_KEYS]


def signature(config: dict[str, Any]):
    """Inputs: the task's columns or `source` (each optional: one of the two forms); output: one string per row."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    columns = input_columns(config)
    if not columns:
        return None
    inputs = Schema([ColSpec("string", c, required=False) for c in [*columns, "source"]])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string", "prediction")]))


def log_adept_model(uri: str, candidate: Candidate):
    """Log the run's best adapter as a pyfunc model (linked to the run); returns MLflow's ModelInfo."""
    import mlflow

    client = _client(uri)
    config = model_config(candidate)
    status = client.get_run(candidate.run_id).info.status
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with tempfile.TemporaryDirectory(prefix="adept-register-") as tmp:
        adapter = mlflow.artifacts.download_artifacts(run_id=candidate.run_id, artifact_path="best_adapter",
                                                      dst_path=tmp, tracking_uri=uri)
        with mlflow.start_run(run_id=candidate.run_id):
            info = mlflow.pyfunc.log_model(
                name="adept_model", python_model=str(MODEL_CODE), artifacts={"adapter": adapter},
                model_config={"adept": config}, signature=signature(config), code_paths=[str(p) for p in PACKAGES], pip_requirements=PIP_REQUIREMENTS,
                tags={"adept.task": config["task"], "adept.backbone": config["backbone"]},
            )
        if status != "RUNNING":  # start_run/end_run marked the run FINISHED: keep its real status (KILLED, ...)
            client.set_terminated(candidate.run_id, status=status)
    return info


def register(uri: str, candidate: Candidate, name: str | None = None, force: bool = False) -> Registration:
    """Register `candidate` as a new version of `name` (default adept-<task>); move @champion if it wins."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    name = name or candidate.model_name
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"ADePT adapters for {candidate.task_name}; see adept-ray.")
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{candidate.run_id}'")
    if existing:
        version, new = sorted(existing, key=lambda v: int(v.version))[-1], False
    else:
        info = log_adept_model(uri, candidate)
        version = client.create_model_version(name, source=info.model_uri, run_id=candidate.run_id,
                                              tags=version_tags(candidate), model_id=info.model_id)
        new = True
    current = _champion(client, name)
    previous = {}
    if current is None:
        moved, reason = True, "no champion yet"
    else:
        previous = {"version": current.version, "score": current.tags.get("score"), "metric": current.tags.get("metric")}
        if current.version == version.version:
            moved, reason = False, "this version already is the champion"
        elif force:
            moved, reason = True, "forced"
        elif current.tags.get("metric") != candidate.metric:
            moved, reason = False, (f"champion v{current.version} was scored on {current.tags.get('metric')!r}, this "
                                    f"one on {candidate.metric!r}: not comparable (use --force to move it)")
        elif candidate.better_than(float(current.tags.get("score", "nan"))):
            moved, reason = True, f"{candidate.score:.4g} beats champion v{current.version}'s {current.tags.get('score')}"
        else:
            moved, reason = False, (f"{candidate.score:.4g} does not beat champion v{current.version}'s "
                                    f"{current.tags.get('score')}")
    if moved:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    champion = version.version if moved else (current.version if current else None)
    return Registration(name, version.version, new, champion, moved, previous, reason)


def version_tags(c: Candidate) -> dict[str, str]:
    p = c.params
    tags = {"task": c.task_name, "method": p.get("method", ""), "metric": c.metric, "score": f"{c.score:.6g}",
            "mode": c.mode, "backbone": c.backbone_ref, "run_id": c.run_id, "num_virtual_tokens": p.get("num_virtual_tokens", ""),
            "r": p.get("r_resolved", p.get("r", "")), "prompt_lr": p.get("prompt_lr", ""), "offset_lr": p.get("offset_lr", "")}
    if c.sweep:
        tags["sweep"] = c.sweep
    if c.trial_id:
        tags["trial_id"] = c.trial_id
    return tags


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
