"""A packed sweep: the sweep's trials ("members") drawn by Tune's own variant generator, grouped K at a time into
packs, each pack ONE Tune trial whose Ray Train worker group holds the backbone once (pipeline.driver.pack).

    members = draw_members(prep)                 # exactly the configs the unpacked sweep's trials get, in order
    space = {"pack": tune.grid_search(chunks)}   # Tune runs the packs: retries, max_failures, resume as for trials
    PackSearcher(OptunaSearch(...), k, total)    # search: optuna -- each pack's members are K of TPE's suggestions
    RungKeeper (a Ray actor)                     # ASHA inside packs: Tune's ASHAScheduler decides per member

Early stopping: at each evaluation every running member's score goes to one `RungKeeper` per sweep, which holds a
real `ray.tune.schedulers.ASHAScheduler` and asks it, member by member, what it asks for a trial; a member it stops
leaves the batch at the next step (its share of the compute is released at once). Users see members: each has its
own MLflow child run (tagged with its pack), its own row in the summary, and the progress line counts members.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, Searcher

from pipeline.core.config import apply_driver_env
from pipeline.core.progress import clock
from pipeline.core.resolve import ResolvedRun
from pipeline.driver.launch import TrialLink, activation_bytes
from pipeline.driver.pack import run_pack
from pipeline.driver.tune.callbacks import trial_index, trial_report_callback
from pipeline.driver.tune.config import ALIASES, SWEEP_TAG, flat_params, trial_config
from pipeline.driver.tune.report import TrialRow
from pipeline.tracking import experiment_id, find_run, trial_run_name

log = logging.getLogger("adept")

MAX_AUTO_PACK = 32


# ---------------------------------------------------------------------------------------------- before Ray runs
def pack_size(prep) -> int:
    """K: as given, or `auto`: on CPU every trial of the sweep in one pack (up to 32: the backbone is the cost,
    the members are tiny); on GPU as many as half the GPU's memory holds in activations (`activation_bytes`).
    A sweep larger than that limit is split into packs of even size (18 trials, limit 16: two packs of 9)."""
    pack, total = prep.sweep.pack, prep.total_trials
    if pack != "auto":
        return max(1, min(int(pack), total))
    cfg = prep.base.config
    limit = MAX_AUTO_PACK
    if cfg.use_gpu:
        from pipeline.driver.launch import _memory_bytes

        limit = min(limit, int(0.5 * _memory_bytes(True) // max(1, activation_bytes(cfg, prep.base.info))))
    limit = max(1, min(total, limit))
    return math.ceil(total / math.ceil(total / limit))


def draw_members(prep) -> list[dict[str, Any]]:
    """The sweep's trial configs, drawn by Tune's BasicVariantGenerator with the sweep's seed and points: the very
    configs (and order) an unpacked sweep's trials get."""
    points = [{ALIASES.get(k, k): v for k, v in p.items()} for p in prep.sweep.points_to_evaluate]
    generator = BasicVariantGenerator(random_state=prep.sweep.seed, points_to_evaluate=points or None)
    generator.add_configurations({prep.name: {"run": _never_run, "config": prep.param_space,
                                              "num_samples": prep.sweep.num_samples}})
    members = []
    while (trial := generator.next_trial()) is not None:
        members.append(dict(trial.config))
    return members


def _never_run(config):  # the generator needs a trainable to name; members run in packs
    raise RuntimeError("draw_members' placeholder trainable is never run")


