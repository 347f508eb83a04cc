"""`sweep.pack`: the sweep's trials train K at a time over one backbone, and the user still sees trials.

FIFO: the packed sweep and the same sweep unpacked run the same member configs (Tune's variant generator draws
them) and reach the same validation scores and test metrics (1e-5); every member has its own MLflow child run
tagged with its pack, its own summary row, and the progress line counts members; register_best.py registers the
best member as it registers any trial.
Optuna: TPE fills the packs, member by member.
ASHA: the members a pack drops at its rung are exactly those Tune's ASHAScheduler stops when fed the same scores
in the same order; they stop there (no test split) and the others finish.
"""

import csv

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from test_tune_sweep import config, runs

from jobs.register_best import main as register_main
from jobs.tune_adept import main

pytestmark = [pytest.mark.pack, pytest.mark.slow]

SPACE = {"prompt_lr": {"grid": [0.3, 0.1]}, "num_virtual_tokens": {"grid": [2, 6]}}


def summary(tmp_path, name):
    with open(tmp_path / "runs" / name / "summary" / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def key(row) -> tuple[str, str]:
    return row["prompt_lr"], row["num_virtual_tokens"]


def test_a_packed_sweep_is_the_unpacked_sweep(synthetic_task, tiny_backbone, tmp_path, capsys):
    base = {"space": SPACE, "num_samples": 1, "scheduler": "fifo", "max_concurrent_trials": 1}
    path = config(tmp_path, synthetic_task, tiny_backbone, {**base, "name": "packed", "pack": 4})
    assert main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 trial(s)" in out and "1 pack(s) of up to 4" in out and "4/4 trials done" in out
    assert "/step_*/members/<k>/best_adapter" in out  # where each member's adapter is
    path = config(tmp_path, synthetic_task, tiny_backbone, {**base, "name": "alone"})
    assert main(["--config", str(path)]) == 0

    packed, alone = {key(r): r for r in summary(tmp_path, "packed")}, {key(r): r for r in summary(tmp_path, "alone")}
    assert set(packed) == set(alone) and len(packed) == 4
    for point, row in packed.items():
        assert row["status"] == alone[point]["status"] == "completed"
        for column in ("val_accuracy", "test_accuracy"):
            assert abs(float(row[column]) - float(alone[point][column])) <= 1e-5, (point, column)
        assert row["adapter"].endswith("/best_adapter") and "/members/" in row["adapter"]

    client, parents, children = runs(tmp_path)
    packed_parent = next(p for p in parents if p.data.tags["adept.sweep"] == "packed")
    members = [c for c in children if c.data.tags.get("mlflow.parentRunId") == packed_parent.info.run_id]
    assert len(members) == 4 and {c.info.status for c in members} == {"FINISHED"}
    assert len({c.data.tags["adept.pack"] for c in members}) == 1
    assert packed_parent.data.tags["best_run_id"] in {c.info.run_id for c in members}

    # the registry is unchanged: the best member registers and predicts like any trial
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert register_main(["--sweep", "packed", "--mlflow-uri", uri]) == 0
    (version,) = client.search_model_versions()
    assert version.tags["source_run_id"] == packed_parent.data.tags["best_run_id"]


def test_asha_inside_a_pack_stops_what_tune_asha_stops(synthetic_task, tiny_backbone, tmp_path):
    sweep = {"name": "rungs", "space": {"prompt_lr": {"grid": [0.03, 0.001, 0.1, 0.3]}}, "num_samples": 1,
             "scheduler": "asha", "grace_period": 10, "reduction_factor": 2, "pack": "auto"}
    path = config(tmp_path, synthetic_task, tiny_backbone, sweep)
    assert main(["--config", str(path)]) == 0
    rows = summary(tmp_path, "rungs")
    assert len(rows) == 4

    client, _, children = runs(tmp_path)
    by_member = sorted(children, key=lambda c: c.data.tags["adept.run_name"])
    asha = ASHAScheduler(time_attr="step", metric="val_accuracy", mode="max", max_t=19, grace_period=10,
                         reduction_factor=2, stop_last_trials=False)
    expected_stopped = set()
    for child in by_member:  # the pack asks member by member, in member order, at step 10
        (score,) = [m.value for m in client.get_metric_history(child.info.run_id, "val/accuracy") if m.step == 10]

        class Member:
            trial_id = child.data.tags["adept.run_name"]

        asha.on_trial_add(None, Member)
        if asha.on_trial_result(None, Member, {"step": 10, "val_accuracy": score}) == TrialScheduler.STOP:
            expected_stopped.add(child.data.tags["adept.run_name"])
    stopped = {c.data.tags["adept.run_name"] for c in children if c.data.tags.get("adept.stopped_early")}
    assert stopped == expected_stopped and stopped, "ASHA at rung 10 stops at least one of 4 (reduction factor 2)"
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/accuracy")]
        name = child.data.tags["adept.run_name"]
        assert steps == ([10] if name in stopped else [10, 20]), (name, steps)
        assert ("test/accuracy" in child.data.metrics) == (name not in stopped)
        assert child.info.status == "FINISHED"
    statuses = {r["status"] for r in rows}
    assert statuses == {"completed", "stopped"}


def test_optuna_fills_packs(synthetic_task, tiny_backbone, tmp_path):
    """search: optuna with sweep.pack: each pack's members are TPE's suggestions (4 trials in 2 packs of 2), and
    each member is its own trial everywhere a user looks."""
    sweep = {"name": "tpe", "space": {"prompt_lr": {"loguniform": [0.01, 0.3]}, "num_virtual_tokens": [2, 6]},
             "num_samples": 4, "scheduler": "fifo", "search": "optuna", "seed": 0, "pack": 2,
             "max_concurrent_trials": 2}
    path = config(tmp_path, synthetic_task, tiny_backbone, sweep)
    assert main(["--config", str(path)]) == 0
    rows = summary(tmp_path, "tpe")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert all(0.01 <= float(r["prompt_lr"]) <= 0.3 and r["num_virtual_tokens"] in ("2", "6") for r in rows)
    assert len({(r["prompt_lr"], r["num_virtual_tokens"]) for r in rows}) == 4
    _, _, children = runs(tmp_path)
    assert len(children) == 4 and len({c.data.tags["adept.pack"] for c in children}) == 2


def test_the_pack_searcher_gives_each_member_its_own_suggestion_and_score():
    """PackSearcher: a pack's members are K suggestions of the wrapped searcher, and each member's latest score (its
    m<k>_ key in the pack's results) goes back to the suggestion it came from; a member without one is an error."""
    from ray.tune.search import Searcher

    from pipeline.driver.tune.packs import PackSearcher

    class Recorder(Searcher):
        def __init__(self):
            super().__init__(metric="val_accuracy", mode="max")
            self.count, self.completed = 0, {}

        def suggest(self, trial_id):
            self.count += 1
            return {"prompt_lr": 0.1 * self.count}

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.completed[trial_id] = (result, error)

    inner = Recorder()
    packs = PackSearcher(inner, k=2, total=3, metric="val_accuracy")
    first, second = packs.suggest("a"), packs.suggest("b")
    assert first == {"pack": {"index": 0, "members": [{"prompt_lr": 0.1}, {"prompt_lr": 0.2}]}}
    assert second == {"pack": {"index": 2, "members": [{"prompt_lr": pytest.approx(0.3)}]}}
    assert packs.suggest("c") == Searcher.FINISHED
    packs.on_trial_result("a", {"m0_val_accuracy": 60.0, "m1_val_accuracy": 55.0})
    packs.on_trial_complete("a", {"m0_val_accuracy": 70.0})  # m1 stopped at its rung: its last score stands
    assert inner.completed == {"a_m0": ({"val_accuracy": 70.0}, False), "a_m1": ({"val_accuracy": 55.0}, False)}
    packs.on_trial_complete("b", None, error=True)
    assert inner.completed["b_m0"] == (None, True)
    restored = PackSearcher(Recorder(), k=2, total=3, metric="val_accuracy")
    restored.set_state(packs.get_state())
    assert restored.suggest("d") == Searcher.FINISHED
