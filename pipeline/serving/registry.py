"""MLflow Model Registry for adapters: register a run's best adapter as `adept-<task>`, keep `@champion` honest.

    candidate = best_of_sweep(uri, "adept-demo")           # or candidate_from_run(uri, run_id)
    result = register(uri, candidate)                      # new version (or the existing one for that run)

Each registered version is an `mlflow.pyfunc` model logged from code (`pipeline/serving/pyfunc.py`) in a run of
its own (kind `registration`, nested under the sweep when there is one), so the trial's run keeps its status,
times and metrics. Its artifacts are the adapter files (and, with `bundle_backbone`, the backbone folder);
its flat `model_config` is a `pipeline.serving.config.ServingConfig` (backbone reference + fingerprint, input
format, lengths); it carries a signature and an input example. The version has tags (task, method, metric,
score, backbone, source_run_id, sweep, trial). The alias `champion` moves to the new version only when its
score beats the current champion's on the same metric, or with `force=True`. Versions are never deleted or
overwritten; registering the same run twice reuses its version.

This module decides; `pipeline.tracking` (models, runs) makes every MLflow call, each with its URI.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import check_name
from pipeline.core.errors import UserError

CHAMPION = "champion"
MODEL_CODE = Path(__file__).with_name("pyfunc.py")
PACKAGES = [Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "adept"]
PIP_REQUIREMENTS = ["torch>=2.4", "transformers>=5,<6", "safetensors>=0.4", "datasets>=4", "pyyaml>=6",
                    "scipy>=1.11", "scikit-learn>=1.3", "platformdirs>=4", "regex", "pandas", "mlflow>=3,<4"]
RESOLVED_CONFIG = "config/resolved_config.json"


@dataclass
class Candidate:
    """A run whose `best_adapter` artifact may become a model version."""

    run_id: str
    score: float
    metric: str  # the MLflow key, e.g. val/accuracy
    mode: str
    task_name: str
    train: dict[str, Any]  # the run's resolved TrainConfig
    tags: dict[str, str]
    sweep: str | None = None
    trial_id: str | None = None
    parent_run_id: str | None = None

    @property
    def model_name(self) -> str:
        return "adept-" + re.sub(r"[^a-z0-9]+", "-", self.task_name.lower()).strip("-")

    @property
    def backbone_ref(self) -> str:
        return self.tags.get("backbone_ref") or self.train["backbone"]

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


def best_of_sweep(uri: str, sweep: str, experiment: str | None = None) -> Candidate:
    """The best trial of a sweep (the `best_run_id` tag its parent run got at the end)."""
    from pipeline.tracking import KIND_TAG, RUN_KEY_TAG, search_runs

    try:
        parents = search_runs(uri, f"tags.`{RUN_KEY_TAG}` = '{sweep}' and tags.`{KIND_TAG}` = 'sweep'",
                              experiment=experiment, order_by=["attributes.start_time DESC"], max_results=1)
    except LookupError:
        raise UserError(f"--experiment: no MLflow experiment {experiment!r} in {uri}.") from None
    if not parents:
        raise UserError(f"--sweep: no sweep named {sweep!r} in {uri}" + (f" (experiment {experiment!r})" if experiment
                                                                          else "")
                        + "; run jobs/tune_adept.py first or pass --run-id.")
    parent = parents[0]
    best = parent.data.tags.get("best_run_id")
    if not best:
        raise UserError(f"--sweep: sweep {sweep!r} has no best trial yet (still running, or every trial failed).")
    metric = parent.data.tags.get("metric")
    return candidate_from_run(uri, best, metric=metric.replace("_", "/", 1) if metric else None)


def candidate_from_run(uri: str, run_id: str, metric: str | None = None) -> Candidate:
    """A trial or single-fit run: score = its best validation value of `metric` (default: the task's primary)."""
    from pipeline.tracking import PARENT_TAG, download_artifacts, get_run, list_artifacts, metric_history

    try:
        run = get_run(uri, run_id)
    except LookupError as err:
        raise UserError(f"--run-id: no run {run_id!r} in {uri} ({str(err)[:200]}).") from None
    tags = run.data.tags
    if not list_artifacts(uri, run_id, "best_adapter"):
        raise UserError(f"--run-id: run {run_id} has no best_adapter artifact (not an adept fit, or it never "
                        "finished an evaluation).")
    with tempfile.TemporaryDirectory() as tmp:
        train = json.loads(Path(download_artifacts(uri, run_id, RESOLVED_CONFIG, tmp)).read_text())
    task_name = tags.get("task_name") or Path(train["task"]).stem
    if metric is None:
        from pipeline.core.config import TrainConfig
        from pipeline.core.resolve import resolve_task

        metric = f"val/{resolve_task(TrainConfig.from_resolved(train)).primary_metric}"
    history = metric_history(uri, run_id, metric)
    if not history:
        raise UserError(f"--run-id: run {run_id} has no metric {metric!r}.")
    score = max(value for _, value in history)
    return Candidate(run_id, score, metric, "max", task_name, train, dict(tags), sweep=tags.get("adept.sweep"),
                     trial_id=tags.get("ray.trial_id"), parent_run_id=tags.get(PARENT_TAG))


def serving_config(candidate: Candidate):
    """The pyfunc's ServingConfig: the run's input format and lengths, the backbone reference + fingerprint."""
    from pipeline.core.backbone_info import fingerprint
    from pipeline.core.backbones import resolve_backbone
    from pipeline.serving.config import ServingConfig

    ref = candidate.backbone_ref
    try:
        resolved = resolve_backbone(ref)
        fp = {**fingerprint(resolved), "ref": ref}
        return ServingConfig.from_run(candidate.train, backbone=ref, fingerprint=fp), resolved
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"run {candidate.run_id}: its task or backbone cannot be read here ({err}); register on a "
                        "machine that has the task files and the backbone.") from err


