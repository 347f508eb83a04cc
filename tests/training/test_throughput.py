"""The logged throughput counts training time only: time spent validating in the window is left out."""

import time
from types import SimpleNamespace

import pytest

from pipeline.config import TrainConfig
from pipeline.train import TrainState, _log_training


class Recorder:
    def __init__(self):
        self.logged = []

    def metrics(self, values, step):
        self.logged.append((step, values))


def test_validation_time_is_not_counted():
    engine = SimpleNamespace(learning_rates=lambda: {"prompt": 0.3, "offset": 1e-4})
    logger = Recorder()
    # 10 s since the window opened, 8 of them validating: 200 tokens in 2 s of training
    window = {"loss": 4.0, "micro": 4, "tokens": 200, "samples": 8, "t0": time.perf_counter() - 10.0, "paused": 8.0}
    _log_training(TrainConfig(r=8), TrainState(step=10), engine, window, logger, rank=1)
    (step, values), = logger.logged
    assert step == 10 and values["train_loss"] == 1.0
    assert values["tokens_per_s"] == pytest.approx(100.0, rel=0.02)
    assert values["samples_per_s"] == pytest.approx(4.0, rel=0.02)
    assert window["paused"] == 0.0 and window["tokens"] == 0  # the next window starts afresh
