"""Sweep settings: the space, budget mode, the method dimension, and every bad sweep failing before Ray."""

import json

import pytest
import ray
import yaml

from jobs.tune_adept import main
from pipeline.core.config import TrainConfig
from pipeline.driver.tune import SweepConfig, load_sweep, parse_space, prepare_sweep, trial_config

pytestmark = pytest.mark.usefixtures("no_ray")


def write_config(tmp_path, synthetic_task, tiny_backbone, sweep, **base):
    data = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "num_virtual_tokens": 4, "r": 8,
            "max_steps": 20, "eval_steps": 10, "batch_size": 16, "max_source_length": 32, "max_target_length": 4,
            "storage_path": str(tmp_path / "runs"), "mlflow_uri": f"sqlite:///{tmp_path / 'm.db'}", **base,
            "sweep": sweep}
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_space_forms_and_aliases():
    dims = {d.key: d for d in parse_space({"m": [4, 8], "prompt_lr": {"loguniform": [1e-3, 1e-1]},
                                           "r": {"randint": [2, 5]}, "offset_lr": 1e-3, "seed": {"grid": [1, 2]}})}
    assert dims["num_virtual_tokens"].kind == "choice" and dims["num_virtual_tokens"].values == (4, 8)
    assert dims["prompt_lr"].values == (1e-3, 1e-1)
    assert dims["r"].probe_values() == [2, 3, 4, 5]  # randint is inclusive
    assert dims["offset_lr"].kind == "constant" and dims["seed"].kind == "grid"


def test_together_varies_keys_as_one(synthetic_task, tiny_backbone, tmp_path):
    """Each method at its own learning rates: a grid over settings, crossed with the other dimensions."""
    from pipeline.driver.tune.config import flat_params

    entries = [{"method": "adept", "prompt_lr": 0.3, "offset_lr": 0.01}, {"method": "dept", "m": 2, "offset_lr": 0.1},
               {"method": "prompt", "prompt_lr": 0.1}]
    together, seed = parse_space({"together": {"grid": entries}, "seed": {"grid": [1, 2]}})
    assert together.kind == "grid" and together.keys == ("method", "prompt_lr", "offset_lr", "num_virtual_tokens")
    assert together.values[1] == {"method": "dept", "num_virtual_tokens": 2, "offset_lr": 0.1}  # aliases resolved
    params = {"together": together.values[1], "seed": 2}
    assert flat_params(params) == {"method": "dept", "num_virtual_tokens": 2, "offset_lr": 0.1, "seed": 2}
    base = TrainConfig(num_virtual_tokens=4, r=8, prompt_lr=0.2, offset_lr=1e-3)
    cfg = trial_config(base, params)
    assert (cfg.method, cfg.num_virtual_tokens, cfg.offset_lr, cfg.prompt_lr, cfg.seed) == ("dept", 2, 0.1, 0.2, 2)

    path = write_config(tmp_path, synthetic_task, tiny_backbone,
                        {"space": {"together": {"grid": entries}, "seed": {"grid": [1, 2]}}, "scheduler": "fifo",
                         "num_samples": 1})
    prep = prepare_sweep(*load_sweep(path))
    assert prep.total_trials == 6
    assert prep.param_space["together"] == {"grid_search": entries[:1] + [together.values[1]] + entries[2:]}


def test_budget_mode_derives_r_from_m_and_prompt_tuning_spends_the_budget():
    from pipeline.core.backbone_info import BackboneInfo
    from pipeline.core.resolve import resolve_run
    from pipeline.core.tasks import get_task

    base = TrainConfig(method="adept", num_virtual_tokens=60, budget=100)
    t5_base = BackboneInfo(kind="seq2seq", hidden_size=768, num_layers=24, num_heads=12, max_positions=None,
                           vocab_size=32128)
    run = resolve_run(base, get_task("rte"), t5_base, "t5-base")
    for m, r in [(20, 39), (60, 19), (80, 9)]:  # d=768: r = floor(((100 - m)·768 - 768) / 1537)
        trial = run.with_config(trial_config(base, {"m": m}))
        assert trial.r == r and trial.adapter.ffn_hidden_size == r and trial.trainable_params <= 100 * 768
    pt = trial_config(base, {"method": "prompt", "m": 20})
    assert pt.num_virtual_tokens == 100 and pt.r is None and pt.budget is None
    assert (run.with_config(pt).r, run.with_config(pt).trainable_params) == (None, 100 * 768)