def log_adept_model(uri: str, candidate: Candidate, run_id: str, bundle_backbone: bool = False):
    """Log the candidate's best adapter as a pyfunc model into `run_id` (a registration run); MLflow's ModelInfo."""
    from pipeline.tracking import download_artifacts, log_code_model

    config, resolved = serving_config(candidate)
    with tempfile.TemporaryDirectory(prefix="adept-register-") as tmp:
        artifacts = {"adapter": download_artifacts(uri, candidate.run_id, "best_adapter", tmp)}
        if bundle_backbone:
            if not Path(resolved).is_dir():
                raise UserError(f"--bundle-backbone: backbone {candidate.backbone_ref!r} is not a local folder.")
            artifacts["backbone"] = resolved
        return log_code_model(
            uri, run_id, name="adept_model", code=MODEL_CODE, artifacts=artifacts,
            model_config=config.to_model_config(), signature=signature(config),
            input_example=input_example(candidate, config), code_paths=[str(p) for p in PACKAGES],
            pip_requirements=PIP_REQUIREMENTS, tags={"adept.task": config.task, "adept.backbone": config.backbone})


def signature(config):
    """Inputs: the task's columns or `source` (each optional: one of the two forms); output: one string per row."""
    from pipeline.tracking import string_signature

    return string_signature([*config.columns, "source"], ["prediction"])


def input_example(candidate: Candidate, config):
    """Two rows in the task's own columns (from its validation data when readable here), else `source` text."""
    import pandas as pd

    from pipeline.core.config import TrainConfig
    from pipeline.core.resolve import resolve_task

    if config.columns:
        try:
            raw = resolve_task(TrainConfig.from_resolved(candidate.train)).raw_split("validation")
            rows = raw.select(range(min(2, len(raw))))
            return pd.DataFrame({c: [str(v) for v in rows[c]] for c in config.columns})
        except Exception:  # noqa: BLE001 - hub data unreachable here: fall back to the formatted text
            pass
    return pd.DataFrame({"source": ["sentence: an example input"]})


def register(uri: str, candidate: Candidate, name: str | None = None, force: bool = False,
             bundle_backbone: bool = False) -> Registration:
    """Register `candidate` as a new version of `name` (default adept-<task>); move @champion if it wins."""
    from pipeline.tracking import ensure_registered_model, model_versions

    name = check_name("registered model name", name or candidate.model_name)
    ensure_registered_model(uri, name, description=f"ADePT adapters for {candidate.task_name}; see adept-ray.")
    existing = model_versions(uri, name, tags={"source_run_id": candidate.run_id})
    if existing:
        version, new = existing[-1], False
    else:
        version, new = _new_version(uri, name, candidate, bundle_backbone), True
    return _move_champion(uri, name, version, new, candidate, force)


def _new_version(uri: str, name: str, candidate: Candidate, bundle_backbone: bool):
    from pipeline.tracking import (
        FAILED,
        FINISHED,
        close_run,
        create_model_version,
        experiment_name,
        get_run,
        open_run,
    )

    exp_name = experiment_name(uri, get_run(uri, candidate.run_id).info.experiment_id)
    ref = open_run(uri, exp_name, f"register-{name}-{candidate.run_id}", kind="registration",
                   display_name=f"register · {name} · {candidate.tags.get('mlflow.runName', candidate.run_id)}",
                   tags={"adept.source_run_id": candidate.run_id, "adept.model_name": name},
                   parent_run_id=candidate.parent_run_id)
    try:
        info = log_adept_model(uri, candidate, ref.run_id, bundle_backbone)
    except BaseException as err:
        close_run(uri, ref.run_id, FAILED, error=f"{type(err).__name__}: {err}")
        raise
    close_run(uri, ref.run_id, FINISHED)
    return create_model_version(uri, name, info, ref.run_id, version_tags(candidate))


def _move_champion(uri: str, name: str, version, new: bool, candidate: Candidate, force: bool) -> Registration:
    from pipeline.tracking import set_alias, version_by_alias

    current = version_by_alias(uri, name, CHAMPION)
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
        set_alias(uri, name, CHAMPION, version.version)
    champion = version.version if moved else (current.version if current else None)
    return Registration(name, version.version, new, champion, moved, previous, reason)


def version_tags(c: Candidate) -> dict[str, str]:
    t = c.train
    tags = {"task": c.task_name, "method": t.get("method", ""), "metric": c.metric, "score": f"{c.score:.6g}",
            "mode": c.mode, "backbone": c.backbone_ref, "source_run_id": c.run_id,
            "num_virtual_tokens": str(t.get("num_virtual_tokens", "")), "r": str(t.get("r_resolved", t.get("r", ""))),
            "prompt_lr": str(t.get("prompt_lr", "")), "offset_lr": str(t.get("offset_lr", ""))}
    if c.sweep:
        tags["sweep"] = c.sweep
    if c.trial_id:
        tags["trial_id"] = c.trial_id
    return tags
