"""Running a sweep on Ray: one Tune function per trial that runs a Ray Train fit (`run_fit`), the zero-shot
baseline, and collecting what Tune reports into the outcome.

Imported only when a sweep starts (jobs/tune_adept.py, after every check): it imports Ray, Tune and torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from pipeline.core.backbones import load_backbone
from pipeline.core.config import apply_driver_env, driver_env
from pipeline.core.evaluation import evaluate
from pipeline.core.logs import configure_worker_logging
from pipeline.core.ray_compat import set_restored_callbacks
from pipeline.core.resolve import ResolvedRun
from pipeline.driver.launch import TrialLink, cpus_per_worker, mlflow_params_and_tags, run_fit
from pipeline.driver.ray_setup import init_ray
from pipeline.driver.tune.callbacks import (
    SweepProgress,
    TrialRunStatus,
    completed,
    trial_index,
    trial_report_callback,
)
from pipeline.driver.tune.config import (
    ALIASES,
    STATE_FILE,
    SWEEP_TAG,
    TOGETHER,
    ZERO_SHOT_FILE,
    Dimension,
    flat_params,
    trial_config,
)
from pipeline.driver.tune.packs import (
    PackProgress,
    adept_pack_trial,
    draw_members,
    member_rows,
    pack_searcher,
    pack_size,
    pack_space,
    rung_keeper,
)
from pipeline.driver.tune.prepare import PreparedSweep
from pipeline.driver.tune.report import SweepOutcome, TrialRow, summarise
from pipeline.driver.tune.trust import forget_manifest, write_manifest
from pipeline.tracking import (
    close_open_children,
    close_run,
    experiment_id,
    find_run,
    open_run,
    status_of_error,
    trial_run_name,
)
from pipeline.worker.recipe import use_assigned_cpus


def trial_resources(run: ResolvedRun, worker_cpus: int | None = None) -> tuple[dict[str, float], int]:
    """(resources of one trial's driver, how many trials the cluster holds at once)."""
    cfg = run.config
    total = ray.cluster_resources()
    cpus = cfg.num_workers * (worker_cpus or cpus_per_worker(cfg)) + 1  # the workers + the trial's driver
    fits = int(total.get("CPU", 1) // cpus)
    if cfg.use_gpu:
        fits = min(fits, int(total.get("GPU", 0) // cfg.num_workers))
    return {"CPU": 1}, max(1, fits)


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares besides the base run (sent once to Tune with `with_parameters`)."""

    sweep: str
    trials_storage: str
    parent_run_id: str
    artifact_root: str
    worker_cpus: int | None
    env: dict[str, str]
    metric: str = ""
    pack_rows: int | None = None


def adept_trial(params: dict, *, base: ResolvedRun, ctx: SweepContext) -> None:
    """One Tune trial = one Ray Train fit (`run_fit`), logged into a child MLflow run of the sweep's run."""
    apply_driver_env(ctx.env)  # the job's ADEPT_* settings, whenever and wherever the cluster started
    trial_id = tune.get_context().get_trial_id()
    run = base.with_config(trial_config(base.config, params, name=f"{ctx.sweep}-{trial_id}",
                                        storage_path=ctx.trials_storage))
    link = TrialLink(parent_run_id=ctx.parent_run_id, artifact_root=ctx.artifact_root,
                     display_name=trial_run_name(trial_index(trial_id), flat_params(params), run.r, ctx.sweep,
                                                 m=run.config.num_virtual_tokens),
                     tags={SWEEP_TAG: ctx.sweep, "ray.trial_id": trial_id})
    # raises when the fit fails (after Train's own max_failures); Tune then retries the trial
    run_fit(run, trial=link, callbacks=[trial_report_callback()], worker_cpus=ctx.worker_cpus)


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


def _trial_name(trial) -> str:
    """What Tune's own status table shows for a trial: "t03 m8 plr0.01" rather than an internal id."""
    return trial_run_name(trial_index(trial.trial_id), flat_params(trial.config or {}), None, "").removesuffix(" · ")


def run_sweep(prep: PreparedSweep, log=print) -> SweepOutcome:
    """Start (or resume) the sweep on the Ray cluster and summarise it in MLflow."""

    t0 = time.time()
    run, cfg, sweep = prep.base, prep.base.config, prep.sweep
    init_ray(cfg.num_workers, num_cpus=local_cpus(prep))
    prep.storage.mkdir(parents=True, exist_ok=True)
    (prep.storage / STATE_FILE).write_text(json.dumps(prep.fingerprint(), indent=1))

    params, tags = mlflow_params_and_tags(run)
    params.update({f"sweep.{k}": json.dumps(v) if isinstance(v, dict | list) else v
                   for k, v in sweep.to_dict().items() if k in ("num_samples", "scheduler", "search", "space")})
    tags.update({SWEEP_TAG: prep.name, "metric": prep.metric})
    parent = open_run(run.tracking_uri, cfg.experiment, prep.name, kind="sweep", display_name=f"sweep · {prep.name}",
                      params=params, tags=tags, artifact_root=prep.artifact_root, budget_s=cfg.tracking_outage_s,
                      description=f"Sweep {prep.name}: {_describe(prep.dims)}; {sweep.scheduler} on {prep.metric}.")
    try:
        zero = zero_shot(prep, log) if sweep.zero_shot else None
        progress = (SweepProgress(prep.name, prep.total_trials, cfg.max_steps, prep.metric) if sweep.pack == 1
                    else PackProgress(prep.name, prep.total_trials, cfg.max_steps, prep.metric))
        grid = _run_tuner(prep, parent.run_id, log, [
            TrialRunStatus(run.tracking_uri, cfg.experiment, prep.name, prep.metric, sweep.mode, sweep.scheduler,
                           cfg.tracking_outage_s), progress])
    except BaseException as err:
        status, error = status_of_error(err), f"{type(err).__name__}: {err}"[:1000]
        try:  # the trials this sweep was running end with it (a re-run of the sweep name resumes them)
            close_open_children(run.tracking_uri, parent.run_id, status, error=f"the sweep stopped: {error}",
                                budget_s=cfg.tracking_outage_s)
        finally:
            close_run(run.tracking_uri, parent.run_id, status, error=error, budget_s=cfg.tracking_outage_s)
        raise
    rows = [row for res in grid for row in ([_trial_row(prep, res)] if sweep.pack == 1 else member_rows(prep, res))]
    outcome = SweepOutcome(prep, rows, None, zero, parent.run_id, time.time() - t0)
    ranked = [r for r in outcome.ranked if r.score is not None]
    outcome.best = ranked[0] if ranked else None
    outcome.plot = summarise(prep, outcome)
    return outcome


def _run_tuner(prep: PreparedSweep, parent_run_id: str, log, callbacks: list):
    run, cfg, sweep = prep.base, prep.base.config, prep.sweep
    resources, fits = trial_resources(run, sweep.cpus_per_worker)
    concurrent = sweep.max_concurrent_trials or fits
    packed, worker_cpus = sweep.pack != 1, sweep.cpus_per_worker
    if packed:  # a pack stands in for up to `concurrent` trials side by side: it gets their CPUs, not one's
        k = pack_size(prep)
        if worker_cpus:
            worker_cpus *= min(k, concurrent)
        concurrent = max(1, concurrent // k)
    ctx = SweepContext(prep.name, str(prep.trials_storage), parent_run_id, str(prep.artifact_root),
                       worker_cpus, driver_env(), prep.metric, sweep.pack_rows)
    trainable = (tune.with_parameters(adept_trial, base=run, ctx=ctx) if not packed else
                 tune.with_parameters(adept_pack_trial, base=run, ctx=ctx, rungs=rung_keeper(prep)))
    trainable = tune.with_resources(trainable, resources)
    path = str(prep.storage)
    run_config = tune.RunConfig(name=prep.name, storage_path=str(Path(cfg.storage_path)), verbose=0,
                                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                callbacks=callbacks)
    forget_manifest(prep.storage)  # Tune now changes its files: a driver killed from here on leaves no manifest
    if tune.Tuner.can_restore(path):
        log(f"[adept] resuming sweep {prep.name!r} from {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        set_restored_callbacks(tuner, callbacks)  # not the pickled ones of the first run (their clock, their URI)
    elif packed:
        packs = -(-prep.total_trials // k)
        log(f"[adept] sweep {prep.name!r}: {prep.total_trials} trial(s) of {_describe(prep.dims)} in {packs} "
            f"pack(s) of up to {k} (one backbone per pack); {sweep.search} search, {sweep.scheduler} on "
            f"{prep.metric} ({sweep.mode}) per trial; {concurrent} pack(s) at a time, each {cfg.num_workers} worker(s)")
        if sweep.search == "optuna":  # TPE suggests members one by one: the packs are filled as Tune asks
            space, search = {}, ConcurrencyLimiter(pack_searcher(prep, k), max_concurrent=concurrent)
        else:  # the variant generator's members, drawn up front in the unpacked sweep's order
            space = pack_space(draw_members(prep), k)
            search = BasicVariantGenerator(max_concurrent=concurrent)
        tuner = tune.Tuner(trainable, param_space=space, run_config=run_config,
                           tune_config=tune.TuneConfig(num_samples=packs if sweep.search == "optuna" else 1,
                                                       trial_dirname_creator=_trial_dirname, search_alg=search))
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
                                        scheduler=scheduler, search_alg=search, trial_dirname_creator=_trial_dirname,
                                        trial_name_creator=_trial_name),
            run_config=run_config,
        )
    try:
        return tuner.fit()
    finally:
        try:  # what a resume will unpickle, as Tune left it (pipeline/driver/tune/trust.py)
            write_manifest(prep.storage)
        except OSError as err:
            log(f"[adept] could not record Tune's state ({err}); resuming will need --trust-storage")


def scheduler_and_search(prep: PreparedSweep, concurrent: int):
    """Tune's trial scheduler (ASHA or FIFO) and search algorithm (random/grid variants or Optuna TPE)."""
    sweep = prep.sweep
    points = [{ALIASES.get(k, k): v for k, v in p.items()} for p in sweep.points_to_evaluate]
    # ASHA decides only at its rungs, grace_period · reduction_factor^k steps < max_steps; a trial it keeps
    # is never stopped at max_t (stop_last_trials=False): it reaches its final (test) report and ends itself.
    scheduler = (ASHAScheduler(time_attr="step", max_t=prep.base.config.max_steps - 1, grace_period=prep.grace_period,
                               reduction_factor=sweep.reduction_factor, stop_last_trials=False)
                 if sweep.scheduler == "asha" else FIFOScheduler())
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch  # optional: the `tune` extra

        return scheduler, OptunaSearch(seed=sweep.seed, points_to_evaluate=points or None)
    return scheduler, BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrent,
                                            points_to_evaluate=points or None)


def _describe(dims: list[Dimension]) -> str:
    parts = []
    for d in dims:
        v = d.values
        if d.key == TOGETHER:
            parts.append(f"together~{d.kind}[{len(v)} settings of {'/'.join(d.keys)}]")
            continue
        parts.append(f"{d.key}={v[0]}" if d.kind == "constant" else
                     f"{d.key}~{d.kind}{list(v)}" if d.kind in ("choice", "grid") else f"{d.key}~{d.kind}[{v[0]:g}, {v[1]:g}]")
    return ", ".join(parts) or "the base config"


def _trial_row(prep: PreparedSweep, res) -> TrialRow:
    cfg = prep.base.config
    trial_id = Path(res.path).name
    df = res.metrics_dataframe
    params = flat_params({k: res.config[k] for k in (d.key for d in prep.dims) if k in (res.config or {})})
    trial = prep.base.with_config(trial_config(cfg, params))
    score = best_step = last_step = adapter = step_s = None
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
        if "perf_step_s" in df and df["perf_step_s"].notna().any():
            step_s = float(df["perf_step_s"].dropna().median())
        if "checkpoint_path" in df:
            paths = df["checkpoint_path"].dropna()
            if len(paths) and (Path(paths.iloc[-1]) / "best_adapter").is_dir():
                adapter = str(Path(paths.iloc[-1]) / "best_adapter")
    run_name = f"{prep.name}-{trial_id}"
    found = find_run(prep.base.tracking_uri, experiment_id(prep.base.tracking_uri, cfg.experiment, prep.artifact_root),
                     run_name)
    if not test and found is not None:  # Tune missed the final report (see callbacks.TrialRunStatus); MLflow has it
        test = {k.removeprefix("test/"): v for k, v in found.data.metrics.items() if k.startswith("test/")}
    if res.error is not None:
        status = "error"
    elif completed(res.metrics) or test:
        status = "completed"
    else:
        status = "stopped"
    error = None
    if res.error is not None:
        error = (str(res.error).strip().splitlines() or [type(res.error).__name__])[-1][:300]
    return TrialRow(trial_id, status, params, trial.r, trial.trainable_params, score, best_step, last_step, test, run_name,
                    found.info.run_id if found else None, adapter, error, step_s)


# ---------------------------------------------------------------------------------------------- zero-shot
def zero_shot(prep: PreparedSweep, log=print) -> dict[str, float]:
    """The backbone alone (no adapter) on the sweep's validation rows, evaluated as the trials are.

    Runs as a Ray task with a trial worker's resources; cached beside the sweep's state.
    """
    cache = prep.storage / ZERO_SHOT_FILE
    if cache.is_file():
        return json.loads(cache.read_text())
    cfg = prep.base.config
    log(f"[adept] zero-shot: scoring {cfg.backbone} without an adapter on the validation split "
        f"({cfg.max_eval_examples or 'all'} rows, {cfg.eval_mode}) ...")
    t0 = time.time()
    cpus = prep.sweep.cpus_per_worker or cpus_per_worker(cfg)
    task = ray.remote(num_cpus=cpus, num_gpus=1 if cfg.use_gpu else 0)(_zero_shot_task)
    metrics = ray.get(task.remote(prep.base, driver_env()))
    log(f"[adept] zero-shot: {metrics} in {time.time() - t0:.0f} s")
    cache.write_text(json.dumps(metrics))
    return metrics


def _zero_shot_task(run: ResolvedRun, env: dict[str, str]) -> dict[str, float]:
    apply_driver_env(env)
    configure_worker_logging()
    use_assigned_cpus()
    cfg = run.config
    model, tokenizer, _ = load_backbone(cfg.backbone, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    model.to("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    validation = run.task.get_split("validation", max_examples=cfg.max_eval_examples)
    bare = dataclasses.replace(run.eval, pad_to_length=None)  # no adapter: DePT's fixed length s does not apply
    return evaluate(model, tokenizer, run.task, validation, bare).metrics
