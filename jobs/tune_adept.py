"""Search ADePT's prompt length, FFN size and the two learning rates with Ray Tune (one Ray Train fit per trial).

    python jobs/tune_adept.py                                  # the embedded default, configs/demo.yaml (make demo)
    python jobs/tune_adept.py --config configs/compare_methods.yaml     # ADePT vs DePT vs PT, 3 seeds each
    python jobs/tune_adept.py --config configs/t5_base_rte.yaml --name rte-lr-grid
    python jobs/tune_adept.py --config my.yaml --set max_steps=2000 --sweep-set num_samples=16 --search optuna
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tune_adept.py --config my.yaml

A config YAML holds TrainConfig keys (pipeline/core/config.py) and a `sweep:` section (pipeline/driver/tune/config.py
SweepConfig: name, space, num_samples, scheduler, search, ...). Without a `sweep:` section the paper's
learning-rate grid (configs/paper_grid.yaml) is searched. Re-running the same sweep name resumes it, from Tune
state checked first (Tune unpickles it: pipeline/driver/tune/trust.py; after a killed driver, --trust-storage). The job
prints progress while it runs and ends with the best trials (a per-method table when the space holds
`method`), the adapter paths, the MLflow location and the command that registers the best adapter.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline import cli  # noqa: E402 - standard library only: --help stays fast

log = cli.logger()

SWEEP_FLAGS = {"name": "name", "num_samples": "num_samples", "search": "search", "scheduler": "scheduler",
               "max_concurrent_trials": "max_concurrent_trials", "zero_shot": "zero_shot"}
CONFIG_FLAGS = {"mlflow_uri": "mlflow_uri", "storage_path": "storage_path"}


def parse_args(argv: list[str] | None = None):
    parser = cli.parser(__doc__)
    parser.add_argument("--config", help="YAML: TrainConfig keys + a sweep: section (default: configs/demo.yaml)")
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
    parser.add_argument("--trust-storage", action="store_true",
                        help="resume a sweep whose driver was killed (no manifest of Tune's state, which a resume "
                             "unpickles): only if no one else can write the storage path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config YAML and exit")
    return parser.parse_args(argv)


def load_config(args):
    from pipeline.driver.tune import load_sweep

    return load_sweep(args.config, args.set, args.sweep_set, cli.flag_values(args, CONFIG_FLAGS, args.set),
                      cli.flag_values(args, SWEEP_FLAGS, args.sweep_set))


@cli.job
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.start(args)
    try:
        cfg, sweep = load_config(args)
        if args.print_config:
            import yaml

            print(yaml.safe_dump({**cfg.to_dict(), "sweep": sweep.to_dict()}, sort_keys=False))
            return 0
        from pipeline.driver.preflight import check_early

        check_early(cfg)  # seconds: task files, storage and store, before torch, Ray or MLflow load
        from pipeline.driver.tune import format_report, prepare_sweep

        prep = prepare_sweep(cfg, sweep, trust_storage=args.trust_storage)  # every check before Ray starts
    except cli.UserError as err:
        return cli.fail(err)
    run = prep.base
    log.info(f"[adept] {'resuming ' if prep.resume else ''}sweep {prep.name!r}: {run.config.task} with "
          f"{run.config.backbone} ({run.kind}, d={run.hidden_size}); {prep.total_trials} trial(s); state in "
          f"{prep.storage}")
    from pipeline.core.ray_compat import tune_interrupt_watch
    from pipeline.driver.tune.run import run_sweep  # Ray, Tune and torch: only once every check passed

    resume = f"interrupted; re-run the same command to resume the sweep {prep.name!r}"
    try:
        with tune_interrupt_watch() as stops:  # Tune ends a sweep gracefully on the first Ctrl-C and returns
            outcome = run_sweep(prep, log=log.info)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune started
        return cli.interrupted(resume)
    except cli.UserError as err:
        return cli.fail(err)
    if any(stop.is_set() for stop in stops):
        return cli.interrupted(resume)
    print(format_report(outcome), flush=True)
    return 0 if outcome.best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
