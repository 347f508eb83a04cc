"""Item 4 (tokens per second of a fit): the real training job, shortened, so users can size a run.

    python benchmarks/run.py --items fit                                   # configs/demo.yaml
    python benchmarks/run.py --items fit --fit-config configs/t5_base_rte.yaml --device cuda

Runs `jobs/train_adept.py --config CONFIG` in a subprocess (its own Ray cluster, DeepSpeed, MLflow in a
temporary sqlite store) for `steps` optimizer steps, validating only at the end on `eval_rows` rows, and
reads back what the job logged every `log_steps`: `perf/tokens_per_s` (non-padding input tokens, no prompt
positions, summed over workers) and `perf/samples_per_s` over training time only (validation excluded). The
first window holds the first step's one-off costs and is left out of the median.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_common as bc

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"  # the demo's base settings (its sweep: section is ignored)


def run(config: Path, steps: int, log_steps: int, eval_rows: int = 16, device: str = "cpu", log=print) -> list[dict]:
    from pipeline.core.config import TrainConfig
    from pipeline.tracking import metric_history, search_runs

    if steps < 2 * log_steps:
        raise ValueError(f"steps={steps} gives fewer than 2 throughput windows of log_steps={log_steps}")
    overrides = [f"max_steps={steps}", f"eval_steps={steps}", f"log_steps={log_steps}", "warmup_steps=0",
                 f"max_eval_examples={eval_rows}", f"use_gpu={str(device.startswith('cuda')).lower()}"]
    cfg = TrainConfig.load(config, overrides)  # the job's own checks, before anything starts
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        cmd = [sys.executable, str(ROOT / "jobs" / "train_adept.py"), "--config", str(config), "--name", "bench-fit",
               "--storage-path", f"{tmp}/runs", "--mlflow-uri", uri, *(a for o in overrides for a in ("--set", o))]
        log(f"[fit] {config.name}: {cfg.backbone} {cfg.method}, batch {cfg.batch_size}, {cfg.num_workers} worker(s), "
            f"{'ZeRO-' + str(cfg.zero_stage) if cfg.deepspeed else 'DDP'}, {steps} steps")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"the fit failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        (found,) = search_runs(uri, experiment=cfg.experiment)
        history = {key: [value for _, value in metric_history(uri, found.info.run_id, key)]
                   for key in ("perf/tokens_per_s", "perf/samples_per_s")}
    history = {k.removeprefix("perf/"): v for k, v in history.items()}
    steady = {k: v[1:] for k, v in history.items()}
    return [{"item": "fit", "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
             "backbone": cfg.backbone, "method": cfg.method, "batch_size": cfg.batch_size,
             "max_source_length": cfg.max_source_length, "num_workers": cfg.num_workers,
             "engine": f"DeepSpeed ZeRO-{cfg.zero_stage}" if cfg.deepspeed else "DDP", "precision": cfg.precision,
             "steps": steps, "log_steps": log_steps, "wall_s": wall,
             "tokens_per_s": bc.summary(steady["tokens_per_s"]), "samples_per_s": bc.summary(steady["samples_per_s"]),
             "first_window_tokens_per_s": history["tokens_per_s"][0]}]
