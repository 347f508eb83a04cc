"""The method comparison as configs/compare_methods.yaml runs it: each method at its own learning rates
(`together`) × seeds, packed over one backbone. The user sees one summary row and one MLflow run per trial with the
keys the trial set, and a comparison that picks, per method, the rates with the best mean validation score."""

import csv
import statistics

import pytest
from test_tune_sweep import config, runs

from jobs.tune_adept import main

pytestmark = [pytest.mark.ux, pytest.mark.pack, pytest.mark.slow]

SETTINGS = [{"method": "adept", "prompt_lr": 0.3, "offset_lr": 0.03},
            {"method": "adept", "prompt_lr": 0.01, "offset_lr": 0.001},
            {"method": "prompt", "prompt_lr": 0.3}]


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_methods_at_their_own_rates_packed(synthetic_task, tiny_backbone, tmp_path, capsys):
    sweep = {"name": "cmp", "space": {"together": {"grid": SETTINGS}, "seed": {"grid": [1, 2]}}, "num_samples": 1,
             "scheduler": "fifo", "pack": 6}
    assert main(["--config", str(config(tmp_path, synthetic_task, tiny_backbone, sweep))]) == 0
    out = capsys.readouterr().out
    assert "6 trial(s) of " in out and "together~grid[3 settings of method/" in out and "seed~grid[1, 2]" in out, out
    assert "methods at equal budget" in out

    rows = read(tmp_path / "runs" / "cmp" / "summary" / "summary.csv")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"completed"}
    seen = sorted((r["method"], float(r["prompt_lr"]), r["offset_lr"], r["seed"]) for r in rows)
    assert seen == sorted((s["method"], s["prompt_lr"], str(s.get("offset_lr", "")), seed)
                          for s in SETTINGS for seed in ("1", "2"))

    # per method: the setting with the best mean validation score over its seeds, from the rows above
    means: dict[tuple, list[float]] = {}
    for r in rows:
        means.setdefault((r["method"], r["prompt_lr"], r["offset_lr"]), []).append(float(r["val_accuracy"]))
    table = {r["method"]: r for r in read(tmp_path / "runs" / "cmp" / "summary" / "methods.csv")}
    assert set(table) == {"adept", "prompt"}
    for method, chosen in table.items():
        best = max((k for k in means if k[0] == method), key=lambda k: statistics.fmean(means[k]))
        assert float(chosen["val_accuracy_mean"]) == pytest.approx(statistics.fmean(means[best]))
        assert f"prompt_lr={float(best[1])}" in chosen["config"] and int(chosen["seeds"]) == 2

    client, _, children = runs(tmp_path)
    assert len(children) == 6 and len({c.info.run_name for c in children}) == 6  # the rates tell them apart
    for child in children:
        name, params = child.info.run_name, child.data.params
        assert f"s{params['seed']}" in name.split() and f"plr{float(params['prompt_lr']):.2g}" in name.split()
        assert child.data.tags["adept.pack"]

    # the step column is what a trial costs in the pack: its tokens' share of each pack step, not the whole step
    # (6 members share every step, so the shares add up to the pack's step: its training time over its 20 steps)
    pack_step = children[0].data.metrics["perf/train_s"] / 20
    shares = [float(r["step_s"]) for r in rows]
    assert all(s < pack_step / 2 for s in shares), (shares, pack_step)
    assert sum(shares) == pytest.approx(pack_step, rel=0.35)
