"""Predict a file of task inputs with an adapter: a registered model, a pyfunc folder or an adapter folder.

    python jobs/predict.py --model models:/adept-movie-sentiment@champion --input reviews.csv
    python jobs/predict.py --model ray_results/adept-demo/trials/.../best_adapter --backbone smollm2-135m \\
                           --task movie-sentiment --input reviews.jsonl --output predictions.jsonl --folded

Inputs: CSV or JSONL with the task's input columns (movie-sentiment: `text`; a custom task: its
`input_columns`) or a `source` column with the formatted model input. Output: the input rows plus a
`prediction` column (label string, or the generated answer), to --output (.csv / .jsonl) or stdout.
--folded folds ADePT's FFN into the embedding table first (same predictions, prompt-tuning cost).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def read_inputs(path: Path):
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist.")
    if path.suffix.lower() == ".csv":
        hint = 'quote text that contains commas ("a, b")'
        try:
            frame = pd.read_csv(path)
        except pd.errors.ParserError as err:
            raise ValueError(f"input file {path.name!r}: {str(err).strip()}; {hint}.") from None
        if not isinstance(frame.index, pd.RangeIndex):  # pandas turned the extra leading fields into an index
            raise ValueError(f"input file {path.name!r}: rows have more fields than the header "
                             f"{list(frame.columns)}; {hint}.")
        return frame
    if path.suffix.lower() in (".jsonl", ".json"):
        return pd.read_json(path, lines=path.suffix.lower() == ".jsonl")
    raise ValueError(f"input file {path.name!r}: use .csv or .jsonl.")


def write_outputs(frame, path: Path | None) -> None:
    if path is None:
        print(frame.to_csv(index=False), end="")
    elif path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)


def load_model(args):
    """A pyfunc model: from the registry / a pyfunc folder, or a local adapter folder wrapped on the fly."""
    import mlflow

    overrides = {"folded": True} if args.folded else None
    source = args.model
    if source.startswith(("models:/", "runs:/")) or (Path(source) / "MLmodel").is_file():
        if args.mlflow_uri:
            mlflow.set_tracking_uri(args.mlflow_uri)
            mlflow.set_registry_uri(args.mlflow_uri)
        return mlflow.pyfunc.load_model(source, model_config=overrides)
    from adept.io import CONFIG_NAME, PEFT_CONFIG_NAME, find_adapter_files

    adapter = Path(source)
    try:
        files = find_adapter_files(adapter)  # any layout adept reads: adept-ray, adept-ray 0.1, official ADePT/PEFT
    except FileNotFoundError:
        raise FileNotFoundError(f"{source!r} is neither a models:/ URI, a pyfunc folder (MLmodel) nor an adapter "
                                f"folder ({CONFIG_NAME} or {PEFT_CONFIG_NAME}).") from None
    if not args.task:
        raise ValueError("an adapter folder needs --task (a registered task name or a custom-task YAML).")
    backbone = args.backbone or files.backbone
    if not backbone:
        raise ValueError("the adapter does not record its backbone: pass --backbone.")
    from pipeline.registry import Candidate, model_config

    params = {"task": args.task, "backbone": backbone, "eval_mode": args.eval_mode,
              "max_source_length": str(args.max_source_length), "max_target_length": str(args.max_target_length)}
    config = {**model_config(Candidate("local", 0.0, "", "max", args.task, params, {})), **(overrides or {})}
    from pipeline.adept_pyfunc import AdeptPyfunc

    class Context:  # what load_context reads from MLflow's context
        artifacts = {"adapter": str(adapter)}
        model_config = config

    model = AdeptPyfunc()
    model.load_context(Context)
    return _Local(model)


class _Local:
    def __init__(self, model):
        self.model = model

    def predict(self, frame):
        return self.model.predict(None, frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, a pyfunc folder, "
                                                       "or an adapter folder")
    parser.add_argument("--input", required=True, type=Path, help=".csv or .jsonl with the task's input columns")
    parser.add_argument("--output", type=Path, help=".csv or .jsonl (default: CSV on stdout)")
    parser.add_argument("--folded", action="store_true", help="fold ADePT's FFN into the embedding table first")
    parser.add_argument("--mlflow-uri", help="tracking/registry URI for models:/ (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--task", help="adapter folder only: task name or custom-task YAML")
    parser.add_argument("--backbone", help="adapter folder only: default: the backbone the adapter records")
    parser.add_argument("--eval-mode", default="rank", choices=["rank", "generate"], help="adapter folder only")
    parser.add_argument("--max-source-length", type=int, default=256, help="adapter folder only")
    parser.add_argument("--max-target-length", type=int, default=16, help="adapter folder only")
    args = parser.parse_args(argv)
    if args.mlflow_uri is None and os.environ.get("MLFLOW_TRACKING_URI") is None and args.model.startswith("models:/"):
        args.mlflow_uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"

    from mlflow.exceptions import MlflowException

    try:
        frame = read_inputs(args.input)
        model = load_model(args)
        predictions = model.predict(frame)
    except (ValueError, KeyError, OSError, MlflowException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frame = frame.copy()
    frame["prediction"] = list(predictions)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
    write_outputs(frame, args.output)
    if args.output is not None:
        print(f"[adept] {len(frame)} predictions -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
