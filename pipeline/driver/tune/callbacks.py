"""Tune callbacks on the sweep's driver: each trial's MLflow run gets its final status the moment Tune decides
it, and a progress line tells the user where the sweep stands.

Status rules (`pipeline.tracking.runs`): a trial that reached its final report is FINISHED; one the
scheduler stopped is FINISHED too, tagged `adept.stopped_early` and `adept.stopped_at_step`; one that
failed for good (after Tune's retries) is FAILED with its error. Nothing else closes trial runs.
"""

from __future__ import annotations

import logging
import time

from ray.tune import Callback

from pipeline.core.progress import clock
from pipeline.tracking import (
    FAILED,
    FINISHED,
    STOPPED_AT_TAG,
    STOPPED_EARLY_TAG,
    clear_stopped_early,
    close_run,
    find_run,
)
from pipeline.tracking.store import experiment_id

log = logging.getLogger("adept")


def trial_index(trial_id: str) -> int:
    """Tune's trial ids end in a counter: "3f2a1_00003" -> 3."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def completed(result: dict | None) -> bool:
    """A trial's last result is its final report (test metrics) only when the fit ran to the end."""
    return any(k.startswith("test_") for k in (result or {}))


class TrialRunStatus(Callback):
    """Close each trial's run with the status Tune decided (see the module docstring)."""

    def __init__(self, uri: str, experiment: str, sweep: str, metric: str, mode: str, scheduler: str,
                 budget_s: float):
        self.uri, self.experiment, self.sweep, self.metric, self.mode = uri, experiment, sweep, metric, mode
        self.scheduler, self.budget_s = scheduler, budget_s

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        tags = self._score_tags(trial)
        stopped = not completed(result) and not self._logged_test_metrics(trial)
        if stopped:
            tags.update({STOPPED_EARLY_TAG: self.scheduler, STOPPED_AT_TAG: str(result.get("step", "?"))})
        run_id = self._close(trial, FINISHED, tags=tags)
        # The STOP reaches the workers after this: one past its rung may still finish and log its test
        # metrics. Tagged first, looked again after (the worker does the reverse: runs.clear_stopped_early).
        if stopped and run_id is not None and self._logged_test_metrics(trial):
            try:
                clear_stopped_early(self.uri, run_id, budget_s=self.budget_s)
            except Exception as err:  # noqa: BLE001 - a tracking problem must not stop the sweep
                log.warning(f"[adept] could not untag the MLflow run of trial {trial.trial_id}: {err}")

    def _logged_test_metrics(self, trial) -> bool:
        """The fit ran to its test split even if Tune missed its final report: Ray Train's last report can reach
        Tune after the trial function returned (seen on a fast machine), while the worker logs the test metrics
        to MLflow before it reports."""
        try:
            run = find_run(self.uri, experiment_id(self.uri, self.experiment), f"{self.sweep}-{trial.trial_id}")
        except Exception:  # noqa: BLE001 - a tracking problem must not stop the sweep
            return False
        return run is not None and any(k.startswith("test/") for k in run.data.metrics)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, FAILED, error=trial_error(trial), tags=self._score_tags(trial))

    def _score_tags(self, trial) -> dict[str, str]:
        score = (getattr(trial, "metric_analysis", {}) or {}).get(self.metric, {}).get(self.mode)
        return {"adept.score": f"{score:.6g}"} if score is not None else {}

    def _close(self, trial, status: str, error: str | None = None, tags: dict | None = None) -> str | None:
        """Close the trial's run; its id, or None when there is none (or MLflow could not be reached)."""
        key = f"{self.sweep}-{trial.trial_id}"
        try:
            run = find_run(self.uri, experiment_id(self.uri, self.experiment), key)
            if run is not None:
                close_run(self.uri, run.info.run_id, status, error=error, tags=tags, budget_s=self.budget_s)
                return run.info.run_id
        except Exception as err:  # noqa: BLE001 - a tracking problem must not stop the sweep
            log.warning(f"[adept] could not close the MLflow run of trial {trial.trial_id}: {err}")
        return None


def trial_error(trial) -> str:
    """The last line of a failed trial's error (Tune keeps the traceback in a file)."""
    text = ""
    error_file = getattr(trial, "error_file", None)
    if error_file:
        try:
            with open(error_file) as fh:
                text = fh.read()
        except OSError:
            text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else "the trial failed (see its Ray logs)"


def trial_report_callback():
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


class SweepProgress(Callback):
    """One line at most every `every_s`: trials done / running, best score, elapsed, ETA (an upper bound:
    the scheduler may stop trials early)."""

    def __init__(self, name: str, total_trials: int, max_steps: int, metric: str, every_s: float = 30.0):
        self.name, self.total, self.max_steps, self.metric, self.every_s = name, total_trials, max_steps, metric, every_s
        self.t0 = self.last = time.monotonic()
        self.steps: dict[str, int] = {}
        self.best: tuple[float, str] | None = None
        self.done = 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.steps[trial.trial_id] = int(result.get("step", 0))
        value = result.get(self.metric)
        if value is not None and (self.best is None or value > self.best[0]):
            self.best = (float(value), trial.trial_id)
        self._maybe_print(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._print(trials, ended=trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._print(trials, ended=trial)

    def _maybe_print(self, trials) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self._print(trials)

    def _print(self, trials, ended=None) -> None:
        """`ended`: the trial whose end is being reported (Tune calls back before it updates its status: without
        it the line would repeat the previous one, the ended trial still counted as running)."""
        self.last = time.monotonic()
        elapsed = self.last - self.t0
        finished = [t for t in trials if t.status in ("TERMINATED", "ERROR") or t is ended]
        running = sum(t.status == "RUNNING" and t is not ended for t in trials)
        done_steps = sum(self.steps.values())
        remaining = sum(self.max_steps - self.steps.get(t.trial_id, 0) for t in trials if t not in finished)
        remaining += self.max_steps * max(0, self.total - len(trials))
        eta = f"ETA ≤ {clock(remaining * elapsed / done_steps)}" if done_steps else "ETA ?"
        best = (f" · best {self.metric} {self.best[0]:.2f} (t{trial_index(self.best[1]):02d})"
                if self.best else "")
        log.info(f"[adept] sweep {self.name}: {len(finished)}/{self.total} trials done, {running} running{best} · "
                 f"{clock(elapsed)} elapsed · {eta}")
