"""The registered ADePT model as MLflow "models from code": this file *is* the model's code (no pickling).

`pipeline.registry` logs it with `python_model=<this file>`, the adapter folder as the artifact "adapter"
(and, with --bundle-backbone, the backbone folder as "backbone"), and a flat `model_config`: a
`pipeline.serving.ServingConfig`. Loading runs this file and calls `load_context`:

    model = mlflow.pyfunc.load_model("models:/adept-movie-sentiment@champion",
                                     model_config={"folded": True, "backbone": "/models/smollm2"})
    model.predict(pd.DataFrame({"text": ["a gripping, funny film", "two hours I will never get back"]}))
    # -> ["positive", "negative"]

`predict` takes the task's input columns (or one `source` column with the formatted text) and returns one
label string (rank scoring) or generated answer per row; an empty frame gives `[]`; a missing column is an
`MlflowException` (HTTP 400 from `mlflow models serve`) naming it and the expected ones.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class AdeptPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from pipeline.serving import ServingConfig

        config = ServingConfig.from_model_config(context.model_config or {})
        bundled = context.artifacts.get("backbone")
        self.load(config, Path(context.artifacts["adapter"]), bundled_backbone=bundled)

    def load(self, config, adapter_dir: Path, bundled_backbone: str | None = None) -> AdeptPyfunc:
        """Build the model from a `ServingConfig` and an adapter folder (also used by jobs/predict.py)."""
        import torch

        from adept import AdeptModel
        from pipeline.backbone_info import check_fingerprint, fingerprint
        from pipeline.backbones import load_backbone, resolve_backbone
        from pipeline.data import TokenizeConfig
        from pipeline.evaluation import EvalConfig

        backbone = config.backbone
        if bundled_backbone and backbone == _recorded(config):  # no override: the copy that travelled along
            backbone = bundled_backbone
        if config.backbone_fingerprint:
            check_fingerprint(config.backbone_fingerprint, fingerprint(resolve_backbone(backbone)),
                              _recorded(config), backbone)
        base, self.tokenizer, kind = load_backbone(backbone, dtype=config.dtype)
        model = AdeptModel.from_pretrained(base, adapter_dir).eval()
        if config.folded:
            model = model.fold().eval()
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.config = model.to(device), config
        tokenize = TokenizeConfig(backbone=kind, max_source_length=config.max_source_length,
                                  max_target_length=config.max_target_length)
        pad_to = model.config.max_length if model.config.method == "dept" else None
        self.eval_config = EvalConfig(tokenize=tokenize, eval_mode=config.eval_mode, batch_size=config.batch_size,
                                      pad_to_length=pad_to)
        return self

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from pipeline.evaluation import predict_generate, predict_rank
        from pipeline.serving import InputError

        frame = _as_frame(model_input)
        dropped = _DROPPED.take()
        try:
            if dropped and frame.shape[1] == 0:  # every column was unknown: not an empty request
                raise InputError(f"input has none of the expected columns {self.config.columns or ['source']} "
                                 f"(or 'source'); got {dropped}.")
            sources = self.config.sources(frame)
        except InputError as err:  # the scoring server turns this into HTTP 400 with our message
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        if not sources:
            return []
        if self.config.eval_mode == "rank":
            return predict_rank(self.model, self.tokenizer, sources, self.config.label_strings, self.eval_config)
        return predict_generate(self.model, self.tokenizer, sources, self.eval_config, self.config.max_new_tokens)


class _DroppedColumns(logging.Filter):
    """MLflow's schema enforcement drops columns the signature does not name (the inputs are all optional, so
    both forms - the task's columns or `source` - pass) and only logs a warning. A request whose columns were
    all unknown then reaches `predict` as an empty frame, like a truly empty request: this filter remembers,
    per thread, which columns MLflow dropped for the call in progress."""

    def __init__(self):
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "extra inputs" in message and "`" in message:
            self.local.dropped = message.split("`")[1]
        return True

    def take(self) -> str | None:
        dropped, self.local.dropped = getattr(self.local, "dropped", None), None
        return dropped


_DROPPED = _DroppedColumns()
logging.getLogger("mlflow.models.utils").addFilter(_DROPPED)


def _recorded(config) -> str:
    fp = config.backbone_fingerprint or {}
    return fp.get("ref", config.backbone)


def _as_frame(model_input) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, pd.Series):
        return model_input.to_frame()
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input)
    return pd.DataFrame(list(model_input))  # a list of row dicts


mlflow.models.set_model(AdeptPyfunc())
