"""Repair a run after a tracking outage outlasted the budget (the job's error message gives the commands).

    python -m pipeline.tracking relog --journal ray_results/<run>/metrics.jsonl --run-id <id> --mlflow-uri <uri>
    python -m pipeline.tracking close --run-id <id> --status FINISHED --mlflow-uri <uri>

`relog` sends the journaled metric points; points the run already holds (same key, same or earlier step)
are skipped, so running it twice is harmless. `close` writes the final status the job could not write.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tracking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("relog", help="send a metrics journal to its run")
    cmd.add_argument("--journal", type=Path, required=True)
    cmd.add_argument("--run-id", required=True)
    cmd.add_argument("--mlflow-uri", required=True)
    close = sub.add_parser("close", help="give a run the final status the job could not write")
    close.add_argument("--run-id", required=True)
    close.add_argument("--status", required=True, choices=["FINISHED", "FAILED", "KILLED"])
    close.add_argument("--mlflow-uri", required=True)
    args = parser.parse_args(argv)

    from pipeline.tracking import check_tracking_server, close_run, relog

    try:
        check_tracking_server(args.mlflow_uri)
        if args.command == "close":
            close_run(args.mlflow_uri, args.run_id, args.status)
            print(f"[adept] run {args.run_id} is {args.status}")
            return 0
        if not args.journal.is_file():
            raise FileNotFoundError(f"--journal: {str(args.journal)!r} does not exist.")
        sent = relog(args.journal, args.mlflow_uri, args.run_id)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[adept] {sent} metric point(s) sent to run {args.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
