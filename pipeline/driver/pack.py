"""One pack to the end: K members (ResolvedRuns over one task and backbone) trained by ONE Ray Train worker group
that holds the backbone once (pipeline.worker.pack_recipe), each member in its own MLflow run.

    result = run_pack(members, "sweep-a1b2c3")                      # a pack of fits, each its own top-level run
    result = run_pack(members, name, links=[TrialLink, ...])        # a sweep's pack: each member a trial's run

The pack's checkpoints live in `<storage_path>/<pack name>/`; each member's journal in its own run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core.errors import UserError
from pipeline.core.resolve import ResolvedRun
from pipeline.driver.launch import TrialLink, make_trainer, open_fit_run
from pipeline.driver.ray_setup import init_ray
from pipeline.tracking import STOPPED_AT_TAG, STOPPED_EARLY_TAG, close_run, status_of_error

PACK_TAG = "adept.pack"
# What every member of a pack must share: they run in one batch, in one worker group, on one tokenisation.
SHARED = ("task", "backbone", "dtype", "trust_remote_code", "num_workers", "use_gpu", "placement_strategy",
          "storage_path", "mlflow_uri", "experiment", "max_source_length", "max_target_length", "max_train_examples",
          "max_eval_examples", "eval_mode", "eval_batch_size", "precision", "max_steps", "eval_steps", "log_steps",
          "grad_accum", "deepspeed", "zero_stage", "zero3_live_params", "offload")


def check_pack(members: Sequence[ResolvedRun]) -> None:
    """Refuse a pack whose members cannot share a batch, naming the setting (before anything starts)."""
    if not members:
        raise UserError("a pack needs at least one member.")
    first = members[0].config
    for member in members[1:]:
        for key in SHARED:
            if getattr(member.config, key) != getattr(first, key):
                raise UserError(f"the members of a pack must share {key} (one has {getattr(first, key)!r}, another "
                                f"{getattr(member.config, key)!r}): take {key} out of the sweep's space, or set "
                                "sweep.pack: 1.")
    if first.offload:
        raise UserError("offload: true moves optimizer state to the CPU; a pack's optimizer state is its adapters' "
                        "(kilobytes, one AdamW per member): set offload: false, or sweep.pack: 1.")


@dataclass
class PackResult:
    """Ray's Result of the pack's fit and each member's MLflow run id and final status."""

    result: object
    run_ids: list[str]
    statuses: list[str]


def run_pack(members: Sequence[ResolvedRun], pack_name: str, links: Sequence[TrialLink] | None = None,
             callbacks: list | None = None, worker_cpus: int | None = None, rungs=None,
             metric: str | None = None, rows_per_forward: int | None = None) -> PackResult:
    """Train the pack; every member's MLflow run is closed with its own status (a diverged member FAILED, the
    others FINISHED; one ASHA stopped FINISHED and tagged `adept.stopped_early`). Raises what Ray Train raises when
    the pack's fit itself fails (all members then FAILED).

    rows_per_forward: the most rows one forward pass takes (whole members; 0 = every member in one pass). None:
    one pass on a GPU (the batch that fills it), one member per pass on a CPU (one trial's activations in memory
    at a time; a CPU gains little from larger batches).
    rungs: a sweep's `RungKeeper` (pipeline.driver.tune.packs): at each validation it decides, member by member,
    with Tune's ASHA on `metric` (the Ray key, e.g. "val_accuracy"), which members leave the batch.
    """
    check_pack(members)
    if links is None:  # a sweep's pack runs inside a Tune trial, on the sweep's Ray
        init_ray(members[0].config.num_workers)
    run_ids = [_open_member_run(m, k, pack_name, None if links is None else links[k]) for k, m in enumerate(members)]
    first = members[0]
    error: BaseException | None = None
    result = None
    try:
        trainer = make_trainer(first, None, callbacks=callbacks, worker_cpus=worker_cpus,
                               pack={"members": list(members), "mlflow_run_ids": run_ids, "pack_name": pack_name,
                                     "rungs": rungs, "metric": metric,
                                     "rows_per_forward": rows_per_forward if rows_per_forward is not None
                                     else (0 if first.config.use_gpu else 1)})
        result = trainer.fit()
        error = result.error
        if error is not None:
            raise error
    except BaseException as err:
        error = err
        raise
    finally:
        statuses = _close_member_runs(members, run_ids, result, error)
    return PackResult(result, run_ids, statuses)


def _open_member_run(member: ResolvedRun, k: int, pack_name: str, link: TrialLink | None) -> str:
    return open_fit_run(member, link, tags={PACK_TAG: pack_name, "adept.pack_member": str(k)}).run_id


def _close_member_runs(members, run_ids, result, error) -> list[str]:
    metrics = (getattr(result, "metrics", None) or {}) if error is None else {}
    statuses = []
    for k, (member, run_id) in enumerate(zip(members, run_ids, strict=True)):
        if error is not None:
            status, text = status_of_error(error), f"{type(error).__name__}: {str(error).strip()[-500:]}"
        elif metrics.get(f"m{k}_status") == "failed":
            status, text = "FAILED", metrics.get(f"m{k}_error") or "diverged"
        elif metrics.get(f"m{k}_tracking_unsent"):
            status, text = "FAILED", metrics.get(f"m{k}_tracking_message")
        else:
            status, text = "FINISHED", None
        tags = None
        if metrics.get(f"m{k}_status") == "stopped":
            tags = {STOPPED_EARLY_TAG: "asha", STOPPED_AT_TAG: str(metrics.get(f"m{k}_stopped_at", "?"))}
        close_run(member.tracking_uri, run_id, status, error=text, tags=tags, budget_s=member.config.tracking_outage_s)
        statuses.append(status)
    return statuses


__all__ = ["PACK_TAG", "PackResult", "check_pack", "run_pack"]
