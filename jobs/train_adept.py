"""Fit one ADePT (or DePT / prompt-tuning) adapter with Ray Train + DeepSpeed, tracked in MLflow.

    python jobs/train_adept.py --config configs/demo.yaml          # the demo's base settings, one fit (local Ray, CPU)
    python jobs/train_adept.py --config configs/t5_base_rte.yaml --set prompt_lr=4e-1 --num-workers 4 --use-gpu
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/train_adept.py --config configs/llama2_7b_zero3.yaml

Every TrainConfig key (pipeline/core/config.py) is a YAML key and a `--set key=value`; the common ones also have
flags (a key given both ways is an error). Re-running with the same --name (and storage path) resumes from the
latest good checkpoint; a finished run is left as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline import cli  # noqa: E402 - standard library only: --help stays fast

log = cli.logger()

# flag -> config key; each flag is a shortcut for --set key=value
FLAGS = {
    "method": str, "task": str, "backbone": str, "num_virtual_tokens": int, "r": int, "budget": int,
    "prompt_lr": float, "offset_lr": float, "max_steps": int, "batch_size": int, "num_workers": int,
    "zero_stage": int, "precision": str, "storage_path": str, "mlflow_uri": str, "seed": int, "name": str,
    "eval_steps": int,
}


def parse_args(argv: list[str] | None = None):
    parser = cli.parser(__doc__)
    parser.add_argument("--config", help="YAML file with TrainConfig keys (a sweep: section is ignored)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    for key, kind in FLAGS.items():
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=kind)
    parser.add_argument("--m", dest="m", type=int, help="alias of --num-virtual-tokens")
    parser.add_argument("--use-gpu", dest="use_gpu", action="store_true", default=None)
    parser.add_argument("--no-deepspeed", dest="deepspeed", action="store_false", default=None,
                        help="plain DDP instead of DeepSpeed")
    return parser.parse_args(argv)


def load_config(args):
    from pipeline.core.config import TrainConfig

    if args.m is not None and args.num_virtual_tokens is not None:
        raise cli.UserError("num_virtual_tokens: given as --m and --num-virtual-tokens; keep one.")
    flags = {**{k: k for k in FLAGS}, "m": "num_virtual_tokens", "use_gpu": "use_gpu", "deepspeed": "deepspeed"}
    return TrainConfig.load(args.config, args.set, cli.flag_values(args, flags, args.set))


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.start(args)
    try:
        from pipeline.driver.preflight import check_early

        cfg = load_config(args)
        check_early(cfg)  # seconds: the config, task files, storage and store, before torch, Ray or MLflow load
        from pipeline.driver.launch import prepare

        run = prepare(cfg)  # every check before Ray starts
    except cli.UserError as err:
        return cli.fail(err)
    cfg = run.config
    log.info(f"[adept] {cfg.method} on {cfg.task} with {cfg.backbone} ({run.kind}, d={run.hidden_size}): "
          f"m={cfg.num_virtual_tokens} r={run.r} -> {run.trainable_params:,} trainable params; "
          f"{cfg.num_workers} worker(s), {'DeepSpeed ZeRO-' + str(cfg.zero_stage) if cfg.deepspeed else 'DDP'}, "
          f"{cfg.precision}; run {cfg.run_name!r} in {cfg.storage_path}")
    from pipeline.driver.launch import display_name, run_fit, tracking_error
    from pipeline.tracking import TrackingOutage

    try:
        result = run_fit(run)
    except KeyboardInterrupt:  # Ctrl-C: Ray aborted the fit; its checkpoints stay for a re-run to resume from
        return cli.interrupted(interrupted_at(cfg))
    except TrackingOutage as err:  # trained, but MLflow did not get everything: the message says how to fix it
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    except cli.UserError as err:
        return cli.fail(err)
    except Exception as err:  # noqa: BLE001 - Ray Train V2 raises the workers' failure from fit()
        return report_failure(run, err)
    if result.error is not None:
        return report_failure(run, result.error)
    if tracking_error(result.metrics) is not None:
        print(f"error: {tracking_error(result.metrics)}", file=sys.stderr, flush=True)
        return 1
    best = Path(result.checkpoint.path) / "best_adapter"
    metrics = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith(("val_", "test_"))}
    print(f"[adept] finished: {metrics}")
    print(f"[adept] best adapter: {best}")
    print_quarantine(cfg, int(result.metrics.get("quarantined") or 0))
    print(f"[adept] MLflow: {run.tracking_uri} (experiment {cfg.experiment!r}, run {display_name(run)!r}); "
          f"UI: mlflow ui --backend-store-uri {run.tracking_uri}")
    return 0


def interrupted_at(cfg) -> str:
    """Where a Ctrl-C left the fit: the step of its newest checkpoint, which the same command resumes from."""
    from pipeline.driver.launch import last_checkpoint_step

    step = last_checkpoint_step(cfg)
    if step is None:
        return "interrupted before the first checkpoint; re-run the same command to start the fit again"
    return f"interrupted at step {step}; re-run the same command to resume"


def report_failure(run, err: BaseException) -> int:
    """The fit failed after Ray started: say why in one line, and how to continue from the last checkpoint."""
    from pipeline.driver.launch import failure_cause

    cfg = run.config
    print(f"error: the fit failed: {failure_cause(err, cfg)}", file=sys.stderr)
    print(f"[adept] checkpoints stay in {Path(cfg.storage_path) / cfg.run_name}; re-run with --name {cfg.run_name} "
          "to continue from the last good one.", file=sys.stderr, flush=True)
    print_quarantine(cfg)
    return 1


def print_quarantine(cfg, reported: int = 0) -> None:
    """Refused checkpoints are moved, never deleted (pipeline/worker/checkpoint.py): say how many and where (the
    final report's count; the folder itself when the fit failed before reporting)."""
    from pipeline.worker.checkpoint import QUARANTINE, quarantined

    folder = Path(cfg.storage_path) / cfg.run_name
    found = quarantined(folder)
    if reported or found:
        print(f"[adept] quarantined {reported or len(found)} refused checkpoint(s) in {folder / QUARANTINE}: "
              f"{', '.join(p.name for p in found)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
