"""Fit one ADePT (or DePT / prompt-tuning) adapter with Ray Train + DeepSpeed, tracked in MLflow.

    python jobs/train_adept.py --config configs/offline_default.yaml
    python jobs/train_adept.py --config configs/t5_base_rte.yaml --set prompt_lr=4e-1 --num-workers 4 --use-gpu
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/train_adept.py --config configs/llama2_7b_zero3.yaml

Re-running with the same --name (and storage path) resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.config import TrainConfig  # noqa: E402

# flag -> config key; each flag is a shortcut for --set key=value
FLAGS = {
    "method": str, "task": str, "backbone": str, "num_virtual_tokens": int, "r": int, "budget": int,
    "prompt_lr": float, "offset_lr": float, "max_steps": int, "batch_size": int, "num_workers": int,
    "zero_stage": int, "precision": str, "storage_path": str, "mlflow_uri": str, "seed": int, "name": str,
    "eval_steps": int,
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with TrainConfig keys (see pipeline/config.py)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    for key, kind in FLAGS.items():
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=kind)
    parser.add_argument("--m", dest="num_virtual_tokens", type=int, help="alias of --num-virtual-tokens")
    parser.add_argument("--use-gpu", dest="use_gpu", action="store_true", default=None)
    parser.add_argument("--no-deepspeed", dest="deepspeed", action="store_false", default=None,
                        help="plain DDP instead of DeepSpeed")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    for key in [*FLAGS, "use_gpu", "deepspeed"]:
        value = getattr(args, key, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return TrainConfig.load(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    from pipeline.backbones import BackboneError
    from pipeline.launch import fit, prepare

    try:
        cfg = parse_args(argv)
        run = prepare(cfg)  # every check before Ray starts
    except (ValueError, KeyError, OSError, BackboneError) as err:  # OSError covers missing files, ConnectionError
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = run.config
    print(f"[adept] {cfg.method} on {cfg.task} with {cfg.backbone} ({run.kind}, d={run.hidden_size}): "
          f"m={cfg.num_virtual_tokens} r={run.r} -> {run.trainable_params:,} trainable params; "
          f"{cfg.num_workers} worker(s), {'DeepSpeed ZeRO-' + str(cfg.zero_stage) if cfg.deepspeed else 'DDP'}, "
          f"{cfg.precision}; run {cfg.run_name!r} in {cfg.storage_path}")
    result = fit(run)
    if result.error is not None:
        print(f"[adept] run failed: {result.error}", file=sys.stderr)
        return 1
    best = Path(result.checkpoint.path) / "best_adapter"
    metrics = {k: v for k, v in result.metrics.items() if k.startswith(("val_", "test_"))}
    print(f"[adept] finished: {metrics}")
    print(f"[adept] best adapter: {best}")
    print(f"[adept] MLflow: {run.tracking_uri} (experiment {cfg.experiment!r}, run {cfg.run_name!r}); "
          f"UI: mlflow ui --backend-store-uri {run.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
