"""Placement of a fit's workers on Ray nodes, without starting Ray: the `placement_strategy` key reaches Train's
ScalingConfig, and a fit whose workers found no room within node_wait_s says so (and how to continue)."""

import os

import pytest

import pipeline.driver.launch
from pipeline.core.backbone_info import BackboneInfo
from pipeline.core.config import TrainConfig
from pipeline.core.ray_compat import worker_group_start_timeout_class
from pipeline.core.resolve import resolve_run
from pipeline.core.tasks import get_task
from pipeline.driver.launch import failure_cause, make_trainer

pytestmark = pytest.mark.scale


def config(**changes) -> TrainConfig:
    return TrainConfig(r=8, num_virtual_tokens=4, max_steps=20, eval_steps=10, batch_size=16, num_workers=2,
                       storage_path="/tmp/adept-placement-unit", **changes)


def test_placement_strategy_is_validated_and_defaults_to_pack():
    assert config().placement_strategy == "PACK"
    assert config(placement_strategy="STRICT_SPREAD").placement_strategy == "STRICT_SPREAD"
    with pytest.raises(ValueError, match="placement_strategy='spread' is not allowed.*STRICT_SPREAD"):
        config(placement_strategy="spread")


def test_make_trainer_passes_the_placement_strategy_to_ray_train(monkeypatch):
    monkeypatch.setattr(pipeline.driver.launch, "torch_config", lambda use_gpu: None)  # it asks a running Ray
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "0")  # make_trainer sets it: restored afterwards
    info = BackboneInfo(kind="causal", hidden_size=32, num_layers=2, num_heads=2, max_positions=128, vocab_size=100)
    run = resolve_run(config(placement_strategy="STRICT_SPREAD", node_wait_s=20.0), get_task("movie-sentiment"),
                      info, "random:llama-tiny")
    trainer = make_trainer(run, None, worker_cpus=1)
    assert trainer.scaling_config.placement_strategy == "STRICT_SPREAD"
    assert trainer.scaling_config.num_workers == 2 and trainer.scaling_config.resources_per_worker == {"CPU": 1}
    assert os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] == "20.0"  # node_wait_s: how long a lost node's
    # workers wait for room before the fit fails
    assert trainer.run_config.logging_config.log_level == "WARNING"  # Ray Train's INFO lines only at debug
    monkeypatch.setenv("ADEPT_LOG_LEVEL", "debug")
    assert make_trainer(run, None, worker_cpus=1).run_config.logging_config.log_level == "DEBUG"


def test_no_capacity_within_node_wait_s_is_explained(monkeypatch):
    from ray.train import ControllerError, WorkerGroupError

    WorkerGroupStartupTimeoutError = worker_group_start_timeout_class()  # noqa: N806 - Ray's class
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
    cfg = config(placement_strategy="STRICT_SPREAD", node_wait_s=20.0, name="lost")
    cause = failure_cause(ControllerError(WorkerGroupStartupTimeoutError(2)), cfg)
    assert "could not place the fit's 2 worker(s) (placement STRICT_SPREAD) within node_wait_s=20 s" in cause
    assert "re-run with --name lost to continue from the last checkpoint" in cause
    # other controller failures: the controller's own message, not "Training failed due to controller error:"
    other = failure_cause(ControllerError(RuntimeError("placement group removed")), cfg)
    assert other == "placement group removed"
    worker = WorkerGroupError("Traceback ...\nValueError: the train split has 8 rows: too few", {0: ValueError()})
    assert failure_cause(worker, cfg) == "ValueError: the train split has 8 rows: too few"
