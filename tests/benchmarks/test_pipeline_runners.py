"""The item-3 extension point: a registered runner gets the same TrainWork and is compared to the bare loop."""

import bench_pipeline  # benchmarks/ is on pytest's pythonpath (pyproject)
import pytest


def test_registered_runner_is_compared_with_the_bare_loop(monkeypatch):
    monkeypatch.setattr(bench_pipeline, "RUNNERS", dict(bench_pipeline.RUNNERS))
    seen = []

    def twice_as_slow(work):
        seen.append(work)
        bare = bench_pipeline.run_bare_loop(work)
        return bench_pipeline.RunnerResult("slow", bare.startup_s + 1.0, [2 * t for t in bare.step_s],
                                           bare.tokens_per_step, {"label": "plumbing check"})

    bench_pipeline.register_runner("slow", twice_as_slow)
    work = bench_pipeline.TrainWork(backbone="tiny", batch_size=1, length=8, warmup_steps=1, measured_steps=5)
    rows = bench_pipeline.run(work, ["slow"], log=lambda msg: None)
    assert [r["runner"] for r in rows] == ["bare", "slow"] and seen == [work]
    assert rows[0]["ratio"]["median"] == pytest.approx(1.0)
    assert rows[1]["ratio"]["n"] == 5 and rows[1]["startup_s"] > 1.0 and rows[1]["tokens_per_s"] > 0
    with pytest.raises(ValueError, match="unknown pipeline runner"):
        bench_pipeline.run(work, ["nope"], log=lambda msg: None)


def test_runner_modules_beside_run_py_are_loaded():
    assert "runner_ray" in bench_pipeline.load_runner_modules()
    assert {"bare", "ray1", "ray_zero2"} <= set(bench_pipeline.RUNNERS)


def test_too_few_fit_steps_is_refused_before_anything_runs(capsys):
    import importlib

    run = importlib.import_module("run")
    with pytest.raises(SystemExit):
        run.parse_args(["--items", "fit", "--fit-steps", "5"])
    assert "--fit-steps must be >= 6" in capsys.readouterr().err
    assert run.parse_args(["--items", "fit", "--fit-steps", "6"]).fit_steps == 6
