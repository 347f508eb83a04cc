"""The registered ADePT model as MLflow "models from code": this file *is* the model's code (no pickling).

`pipeline.serving.registry` logs it with `python_model=<this file>`, the adapter folder as the artifact "adapter"
(and, with --bundle-backbone, the backbone folder as "backbone"), and a flat `model_config`: a
`pipeline.serving.config.ServingConfig`. Loading runs this file and calls `load_context`:

    model = mlflow.pyfunc.load_model("models:/adept-movie-sentiment@champion",
                                     model_config={"folded": True, "backbone": "/models/smollm2"})
    model.predict(pd.DataFrame({"text": ["a gripping, funny film", "two hours I will never get back"]}))
    # -> ["positive", "negative"]

`load_context` refuses a changed `model_config` key that is not a load option (`pipeline.serving.config.check_overrides`),
and a backbone it cannot find (the recorded folder moved, say) with a `BackboneError` naming it and the ways
to pass another copy (`model_config={"backbone": ...}`, `predict.py --backbone`, for `mlflow models serve`
`MLFLOW_PYFUNC_INFERENCE_CONFIG`); any backbone is fingerprint-checked against the recorded one.

`predict` takes the task's input columns (or one `source` column with the formatted text) and returns one
label string (rank scoring) or generated answer per row; an empty request (no rows, no columns) gives `[]`; a
missing column - also when MLflow dropped every column as unknown - is an `MlflowException` (HTTP 400 from
`mlflow models serve`) naming the missing and the expected ones; so is a null or non-string cell in an input
column (`pipeline.serving.config.check_text`), naming its row and column.

MLflow reaches this file only through `pipeline.tracking` (PythonModel, set_model, bad_input,
logged_model_config); loading it finds `pipeline` and `adept` among the model's code_paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.tracking import PythonModel, bad_input, logged_model_config, set_model


class AdeptPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from pipeline.serving.config import ServingConfig, check_overrides

        given = dict(context.model_config or {})
        check_overrides(given, _logged_config(context))  # only load options may differ from what was logged
        config = ServingConfig.from_model_config(given)
        bundled = context.artifacts.get("backbone")
        self.load(config, Path(context.artifacts["adapter"]), bundled_backbone=bundled)

    def load(self, config, adapter_dir: Path, bundled_backbone: str | None = None) -> AdeptPyfunc:
        """Build the model from a `ServingConfig` and an adapter folder (also used by jobs/predict.py)."""
        import torch

        from adept import AdeptModel
        from pipeline.core.backbone_info import check_fingerprint, fingerprint
        from pipeline.core.backbones import BackboneError, load_backbone, resolve_backbone
        from pipeline.core.data import TokenizeConfig
        from pipeline.core.evaluation import EvalConfig

        recorded = _recorded(config)
        backbone = config.backbone
        if bundled_backbone and backbone == recorded:  # no override: the copy that travelled along
            backbone = bundled_backbone
        try:
            actual = fingerprint(resolve_backbone(backbone)) if config.backbone_fingerprint else None
        except (BackboneError, OSError, ValueError) as err:
            raise BackboneError(_unavailable(backbone, recorded, err)) from None
        if actual is not None:
            check_fingerprint(config.backbone_fingerprint, actual, recorded, backbone)
        base, self.tokenizer, kind = load_backbone(backbone, dtype=config.dtype)
        model = AdeptModel.from_pretrained(base, adapter_dir).eval()
        if config.folded:
            model = model.fold().eval()
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.config, self.backbone = model.to(device), config, backbone  # backbone: what was loaded
        tokenize = TokenizeConfig(backbone=kind, max_source_length=config.max_source_length,
                                  max_target_length=config.max_target_length)
        pad_to = model.config.max_length if model.config.method == "dept" else None
        self.eval_config = EvalConfig(tokenize=tokenize, eval_mode=config.eval_mode, batch_size=config.batch_size,
                                      pad_to_length=pad_to)
        return self

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from pipeline.core.evaluation import predict_generate, predict_rank
        from pipeline.serving.config import DROPPED_COLUMNS, InputError

        frame = _as_frame(model_input)
        try:
            sources = self.config.sources(frame, dropped=DROPPED_COLUMNS.take())
        except InputError as err:  # the scoring server turns this into HTTP 400 with our message
            raise bad_input(str(err)) from None
        if not sources:
            return []
        if self.config.eval_mode == "rank":
            return predict_rank(self.model, self.tokenizer, sources, self.config.label_strings, self.eval_config)
        return predict_generate(self.model, self.tokenizer, sources, self.eval_config, self.config.max_new_tokens)


def _recorded(config) -> str:
    fp = config.backbone_fingerprint or {}
    return fp.get("ref", config.backbone)


def _unavailable(backbone: str, recorded: str, err: BaseException) -> str:
    """The error for a backbone that cannot be found: which one, why, and the ways to pass another copy."""
    reason = str(err).split("; fix:")[0].split("\nFix:")[0].strip()
    path = Path(backbone).expanduser()
    if backbone.startswith(("/", "./", "../", "~")) and not path.exists():
        reason = f"there is no folder {str(path)!r} on this machine (moved or deleted?)"
    fix = ("Fix: pass a copy of the same backbone (a folder, hub id or alias): "
           "mlflow.pyfunc.load_model(uri, model_config={'backbone': FOLDER}), "
           "python jobs/predict.py --backbone FOLDER, or for mlflow models serve the environment variable "
           "MLFLOW_PYFUNC_INFERENCE_CONFIG='{\"backbone\": \"FOLDER\"}'; it is fingerprint-checked. "
           "Or register with jobs/register_best.py --bundle-backbone to ship the backbone inside the model.")
    if backbone == recorded:
        return f"backbone: the model's recorded backbone {recorded!r} cannot be loaded: {reason}. {fix}"
    return (f"backbone: the load option backbone={backbone!r} cannot be loaded (recorded backbone: {recorded!r}): "
            f"{reason}. {fix}")


def _logged_config(context) -> dict | None:
    """The model_config as logged (the MLmodel file beside the artifacts), to tell which keys a loader changed."""
    for artifact in context.artifacts.values():
        for folder in Path(artifact).parents[:3]:
            if (folder / "MLmodel").is_file():
                return logged_model_config(folder)
    return None


def _as_frame(model_input) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, pd.Series):
        return model_input.to_frame()
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input)
    return pd.DataFrame(list(model_input))  # a list of row dicts


from pipeline.serving.config import watch_dropped_columns  # noqa: E402 - standard library only

watch_dropped_columns()
set_model(AdeptPyfunc())
