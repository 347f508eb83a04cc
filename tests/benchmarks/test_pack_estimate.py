"""The unpacked-wall estimate of a long sweep (bench_pack --estimate-unpacked): its arithmetic on a timeline whose
answer is known by hand. Whether the estimate is near a measured sweep is a benchmark result (benchmarks/README §9:
293 s estimated vs 302 s measured on the tiny compare sweep), never asserted here."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_pack  # noqa: E402


def test_the_slot_is_the_freed_trials_start_to_the_waiting_trials_start():
    # two slots; trial b (run 100 s) ends first at 112, c starts in its slot at 115: slot 105 = run 100 + gap 5
    times = [(10.0, 130.0), (12.0, 112.0), (115.0, 200.0)]
    row = bench_pack.slot_of(times, concurrent=2, wall_s=230.0)
    assert (row["slot_s"], row["gap_s"]) == (103.0, 3.0)  # b started at 12: 115 - 12 = 103, its run 100
    assert row["fixed_s"] == 40.0  # 230 s of wall, 190 s between the first run's start and the last run's end
    assert row["run_s"] == [120.0, 100.0, 85.0]


def test_the_sweep_is_fixed_plus_its_slots_over_the_concurrency_minus_one_gap():
    rows = [{"slot_s": 100.0, "gap_s": 4.0, "fixed_s": 20.0, "trials_in_sweep": 6},
            {"slot_s": 300.0, "gap_s": 6.0, "fixed_s": 22.0, "trials_in_sweep": 6}]
    est = bench_pack.combine(rows, concurrent=2)
    assert est == {"fixed_s": 21.0, "gap_s": 5.0, "estimated_unpacked_wall_s": pytest.approx(21 + 6 * 400 / 2 - 5)}


def test_a_sweep_with_no_trial_waiting_for_a_slot_is_refused_before_it_runs(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("sweep:\n  max_concurrent_trials: 2\n  space:\n    together: {grid: [{method: adept}]}\n"
                      "    seed: {grid: [1, 2]}\n")
    with pytest.raises(ValueError, match="space.seed: 2 seeds leave no trial waiting"):
        bench_pack.estimate_unpacked(config, log=lambda *_: pytest.fail("nothing may run"))


def test_the_cpu_pack_benchmark_times_the_three_ways_on_the_tiny_backbone(capsys):
    import json

    import bench_pack_cpu  # noqa: I001 (from benchmarks/, put on the path above)

    assert bench_pack_cpu.main(["--backbone", "tiny", "--rounds", "1", "--batch", "2", "--length", "8"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["member_step_s"]) == {"alone-1t", "pack-2t", "side-by-side"}
    assert all(s > 0 for s in result["member_step_s"].values())
    assert result["side_by_side_vs_pack"] > 0 and result["alone_vs_pack"] > 0
