"""Predict a file of task inputs with an adapter: a registered model, a pyfunc folder or an adapter folder.

    python jobs/predict.py --model models:/adept-movie-sentiment@champion --input reviews.csv
    python jobs/predict.py --model models:/adept-movie-sentiment/3 --backbone /models/smollm2 --folded --input in.csv
    python jobs/predict.py --model ray_results/adept-demo/trials/.../best_adapter --task movie-sentiment \\
                           --input reviews.jsonl --output predictions.jsonl

Inputs: CSV or JSONL with the task's input columns (movie-sentiment: `text`; a custom task: its
`input_columns`) or a `source` column with the formatted model input; every such cell must hold text (an
empty CSV cell, a JSON null or number is an error naming its row and column). Output: the input rows plus a
`prediction` column (label string, or the generated answer), to --output (.csv / .jsonl) or stdout.
Load options (pipeline/serving/config.py): --folded, --backbone (another copy of the backbone, e.g. when the recorded
folder moved; fingerprint-checked), --batch-size, --max-new-tokens, --device, or any of them as
--option key=value; an unknown option is an error listing them (exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline import cli  # noqa: E402 - standard library only: --help stays fast


def read_inputs(path: Path):
    import pandas as pd

    if not path.is_file():
        raise cli.UserError(f"input file {str(path)!r} does not exist.")
    if path.suffix.lower() == ".csv":
        hint = 'quote text that contains commas ("a, b")'
        try:
            # CSV cells are all text: read them as such ("5" is a review, not a number) and only an empty
            # cell as missing (pandas' default would also turn the texts "NA", "None", "null" into NaN).
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        except pd.errors.ParserError as err:
            raise cli.UserError(f"input file {path.name!r}: {str(err).strip()}; {hint}.") from None
        if not isinstance(frame.index, pd.RangeIndex):  # pandas turned the extra leading fields into an index
            raise cli.UserError(f"input file {path.name!r}: rows have more fields than the header "
                                f"{list(frame.columns)}; {hint}.")
        return frame
    if path.suffix.lower() in (".jsonl", ".json"):
        try:
            return pd.read_json(path, lines=path.suffix.lower() == ".jsonl")
        except ValueError as err:
            raise cli.UserError(f"input file {path.name!r}: not valid JSON lines ({err}); one JSON object per line.") from None
    raise cli.UserError(f"input file {path.name!r}: use .csv or .jsonl.")


def write_outputs(frame, path: Path | None) -> None:
    if path is None:
        print(frame.to_csv(index=False), end="")
    elif path.suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True, force_ascii=False)


def load_options(args) -> dict:
    """The load options given on the command line (pipeline.serving.config.LOAD_OPTIONS), validated."""
    from pipeline.core.config import parse_override
    from pipeline.serving.config import check_options

    for item in args.option:
        if "=" not in item or not item.partition("=")[0].strip():
            raise cli.UserError(f"--option {item!r}: not of the form key=value.")
    options = dict(parse_override(item) for item in args.option)
    for key in ("folded", "backbone", "batch_size", "max_new_tokens", "device"):
        value = getattr(args, key)
        if value not in (None, False):
            if key in options:
                raise cli.UserError(f"{key}: given twice, as --{key.replace('_', '-')} and --option; keep one.")
            options[key] = value
    check_options(options)
    return options


def check_registry(args) -> None:
    """A `models:/` model's store and name, in seconds: before pandas, torch or MLflow are imported."""
    if args.model.startswith("models:/"):
        from pipeline.core.config import default_tracking_uri
        from pipeline.tracking.preflight import check_registered_model

        check_registered_model(args.model, args.mlflow_uri or default_tracking_uri())


def load_model(args, options: dict):
    """A model with .predict(frame): from the registry / a pyfunc folder, or an adapter folder directly."""
    source = args.model
    if source.startswith(("models:/", "runs:/")) or (Path(source) / "MLmodel").is_file():
        from pipeline.tracking import check_tracking_server, default_tracking_uri
        from pipeline.tracking import load_model as load_pyfunc

        uri = None
        if source.startswith(("models:/", "runs:/")):
            uri = args.mlflow_uri or default_tracking_uri()
            check_tracking_server(uri)  # seconds, not minutes of retries, when the server is away
        return load_pyfunc(source, model_config=options or None, uri=uri)
    return load_adapter_folder(Path(source), args, options)


def load_adapter_folder(adapter: Path, args, options: dict):
    from adept.io import find_adapter_files
    from pipeline.serving.config import ServingConfig
    from pipeline.serving.pyfunc import AdeptPyfunc

    try:
        files = find_adapter_files(adapter)  # refuses anything that is not an adapter folder, with the reason
        adept = files.adept_config()
    except (OSError, ValueError) as err:  # adept/ knows nothing of the pipeline's error type: a bad folder is the user's
        raise cli.UserError(f"--model: {err}") from err
    if not args.task:
        raise cli.UserError("--task: an adapter folder needs the task (a registered task name or a custom-task YAML).")
    backbone = options.pop("backbone", None) or files.backbone
    if not backbone:
        raise cli.UserError("--backbone: the adapter does not record its backbone; pass it.")
    train = {"task": args.task, "backbone": backbone, "method": adept.method, "r": adept.ffn_hidden_size or adept.rank,
             "num_virtual_tokens": adept.num_virtual_tokens, "eval_mode": args.eval_mode or "rank"}
    for key in ("max_source_length", "max_target_length"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    config = ServingConfig.from_run(train, backbone=backbone).with_options(options)
    model = AdeptPyfunc().load(config, adapter)
    return _Local(model)


class _Local:
    """An adapter loaded without MLflow, with the pyfunc model's predict(frame) call."""

    def __init__(self, model):
        self.model = model

    def predict(self, frame):
        return self.model.predict(None, frame)


@cli.job
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, a pyfunc folder, "
                                                       "or an adapter folder")
    parser.add_argument("--input", required=True, type=Path, help=".csv or .jsonl with the task's input columns")
    parser.add_argument("--output", type=Path, help=".csv or .jsonl (default: CSV on stdout)")
    parser.add_argument("--folded", action="store_true", help="fold ADePT's FFN into the embedding table first")
    parser.add_argument("--backbone", help="load this backbone (alias, hub id or folder) instead of the recorded one")
    parser.add_argument("--batch-size", type=int, help="examples per forward pass")
    parser.add_argument("--max-new-tokens", type=int, help="generation budget (generate mode)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any load option")
    parser.add_argument("--mlflow-uri", help="tracking/registry URI for models:/ (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--task", help="adapter folder only: task name or custom-task YAML")
    parser.add_argument("--eval-mode", choices=["rank", "generate"], help="adapter folder only (default: rank)")
    parser.add_argument("--max-source-length", type=int, help="adapter folder only (default: TrainConfig's)")
    parser.add_argument("--max-target-length", type=int, help="adapter folder only (default: TrainConfig's)")
    args = parser.parse_args(argv)
    cli.start(args)

    try:
        check_registry(args)
        frame = read_inputs(args.input)
        model = load_model(args, load_options(args))
        predictions = model.predict(frame)
    except cli.UserError as err:  # first: MLflow's error types below take seconds to import
        return cli.fail(err)
    except Exception as err:  # noqa: BLE001 - MLflow's refusal of a request is the user's; anything else a bug
        from pipeline.tracking import request_errors

        if isinstance(err, request_errors()):
            return cli.fail(err)
        raise
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
