"""The logged throughput counts training time only: time spent validating in the window is left out."""

import time

import pytest

from pipeline.worker.recipe import Throughput


def test_validation_time_is_not_counted():
    # 10 s since the window opened, 8 of them validating: 200 tokens in 2 s of training
    window = Throughput(loss=4.0, micro=4, tokens=200, samples=8, t0=time.perf_counter() - 10.0, paused=8.0)
    values = window.summary(world=1)
    assert values["train/loss"] == 1.0
    assert values["perf/tokens_per_s"] == pytest.approx(100.0, rel=0.02)
    assert values["perf/samples_per_s"] == pytest.approx(4.0, rel=0.02)
    assert values["perf/step_s"] == pytest.approx(0.5, rel=0.02)


def test_add_accumulates_a_window():
    window = Throughput()
    window.add(2.0, tokens=10, samples=2)
    window.add(4.0, tokens=30, samples=2)
    assert (window.micro, window.tokens, window.samples) == (2, 40, 4)
    assert window.summary(world=1)["train/loss"] == 3.0


def test_a_pack_member_is_charged_its_share_not_the_wall():
    # a member of a pack: 10 s of wall in the window, but its share of the pack's two micro-steps is 0.3 + 0.5 s
    window = Throughput(t0=time.perf_counter() - 10.0)
    window.add(1.0, tokens=30, samples=2, seconds=0.3)
    window.add(1.0, tokens=50, samples=2, seconds=0.5)
    values = window.summary(world=1)
    assert values["perf/step_s"] == pytest.approx(0.4)
    assert values["perf/tokens_per_s"] == pytest.approx(100.0)
