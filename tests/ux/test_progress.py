"""Progress lines: step/total, percent, elapsed and ETA from the training pace (evaluation time left out)."""

import logging

import pytest

from pipeline.core.progress import EvalProgress, TrainProgress, clock

pytestmark = pytest.mark.ux


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_clock_format():
    assert clock(75) == "1:15" and clock(3725) == "1:02:05" and clock(-3) == "0:00"


def test_eta_uses_the_training_pace_of_this_attempt():
    now = Clock()
    progress = TrainProgress(total_steps=100, start_step=20, now=now)  # a resumed fit starts at step 20
    now.t += 40  # 10 steps in 30 s of training + 10 s of validation
    progress.paused = 10
    line = progress.line(30, "loss 0.5")
    assert line == "step 30/100 (30%) · loss 0.5 · 0:40 elapsed · ETA 3:30"  # 70 steps × 3 s


def test_evaluation_reports_start_progress_and_end_only_on_long_splits():
    now, lines = Clock(), []
    progress = EvalProgress("validation", 1000, every_s=10, emit=lines.append, now=now)
    progress.start()
    now.t += 5
    progress(100)  # too soon for a line
    now.t += 15
    progress(400)
    now.t += 30
    progress.end("accuracy 81.00")
    assert lines == ["validation: 1000 rows ...",
                     "validation: 400/1000 rows (40%) · 0:20 elapsed · ETA 0:30",
                     "validation done in 0:50: accuracy 81.00"]


def test_sweep_progress_counts_a_trial_that_ends_as_done(caplog):
    """Tune reports a trial's end before it changes the trial's status: the line must count it as done, not
    repeat the previous line with the ended trial still running."""
    from types import SimpleNamespace

    from pipeline.driver.tune.callbacks import SweepProgress

    trials = [SimpleNamespace(trial_id=f"abc_0000{i}", status="RUNNING") for i in range(2)]
    progress = SweepProgress("demo", total_trials=3, max_steps=60, metric="val_accuracy", every_s=0.0)
    with caplog.at_level(logging.INFO, logger="adept"):
        progress.on_trial_result(1, trials, trials[0], {"step": 20, "val_accuracy": 70.0})
        progress.on_trial_complete(1, trials, trials[0])  # stopped by ASHA: status still RUNNING here
    first, second = (r.getMessage() for r in caplog.records if "sweep demo" in r.getMessage())
    assert "0/3 trials done, 2 running · best val_accuracy 70.00 (t00)" in first
    assert "1/3 trials done, 1 running" in second
