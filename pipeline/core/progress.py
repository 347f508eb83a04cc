"""Progress lines a user can act on: step/total, percent, elapsed and ETA; evaluation start, progress, end.

    [adept] step 40/60 (67%) · loss 0.4127 · lr_prompt 8.0e-03 lr_offset 2.4e-04 · 58 tok/s · 1:12 elapsed · ETA 0:41
    [adept] validation: 64 rows ...
    [adept] validation: 256/1000 rows (26%) · 0:31 elapsed · ETA 1:29
    [adept] validation done in 0:08: accuracy 78.12 (best 78.12 at step 40)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("adept")


def clock(seconds: float) -> str:
    """75 -> "1:15", 3725 -> "1:02:05"."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainProgress:
    """ETA of a fit from the pace of the steps this attempt has run (a resumed fit starts mid-way)."""

    def __init__(self, total_steps: int, start_step: int = 0, now: Callable[[], float] = time.monotonic):
        self.total, self.start_step, self.now = total_steps, start_step, now
        self.t0 = now()
        self.paused = 0.0  # evaluation and checkpoint time: counted in elapsed, not in the training pace

    def line(self, step: int, details: str = "") -> str:
        elapsed = self.now() - self.t0
        done = step - self.start_step
        pace = (elapsed - self.paused) / done if done > 0 else None
        eta = clock(pace * (self.total - step)) if pace is not None else "?"
        pct = 100 * step / self.total if self.total else 100
        middle = f" · {details}" if details else ""
        return f"step {step}/{self.total} ({pct:.0f}%){middle} · {clock(elapsed)} elapsed · ETA {eta}"


class EvalProgress:
    """Called after each chunk of an evaluation; logs at most every `every_s` seconds (long splits only)."""

    def __init__(self, split: str, total: int, every_s: float = 10.0, emit: Callable[[str], None] | None = None,
                 now: Callable[[], float] = time.monotonic):
        self.split, self.total, self.every_s, self.now = split, total, every_s, now
        self.emit = emit or (lambda text: log.info(f"[adept] {text}"))
        self.t0 = self.last = now()

    def start(self) -> None:
        self.emit(f"{self.split}: {self.total} rows ...")

    def __call__(self, done: int) -> None:
        t = self.now()
        if t - self.last < self.every_s or done >= self.total:
            return
        self.last = t
        elapsed = t - self.t0
        eta = clock(elapsed / done * (self.total - done)) if done else "?"
        self.emit(f"{self.split}: {done}/{self.total} rows ({100 * done / self.total:.0f}%) · {clock(elapsed)} "
                  f"elapsed · ETA {eta}")

    def end(self, summary: str) -> None:
        self.emit(f"{self.split} done in {clock(self.now() - self.t0)}: {summary}")
