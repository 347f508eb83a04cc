"""The registered ADePT model as MLflow "models from code": this file *is* the model's code (no pickling).

`pipeline.registry.log_adept_model` logs it with `python_model=<this file>`, the adapter folder as the
artifact "adapter" and a `model_config` holding the backbone reference (alias, HF id or folder) and
how the task turns inputs into text. Loading runs this file and calls `load_context`:

    model = mlflow.pyfunc.load_model("models:/adept-movie-sentiment@champion")
    model.predict(pd.DataFrame({"text": ["a gripping, funny film", "two hours I will never get back"]}))
    # -> ["positive", "negative"]

`predict` takes a DataFrame with the task's input columns (e.g. `text` for movie-sentiment, the
`input_columns` of a custom task), or a `source` column holding the formatted model input, and returns
one label string (classification, rank scoring) or generated answer per row. `model_config={"folded":
True}` at load time folds ADePT's FFN into the embedding table first (same outputs, PT-cost inference).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

LABEL_KEYS = ("label", "value", "answers", "idx", "group")  # formatter fields that only carry the gold answer


class AdeptPyfunc(PythonModel):
    def load_context(self, context) -> None:
        import torch

        from adept import AdeptModel
        from pipeline.backbones import load_backbone
        from pipeline.data import TokenizeConfig
        from pipeline.evaluation import EvalConfig

        given = dict(context.model_config or {})
        cfg = {**given.pop("adept", {}), **given}  # logged settings, then load-time overrides ({"folded": True})
        self.cfg = cfg
        base, self.tokenizer, kind = load_backbone(cfg["backbone"], dtype=cfg.get("dtype", "float32"))
        model = AdeptModel.from_pretrained(base, context.artifacts["adapter"]).eval()
        if cfg.get("folded"):
            model = model.fold().eval()
        device = cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(device)
        self.label_strings = list(cfg.get("label_strings") or [])
        self.eval_mode = cfg.get("eval_mode", "rank" if self.label_strings else "generate")
        tokenize = TokenizeConfig(backbone=kind, max_source_length=int(cfg.get("max_source_length", 256)),
                                  max_target_length=int(cfg.get("max_target_length", 16)))
        pad_to = model.config.max_length if model.config.method == "dept" else None
        self.eval_config = EvalConfig(tokenize=tokenize, eval_mode=self.eval_mode,
                                      batch_size=int(cfg.get("batch_size", 32)), pad_to_length=pad_to)
        self._formatter = None
        if cfg.get("task") and not cfg.get("input_columns"):
            from pipeline.tasks import get_task

            self._formatter = get_task(cfg["task"]).formatter

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from pipeline.evaluation import predict_generate, predict_rank

        sources = self.sources(model_input)
        if not sources:
            return []
        if self.eval_mode == "rank":
            return predict_rank(self.model, self.tokenizer, sources, self.label_strings, self.eval_config)
        return predict_generate(self.model, self.tokenizer, sources, self.eval_config,
                                int(self.cfg.get("max_new_tokens", 20)))

    # ------------------------------------------------------------------ inputs -> model text
    def sources(self, model_input) -> list[str]:
        frame = _as_frame(model_input)
        if "source" in frame.columns:
            return [str(s) for s in frame["source"]]
        rows = frame.to_dict("records")
        columns = self.cfg.get("input_columns")
        if columns:  # a custom task: "name: value" pairs in the task's column order
            from pipeline.tasks.base import join_fields

            missing = [c for c, _ in columns if c not in frame.columns]
            if missing:
                raise ValueError(f"input is missing column(s) {missing}; give {[c for c, _ in columns]} or 'source'.")
            return [join_fields(*((shown, "" if row[c] is None else row[c]) for c, shown in columns)) for row in rows]
        if self._formatter is None:
            raise ValueError("this model has no input format recorded: pass a 'source' column.")
        out = []
        for row in rows:
            probe = _Row(row)
            out.append(str(self._formatter(probe)["source"]))
            missing = [k for k in probe.missing if k not in LABEL_KEYS]
            if missing:
                raise ValueError(f"input is missing column(s) {missing} of task {self.cfg.get('task')!r} "
                                 f"(got {list(frame.columns)}); or pass a 'source' column.")
        return out


class _Row(Mapping):
    """A row for a task formatter: gold-answer fields it asks for but inputs lack read as 0 (and are noted)."""

    def __init__(self, data: dict):
        self.data, self.missing = data, []

    def __getitem__(self, key):
        if key in self.data:
            return self.data[key]
        self.missing.append(key)
        return 0

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def _as_frame(model_input) -> pd.DataFrame:
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, pd.Series):
        return model_input.to_frame()
    if isinstance(model_input, dict):
        return pd.DataFrame(model_input)
    return pd.DataFrame(list(model_input))  # a list of row dicts


mlflow.models.set_model(AdeptPyfunc())