def test_default_sweep_and_overrides():
    cfg, sweep = load_sweep(None, ["max_steps=40"], ["num_samples=2", "space.m=[2, 4]"])
    assert cfg.task == "movie-sentiment" and cfg.backbone == "smollm2-135m" and cfg.budget == 100
    assert cfg.max_steps == 40 and sweep.num_samples == 2 and sweep.space["m"] == [2, 4]
    assert sweep.scheduler == "asha" and sweep.zero_shot and sweep.pack == "auto"


def test_config_without_sweep_section_gets_the_paper_lr_grid(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: adept\nr: 19\n")
    _, sweep = load_sweep(path)
    assert sweep.space["prompt_lr"] == {"grid": [0.3, 0.4]} and len(sweep.space["offset_lr"]["grid"]) == 4


def test_print_config(capsys):
    assert main(["--print-config", "--num-samples", "3"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["sweep"]["num_samples"] == 3 and out["backbone"] == "smollm2-135m"


@pytest.mark.parametrize(
    ("sweep", "base", "message"),
    [
        ({"space": {"learning_rate": [0.1]}}, {}, "not a TrainConfig field"),
        ({"space": {"backbone": ["a", "b"]}}, {}, "cannot vary between trials"),
        ({"space": {"r": [4, 8]}}, {"r": None, "budget": 100}, "cannot be in the space"),
        ({"space": {"m": [4, 100]}}, {"r": None, "budget": 50}, "(num_virtual_tokens=100) is invalid"),
        ({"space": {"prompt_lr": {"loguniform": [0, 0.1]}}}, {}, "low > 0"),
        ({"space": {"prompt_lr": {"uniform": [0.3, 0.1]}}}, {}, "low < high"),
        ({"space": {"m": {"loguniform": [2, 8]}}}, {}, "is an integer"),
        ({"space": {"m": []}}, {}, "non-empty list"),
        ({"space": {"prompt_lr": {"normal": [0, 1]}}}, {}, "is not one of"),
        ({"space": {"batch_size": [16, 10]}, "num_samples": 1}, {"num_workers": 3, "batch_size": 15}, "not divisible"),
        ({"space": {"method": ["prompt", "adept"]}}, {"method": "prompt", "r": None}, "needs r or budget"),
        ({"space": {"prompt_lr": {"grid": [0.1, 0.3]}}, "search": "optuna"}, {}, "not grid"),
        ({"metric": "val_bleu"}, {}, "not reported"),
        ({"scheduler": "pbt"}, {}, "scheduler"),
        ({"num_samples": 0}, {}, "num_samples"),
        ({"name": "my sweep"}, {}, "letters, digits"),
        ({"grace_period": 50}, {}, "ASHA would never decide"),
        ({"sample": 3}, {}, "unknown sweep key"),
        ({"space": {"together": {"grid": [{"method": "adept"}, {"method": "adept"}]}}}, {}, "entries repeat"),
        ({"space": {"together": {"grid": [{"backbone": "x"}]}}}, {}, "cannot vary between trials"),
        ({"space": {"together": [{"prompt_lr": 0.1}], "prompt_lr": [0.1, 0.2]}}, {}, "sets 'prompt_lr' twice"),
        ({"space": {"together": {"grid": [{"prompt_lr": {"loguniform": [0.1, 1]}}]}}}, {}, "as a plain value"),
        ({"space": {"together": {"loguniform": [0.1, 1]}}}, {}, "use {grid: [{key: value"),
        ({"space": {"together": [{"method": "prompt"}, {"method": "adept"}]}, "search": "optuna"}, {},
         "cannot sample `together`"),
        ({"space": {"together": {"grid": [{"method": "adept", "m": 100}]}}}, {"r": None, "budget": 50}, "is invalid"),
        ({"space": {"together": {"grid": [{"m": 2}, {"m": 4}]}}, "points_to_evaluate": [{"m": 2}]}, {},
         "put the point among the `together`"),
        pytest.param({"pack": 2, "space": {"together": {"grid": [{"max_steps": 20}, {"max_steps": 30}]}}},
                     {"deepspeed": False}, "cannot vary ['max_steps']", marks=pytest.mark.pack),
        pytest.param({"pack": 0}, {}, "pack=0 must be an integer >= 1", marks=pytest.mark.pack),
        pytest.param({"pack": "all"}, {}, "or auto", marks=pytest.mark.pack),
        pytest.param({"pack": 4, "space": {"max_steps": [20, 30]}}, {"deepspeed": False},
                     "cannot vary ['max_steps']", marks=pytest.mark.pack),
        pytest.param({"pack": "auto"}, {"deepspeed": True, "offload": True}, "offload: false", marks=pytest.mark.pack),
    ],
)
def test_bad_sweep_fails_before_ray(sweep, base, message, synthetic_task, tiny_backbone, tmp_path, capsys):
    path = write_config(tmp_path, synthetic_task, tiny_backbone, sweep, **base)
    assert main(["--config", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_train_key_and_unreachable_mlflow(synthetic_task, tiny_backbone, tmp_path, capsys):
    path = write_config(tmp_path, synthetic_task, tiny_backbone, {"space": {"m": [2, 4]}})
    assert main(["--config", str(path), "--set", "learning_rate=0.1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["--config", str(path), "--mlflow-uri", "http://127.0.0.1:9"]) == 2
    assert "not reachable" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_resuming_a_sweep_with_other_settings_is_refused(synthetic_task, tiny_backbone, tmp_path, capsys):
    path = write_config(tmp_path, synthetic_task, tiny_backbone, {"name": "s1", "space": {"m": [2, 4]}})
    cfg, sweep = load_sweep(path)
    prep = prepare_sweep(cfg, sweep)
    prep.storage.mkdir(parents=True)
    (prep.storage / "adept_sweep.json").write_text(json.dumps(prep.fingerprint()))
    assert prepare_sweep(cfg, sweep).resume  # the same settings: a resumption
    assert main(["--config", str(path), "--sweep-set", "space.m=[2, 8]"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "sweep.space.m: [2, 4] -> [2, 8]" in err
    assert not ray.is_initialized()


def test_sweep_config_rejects_bad_types():
    with pytest.raises(ValueError, match="reduction_factor"):
        SweepConfig(reduction_factor=1)
    with pytest.raises(ValueError, match="max_failures"):
        SweepConfig(max_failures=-1)


def test_points_to_evaluate_are_checked(synthetic_task, tiny_backbone, tmp_path, capsys):
    space = {"m": [2, 4], "prompt_lr": {"loguniform": [0.01, 0.3]}}
    path = write_config(tmp_path, synthetic_task, tiny_backbone, {"space": space, "points_to_evaluate": [{"m": 2}]})
    assert main(["--config", str(path)]) == 2
    assert "exactly the searched keys" in capsys.readouterr().err
    path = write_config(tmp_path, synthetic_task, tiny_backbone,
                        {"space": space, "points_to_evaluate": [{"m": 2, "prompt_lr": -1.0}]})
    assert main(["--config", str(path)]) == 2
    assert "prompt_lr" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_schedulers_searchers_and_local_resources(synthetic_task, tiny_backbone, tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from pipeline.driver.tune.run import local_cpus, scheduler_and_search

    sweep = {"space": {"m": [2, 4], "prompt_lr": {"loguniform": [0.01, 0.3]}},
             "points_to_evaluate": [{"m": 4, "prompt_lr": 0.1}], "max_concurrent_trials": 2, "cpus_per_worker": 1}
    cfg, sw = load_sweep(write_config(tmp_path, synthetic_task, tiny_backbone, sweep))
    prep = prepare_sweep(cfg, sw)
    scheduler, search = scheduler_and_search(prep, 2)
    assert isinstance(scheduler, ASHAScheduler) and isinstance(search, BasicVariantGenerator)
    assert scheduler._time_attr == "step" and not scheduler._stop_last_trials
    assert [milestone for milestone, _ in scheduler._brackets[0]._rungs] == [cfg.eval_steps]  # never at max_steps
    assert local_cpus(prep) == max(__import__("os").cpu_count(), 2) + 2  # + one logical CPU per trial driver

    pytest.importorskip("optuna")
    from ray.tune.search.optuna import OptunaSearch

    cfg, sw = load_sweep(write_config(tmp_path, synthetic_task, tiny_backbone,
                                      {**sweep, "search": "optuna", "scheduler": "fifo", "seed": 1}))
    prep = prepare_sweep(cfg, sw)
    scheduler, search = scheduler_and_search(prep, 2)
    assert isinstance(scheduler, FIFOScheduler) and isinstance(search, OptunaSearch)
    assert search.set_search_properties(prep.metric, "max", prep.param_space)  # Optuna takes the space
    assert search.suggest("t1") == {"num_virtual_tokens": 4, "prompt_lr": 0.1}  # the given point comes first
    assert set(search.suggest("t2")) == {"num_virtual_tokens", "prompt_lr"}
