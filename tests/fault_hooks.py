"""Recipe callbacks the fault tests install (`callbacks:` config key, see pipeline/worker/callbacks.py): the
training step itself holds no test code.

    fit_args(..., *hooks(fail_once_at(25), sleep_each_step(0.15)))      # --set callbacks=[...]
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve()


class FailOnceAt:
    """Raise at `step` once per run: a marker file in the run's storage keeps the retry from failing again."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, recipe) -> None:
        if recipe.state.step != self.step:
            return
        cfg = recipe.cfg
        marker = Path(cfg.storage_path).resolve() / cfg.run_name / f".failure-injected-at-{self.step}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"injected failure at step {self.step} (tests/fault_hooks.py FailOnceAt)")


class SleepEachStep:
    """Pause after every step, so a fault test has time to act (kill a worker, stop the MLflow server)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, recipe) -> None:
        time.sleep(self.seconds)


class HoldUntilTeardownOnce:
    """At `step`, rank `rank` writes its pid to `.holding-rank<rank>` in the run folder and waits (at most
    `seconds`) until its process group is torn down, which is what Ray Train does to the survivors once another
    worker dies, then goes on: a survivor caught between collectives. Once per run (the marker file)."""

    def __init__(self, step: int, rank: int = 0, seconds: float = 120.0):
        self.step, self.rank, self.seconds = step, rank, seconds

    def on_step_end(self, recipe) -> None:
        import torch.distributed as dist

        if recipe.state.step != self.step or recipe.rank != self.rank:
            return
        marker = Path(recipe.cfg.storage_path).resolve() / recipe.cfg.run_name / f".holding-rank{self.rank}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + self.seconds
        while dist.is_initialized() and time.monotonic() < deadline:
            time.sleep(0.005)


def fail_once_at(step: int) -> str:
    return f"{HERE}:FailOnceAt(step={step})"


def sleep_each_step(seconds: float) -> str:
    return f"{HERE}:SleepEachStep(seconds={seconds})"


def hold_until_teardown_once(step: int, rank: int = 0) -> str:
    return f"{HERE}:HoldUntilTeardownOnce(step={step}, rank={rank})"


def hooks(*specs: str) -> list[str]:
    """Job arguments installing the callbacks (JSON is YAML: the specs' commas and colons stay inside strings)."""
    return ["--set", f"callbacks={json.dumps(list(specs))}"]
