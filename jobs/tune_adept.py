"""Search ADePT's prompt length, FFN size and the two learning rates with Ray Tune (one Ray Train fit per trial).

    python jobs/tune_adept.py                                  # the embedded offline default (make demo)
    python jobs/tune_adept.py --config configs/t5_base_rte.yaml --name rte-lr-grid
    python jobs/tune_adept.py --config my.yaml --set max_steps=2000 --sweep-set num_samples=16 --search optuna
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tune_adept.py --config my.yaml

A config YAML holds TrainConfig keys (pipeline/config.py) and a `sweep:` section (pipeline/tune/config.py
SweepConfig: name, space, num_samples, scheduler, search, ...). Without a `sweep:` section the paper's
learning-rate grid is searched. Re-running the same sweep name resumes it. The job ends with the best
trials, the adapter paths, the MLflow location and the command that registers the best adapter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None):
    from pipeline.tune import load_sweep

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML: TrainConfig keys + a sweep: section (default: the embedded demo)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig key")
    parser.add_argument("--sweep-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key; space.<key>=<yaml> sets one search dimension")
    parser.add_argument("--name", help="sweep name (re-running a name resumes it)")
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--search", choices=["random", "optuna"])
    parser.add_argument("--scheduler", choices=["asha", "fifo"])
    parser.add_argument("--max-concurrent-trials", type=int)
    parser.add_argument("--zero-shot", dest="zero_shot", action="store_true", default=None,
                        help="also score the backbone without an adapter on the same validation rows")
    parser.add_argument("--no-zero-shot", dest="zero_shot", action="store_false")
    parser.add_argument("--mlflow-uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    parser.add_argument("--storage-path", help="where Tune and Train keep state and checkpoints (shared on clusters)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config YAML and exit")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    if args.mlflow_uri:
        overrides.append(f"mlflow_uri={args.mlflow_uri}")
    if args.storage_path:
        overrides.append(f"storage_path={args.storage_path}")
    sweep_overrides = list(args.sweep_set)
    for key in ("name", "num_samples", "search", "scheduler", "max_concurrent_trials", "zero_shot"):
        value = getattr(args, key)
        if value is not None:
            sweep_overrides.append(f"{key}={value}")
    cfg, sweep = load_sweep(args.config, overrides, sweep_overrides)
    return cfg, sweep, args.print_config


def main(argv: list[str] | None = None) -> int:
    from pipeline.backbones import BackboneError
    from pipeline.tune import format_report, prepare_sweep, run_sweep

    try:
        cfg, sweep, print_only = parse_args(argv)
        if print_only:
            print(yaml.safe_dump({**cfg.to_dict(), "sweep": sweep.to_dict()}, sort_keys=False))
            return 0
        prep = prepare_sweep(cfg, sweep)  # every check before Ray starts
    except (ValueError, KeyError, OSError, BackboneError) as err:  # OSError covers missing files, ConnectionError
        print(f"error: {err}", file=sys.stderr)
        return 2
    run = prep.base
    print(f"[adept] {'resuming ' if prep.resume else ''}sweep {prep.name!r}: {run.config.task} with "
          f"{run.config.backbone} ({run.kind}, d={run.hidden_size}); state in {prep.storage}", flush=True)
    outcome = run_sweep(prep)
    print(format_report(outcome), flush=True)
    return 0 if outcome.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