class PackSearcher(Searcher):
    """A Tune Searcher that fills packs from another Searcher (Optuna): a pack's K members are K of its suggestions,
    and each member's validation score goes back to it as that suggestion's result (so TPE learns from members)."""

    def __init__(self, searcher: Searcher, k: int, total: int, metric: str):
        super().__init__()
        self.searcher, self.k, self.total, self.score_key = searcher, k, total, metric
        self.drawn = 0
        self.packs: dict[str, list[str]] = {}  # Tune trial (pack) -> the inner searcher's member ids
        self.scores: dict[str, float] = {}  # member id -> its latest validation score

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the wrapped searcher was given the space, metric and mode when it was built

    def get_state(self) -> dict:
        """Tune saves a wrapper's state with the experiment (the wrapped searcher saves its own)."""
        return {"drawn": self.drawn, "packs": self.packs, "scores": self.scores}

    def set_state(self, state: dict) -> None:
        self.drawn, self.packs, self.scores = state["drawn"], state["packs"], state["scores"]

    def suggest(self, trial_id: str):
        if self.drawn >= self.total:
            return Searcher.FINISHED
        ids, members = [], []
        for j in range(min(self.k, self.total - self.drawn)):
            member_id = f"{trial_id}_m{j}"
            params = self.searcher.suggest(member_id)
            if params is None or params == Searcher.FINISHED:
                break
            ids.append(member_id)
            members.append(params)
        if not members:
            return None
        index, self.drawn = self.drawn, self.drawn + len(members)
        self.packs[trial_id] = ids
        return {"pack": {"index": index, "members": members}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for j, member_id in enumerate(self.packs.get(trial_id, [])):
            value = result.get(f"m{j}_{self.score_key}")
            if isinstance(value, int | float) and math.isfinite(value):
                self.scores[member_id] = float(value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result:
            self.on_trial_result(trial_id, result)
        for member_id in self.packs.pop(trial_id, []):
            score = self.scores.pop(member_id, None)
            self.searcher.on_trial_complete(member_id, result=None if score is None else {self.score_key: score},
                                            error=error or score is None)


def pack_searcher(prep, k: int) -> PackSearcher:
    """Optuna's TPE (the sweep's seed and points), filling packs of k."""
    from ray.tune.search.optuna import OptunaSearch  # optional: the `tune` extra

    points = [{ALIASES.get(key, key): v for key, v in p.items()} for p in prep.sweep.points_to_evaluate]
    inner = OptunaSearch(metric=prep.metric, mode=prep.sweep.mode, seed=prep.sweep.seed,
                         points_to_evaluate=points or None)
    inner.set_search_properties(prep.metric, prep.sweep.mode, prep.param_space)  # Tune's domains -> Optuna's
    return PackSearcher(inner, k, prep.total_trials, prep.metric)


def pack_space(members: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """Tune's param_space of a packed sweep: one grid value per pack, each the list of its members' params."""
    chunks = [{"index": start, "members": members[start:start + k]} for start in range(0, len(members), k)]
    return {"pack": tune.grid_search(chunks)}


# ---------------------------------------------------------------------------------------------- ASHA per member
@ray.remote(num_cpus=0)
class RungKeeper:
    """Tune's ASHAScheduler, asked member by member (a member plays the trial: it only needs a `trial_id`)."""

    def __init__(self, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float):
        self.scheduler = ASHAScheduler(time_attr="step", metric=metric, mode=mode, max_t=max_t,
                                       grace_period=grace_period, reduction_factor=reduction_factor,
                                       stop_last_trials=False)
        self.metric, self.known = metric, set()

    def decide(self, member_id: str, step: int, score: float) -> bool:
        """True: the member continues; False: ASHA stops it at this rung."""
        member = _Member(member_id)
        if member_id not in self.known:
            self.scheduler.on_trial_add(None, member)
            self.known.add(member_id)
        action = self.scheduler.on_trial_result(None, member, {"step": step, self.metric: score})
        return action != TrialScheduler.STOP


@dataclass(frozen=True)
class _Member:
    trial_id: str


def rung_keeper(prep):
    """The sweep's RungKeeper when its scheduler is ASHA, else None (FIFO: every member runs to the end)."""
    if prep.sweep.scheduler != "asha":
        return None
    return RungKeeper.remote(prep.metric, prep.sweep.mode, prep.base.config.max_steps - 1, prep.grace_period,
                             prep.sweep.reduction_factor)


# ---------------------------------------------------------------------------------------------- the Tune trial
def adept_pack_trial(params: dict, *, base: ResolvedRun, ctx, rungs=None) -> None:
    """One Tune trial = one pack: its members' fits in one Ray Train worker group, each in its own MLflow run."""
    apply_driver_env(ctx.env)
    trial_id = tune.get_context().get_trial_id()
    pack = params["pack"]
    members, links = [], []
    for k, member_params in enumerate(pack["members"]):
        run = base.with_config(trial_config(base.config, member_params, name=member_run_key(ctx.sweep, trial_id, k),
                                            storage_path=ctx.trials_storage))
        members.append(run)
        links.append(TrialLink(parent_run_id=ctx.parent_run_id, artifact_root=ctx.artifact_root,
                               display_name=trial_run_name(pack["index"] + k, flat_params(member_params), run.r, ctx.sweep,
                                                           m=run.config.num_virtual_tokens),
                               tags={SWEEP_TAG: ctx.sweep, "ray.trial_id": trial_id}))
    run_pack(members, f"{ctx.sweep}-{trial_id}", links=links, callbacks=[trial_report_callback()],
             worker_cpus=ctx.worker_cpus, rungs=rungs, metric=ctx.metric, rows_per_forward=ctx.pack_rows)


def member_run_key(sweep: str, trial_id: str, k: int) -> str:
    return f"{sweep}-{trial_id}-m{k}"


# ---------------------------------------------------------------------------------------------- afterwards
def member_rows(prep, res) -> list[TrialRow]:
    """One summary row per member of a pack's Tune result (its m<k>_* columns)."""
    cfg = prep.base.config
    trial_id = Path(res.path).name
    pack = (res.config or {}).get("pack") or {"index": 0, "members": []}
    df = res.metrics_dataframe if res.metrics_dataframe is not None else pd.DataFrame()
    last = res.metrics or {}
    checkpoint = Path(df["checkpoint_path"].dropna().iloc[-1]) if "checkpoint_path" in df and \
        df["checkpoint_path"].notna().any() else None
    exp = experiment_id(prep.base.tracking_uri, cfg.experiment, prep.artifact_root)
    rows = []
    for k, params in enumerate(pack["members"]):
        run = prep.base.with_config(trial_config(cfg, params))
        column = f"m{k}_{prep.metric}"
        score = best_step = last_step = step_s = None
        if column in df and df[column].notna().any():
            values = df[column].dropna()
            best_index = values.idxmax() if prep.sweep.mode == "max" else values.idxmin()
            score = float(values[best_index])
            step = df.loc[best_index, f"m{k}_best_step"] if f"m{k}_best_step" in df else None
            best_step = int(step) if step is not None and not pd.isna(step) else None
            last_step = int(df.loc[values.index[-1], "step"])
        if f"m{k}_perf_step_s" in df and df[f"m{k}_perf_step_s"].notna().any():
            step_s = float(df[f"m{k}_perf_step_s"].dropna().median())
        test = {name.removeprefix(f"m{k}_test_"): float(v) for name, v in last.items()
                if name.startswith(f"m{k}_test_") and v == v}
        member_status = last.get(f"m{k}_status")
        error = (last.get(f"m{k}_error") or None) if member_status == "failed" else None
        if res.error is not None:
            status, error = "error", (str(res.error).strip().splitlines() or ["error"])[-1][:300]
        elif member_status == "failed":
            status = "error"
        elif test:
            status = "completed"
        else:
            status = "stopped"
        key = member_run_key(prep.name, trial_id, k)
        found = find_run(prep.base.tracking_uri, exp, key)
        adapter = checkpoint / "members" / str(k) / "best_adapter" if checkpoint is not None else None
        flat = flat_params(params)
        rows.append(TrialRow(f"{trial_id}-m{k}", status, {key: flat[key] for d in prep.dims for key in d.keys if key in flat},
                             run.r, run.trainable_params, score, best_step, last_step, test, key,
                             found.info.run_id if found else None,
                             str(adapter) if adapter is not None and adapter.is_dir() else None, error, step_s))
    return rows


class PackProgress(tune.Callback):
    """The sweep's progress line, counting members: done / running, best member score, elapsed, ETA."""

    def __init__(self, name: str, total_members: int, max_steps: int, metric: str, every_s: float = 30.0):
        self.name, self.total, self.max_steps, self.metric, self.every_s = name, total_members, max_steps, metric, every_s
        self.t0 = self.last = time.monotonic()
        self.packs: dict[str, dict] = {}
        self.best: tuple[float, str] | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.packs[trial.trial_id] = {"step": int(result.get("step", 0)), "members": int(result.get("members", 0)),
                                      "running": int(result.get("members_running", 0))}
        for key, value in result.items():
            if key.endswith(f"_{self.metric}") and key.startswith("m") and isinstance(value, int | float) \
                    and math.isfinite(value) and (self.best is None or value > self.best[0]):
                self.best = (float(value), f"{trial_index(trial.trial_id)}-{key.split('_', 1)[0]}")
        if time.monotonic() - self.last >= self.every_s:
            self._print()

    def on_trial_complete(self, iteration, trials, trial, **info):
        entry = self.packs.setdefault(trial.trial_id, {"step": self.max_steps, "members": 0, "running": 0})
        entry["running"], entry["done"] = 0, True
        self._print()

    on_trial_error = on_trial_complete

    def _print(self) -> None:
        self.last = time.monotonic()
        elapsed = self.last - self.t0
        done = sum(p["members"] - p["running"] for p in self.packs.values())
        running = sum(p["running"] for p in self.packs.values() if not p.get("done"))
        best = f" · best {self.metric} {self.best[0]:.2f} (pack {self.best[1]})" if self.best else ""
        log.info(f"[adept] sweep {self.name}: {done}/{self.total} trials done, {running} running in "
                 f"{sum(not p.get('done') for p in self.packs.values())} pack(s){best} · {clock(elapsed)} elapsed")


__all__ = ["PackProgress", "PackSearcher", "RungKeeper", "adept_pack_trial", "draw_members", "pack_searcher", "member_rows",
           "pack_size", "pack_space", "rung_keeper"]
