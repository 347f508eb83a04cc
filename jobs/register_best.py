"""Register the best adapter of a sweep (or of one run) in the MLflow Model Registry as `adept-<task>`.

    python jobs/register_best.py --sweep adept-demo
    python jobs/register_best.py --run-id 3c5e... --mlflow-uri http://mlflow.internal:5000
    python jobs/register_best.py --sweep rte-lr-grid --force            # make it @champion even if not better
    python jobs/register_best.py --sweep adept-demo --bundle-backbone   # copy the backbone into the model (air-gapped)

The new version is an mlflow.pyfunc model (adapter files + backbone reference and fingerprint + input format),
logged in a run of its own nested under the sweep: the trial's run is never changed. Tags: task, method,
metric, score, backbone, source_run_id, sweep, trial_id. The alias `champion` moves to it only if its score
beats the current champion's (same metric), or with --force. Versions are never deleted or overwritten;
registering the same run again reuses its version. Then:

    mlflow models serve -m models:/adept-movie-sentiment@champion --env-manager local --host 127.0.0.1 --port 5001
    python jobs/predict.py --model models:/adept-movie-sentiment@champion --input reviews.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline import cli  # noqa: E402 - standard library only: --help stays fast


@cli.job
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", help="sweep name (jobs/tune_adept.py): register its best trial")
    which.add_argument("--run-id", help="an MLflow run of a trial or of jobs/train_adept.py")
    parser.add_argument("--mlflow-uri", help="tracking + registry URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    parser.add_argument("--experiment", help="look for the sweep in this experiment only")
    parser.add_argument("--name", help="registered model name (default: adept-<task>)")
    parser.add_argument("--force", action="store_true", help="move @champion to this version even if it is not better")
    parser.add_argument("--bundle-backbone", action="store_true",
                        help="store the backbone's files in the model too (serving without the original folder; "
                             "every version then grows by the backbone folder's size)")
    args = parser.parse_args(argv)
    cli.start(args)

    try:
        from pipeline.core.config import check_name
        from pipeline.serving.registry import CHAMPION, best_of_sweep, candidate_from_run, register
        from pipeline.tracking import check_tracking_server, default_tracking_uri
        from pipeline.tracking.preflight import probe_store

        for flag in ("name", "sweep", "experiment"):  # before the store is touched
            if getattr(args, flag) is not None:
                check_name(f"--{flag}", getattr(args, flag))
        uri = args.mlflow_uri or default_tracking_uri()
        probe_store(uri, write=True)  # a sqlite store's folder writable too: registering writes
        check_tracking_server(uri)
        candidate = best_of_sweep(uri, args.sweep, args.experiment) if args.sweep else candidate_from_run(uri, args.run_id)
        t = candidate.train
        print(f"[adept] candidate: run {candidate.run_id} ({candidate.task_name}, {t.get('method')}, "
              f"m={t.get('num_virtual_tokens')} r={t.get('r_resolved')}): {candidate.metric} = {candidate.score:.4g}")
        result = register(uri, candidate, name=args.name, force=args.force, bundle_backbone=args.bundle_backbone)
    except cli.UserError as err:
        return cli.fail(err)
    verb = "registered as new" if result.new_version else "already registered as"
    print(f"[adept] {verb} version {result.version} of {result.name!r}")
    state = "moved to" if result.moved else "stays on"
    print(f"[adept] @{CHAMPION} {state} version {result.champion}: {result.reason}")
    print(f"[adept] load it: mlflow.pyfunc.load_model('models:/{result.name}@{CHAMPION}')  "
          f"(tracking/registry URI {uri})")
    print(f"[adept] serve it: mlflow models serve -m models:/{result.name}@{CHAMPION} --env-manager local "
          "--host 127.0.0.1 --port 5001")
    print(f"[adept] predict a file: python jobs/predict.py --model models:/{result.name}@{CHAMPION} "
          f"--mlflow-uri {uri} --input inputs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
