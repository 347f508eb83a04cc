"""Register the best adapter of a sweep (or of one run) in the MLflow Model Registry as `adept-<task>`.

    python jobs/register_best.py --sweep adept-demo
    python jobs/register_best.py --run-id 3c5e... --mlflow-uri http://mlflow.internal:5000
    python jobs/register_best.py --sweep rte-lr-grid --force        # make it @champion even if not better

The new version is an mlflow.pyfunc model (adapter files + backbone reference) with tags task, method,
metric, score, backbone, run_id, sweep, trial_id. The alias `champion` moves to it only if its score
beats the current champion's (same metric), or with --force. Versions are never deleted or overwritten;
registering the same run again reuses its version. Then:

    python -c "import mlflow, pandas as pd; m = mlflow.pyfunc.load_model('models:/adept-movie-sentiment@champion');
               print(m.predict(pd.DataFrame({'text': ['a wonderful film']})))"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", help="sweep name (jobs/tune_adept.py): register its best trial")
    which.add_argument("--run-id", help="an MLflow run of a trial or of jobs/train_adept.py")
    parser.add_argument("--mlflow-uri", help="tracking + registry URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    parser.add_argument("--experiment", help="look for the sweep in this experiment only")
    parser.add_argument("--name", help="registered model name (default: adept-<task>)")
    parser.add_argument("--force", action="store_true", help="move @champion to this version even if it is not better")
    args = parser.parse_args(argv)

    from mlflow.exceptions import MlflowException

    from pipeline.registry import CHAMPION, best_of_sweep, candidate_from_run, register
    from pipeline.tracking import check_tracking_server

    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    try:
        check_tracking_server(uri)
        candidate = best_of_sweep(uri, args.sweep, args.experiment) if args.sweep else candidate_from_run(uri, args.run_id)
    except (ValueError, OSError, MlflowException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[adept] candidate: run {candidate.run_id} ({candidate.task_name}, {candidate.params.get('method')}, "
          f"m={candidate.params.get('num_virtual_tokens')} r={candidate.params.get('r_resolved')}): "
          f"{candidate.metric} = {candidate.score:.4g}")
    try:
        result = register(uri, candidate, name=args.name, force=args.force)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verb = "registered as new" if result.new_version else "already registered as"
    print(f"[adept] {verb} version {result.version} of {result.name!r}")
    state = "moved to" if result.moved else "stays on"
    print(f"[adept] @{CHAMPION} {state} version {result.champion}: {result.reason}")
    print(f"[adept] load it: mlflow.pyfunc.load_model('models:/{result.name}@{CHAMPION}')  "
          f"(tracking/registry URI {uri})")
    print(f"[adept] predict a file: python jobs/predict.py --model models:/{result.name}@{CHAMPION} "
          f"--mlflow-uri {uri} --input inputs.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
