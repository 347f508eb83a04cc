"""Item 3 runners: the bare loop's `TrainWork`, run by the pipeline's own pieces inside Ray Train.

    ray1        TorchTrainer, 1 worker, `pipeline.worker.engine.DDPTrainEngine` (what `deepspeed: false` runs)
    ray_zero2   TorchTrainer, 1 worker, `pipeline.worker.engine.DeepSpeedTrainEngine`, ZeRO stage 2

The worker rebuilds the identical model, optimizer, scheduler and batches (`bench_pipeline.build_model`,
`build_batches`), wraps them in the pipeline's engine, and times each `engine.train_micro_batch` around
the call, as the bare loop times its step. `startup_s` runs from before `ray.init` (or trainer creation on
a running cluster: `notes.cluster_started` says which) to the worker's first step: cluster start, worker
actor, process group, model and engine build.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import bench_common as bc
import bench_pipeline as bp
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def _worker(loop_config: dict) -> None:
    import ray.train

    from pipeline.core.config import TrainConfig
    from pipeline.worker.engine import build_engine

    torch.set_num_threads(loop_config["threads"])
    work = bp.TrainWork(**loop_config["work"])
    model, optimizer, scheduler, spec = bp.build_model(work)
    config = model.base_model.config
    device = torch.device(work.device)
    batches = [{k: v.to(device) for k, v in b.items()}
               for b in bp.build_batches(work, config.vocab_size, config.pad_token_id or 0, spec)]
    # batch_size = the micro batch: 1 worker, no accumulation, the same global-norm clipping as the bare loop
    cfg = TrainConfig(method=spec.method, r=spec.r, num_virtual_tokens=spec.m, batch_size=work.batch_size,
                      deepspeed=loop_config["deepspeed"], zero_stage=2,
                      max_grad_norm=work.max_grad_norm, use_gpu=device.type == "cuda",
                      precision="bf16" if work.dtype == "bfloat16" else "fp32")
    engine = build_engine(cfg, model, optimizer, scheduler, device, world=1)
    bc.sync(work.device)
    first_step_wall = time.time()
    times, losses = [], []
    for batch in batches:
        start = time.perf_counter()
        loss, _ = engine.train_micro_batch(batch)
        bc.sync(work.device)
        times.append(time.perf_counter() - start)
        losses.append(loss)
    # Train V2 keeps only the metrics of reports that carry a checkpoint: send an empty one.
    with tempfile.TemporaryDirectory() as empty:
        ray.train.report({"first_step_wall": first_step_wall, "step_s": times, "first_loss": losses[0],
                          "last_loss": losses[-1]}, checkpoint=ray.train.Checkpoint.from_directory(empty))


def _run_in_ray_train(work: bp.TrainWork, deepspeed: bool, name: str, label: str) -> bp.RunnerResult:
    t0 = time.time()
    # Workers import this module and bench_common by name; DeepSpeed must pick its CPU accelerator on CPU.
    path = os.pathsep.join([str(BENCH_DIR), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ["PYTHONPATH"] = path
    if work.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import ray

    from pipeline.driver.ray_setup import init_ray

    cluster_started = not ray.is_initialized()  # the first Ray runner of a run also pays for the local cluster
    init_ray(num_workers=1)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"work": work.to_dict(), "deepspeed": deepspeed, "threads": torch.get_num_threads()},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=work.device.startswith("cuda"),
                                         resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name=f"bench-{name}", storage_path=storage))
        metrics = trainer.fit().metrics
    startup = metrics["first_step_wall"] - t0
    return bp.RunnerResult(name, startup, list(metrics["step_s"]), work.batch_size * work.length,
                           {"label": label, "first_loss": metrics["first_loss"], "last_loss": metrics["last_loss"],
                            "cluster_started": cluster_started})


def run_ray1(work: bp.TrainWork) -> bp.RunnerResult:
    return _run_in_ray_train(work, False, "ray1", "Ray Train, 1 worker (pipeline DDP engine)")


def run_ray_zero2(work: bp.TrainWork) -> bp.RunnerResult:
    return _run_in_ray_train(work, True, "ray_zero2", "Ray Train, 1 worker + DeepSpeed ZeRO-2 (pipeline engine)")


bp.register_runner("ray1", run_ray1)
bp.register_runner("ray_zero2", run_ray_zero2)
