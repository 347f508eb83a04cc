"""The registered model as a deployable artefact (issue 13): its backbone is a reference that can move (a clear
error, then `backbone` as a load option, fingerprint-checked), load options really apply (`folded`), options
that are not load options are refused where our code can see them, and --bundle-backbone ships the backbone.

One module-wide store: a model registered on a copy of the tiny backbone (plain and bundled), predictions taken,
then the backbone folder moved away; every test here works with the moved folder."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from registry_helpers import fake_sweep, make_store
from synthetic import write_backbone
from tiny import tiny_llama, tiny_tokenizer
from transformers import AutoModelForCausalLM

from adept import AdeptModel
from adept.fold import FoldedAdeptModel
from jobs.predict import main as predict_main
from jobs.register_best import main as register_main
from pipeline.core.backbones import BackboneError

pytestmark = [pytest.mark.serving, pytest.mark.slow]  # registers and loads pyfunc models (~2-5 s each)

NAME, BUNDLED = "adept-synthetic-sentiment", "adept-synthetic-sentiment-bundled"
TEXTS = ["good great movie", "awful bad plot", "the film a acting", "great acting", "bad movie the"]


def load(uri: str, **options):
    return mlflow.pyfunc.load_model(uri, model_config=options or None)


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def moved(tmp_path_factory, synthetic_task):
    root = tmp_path_factory.mktemp("deployable")
    original = write_backbone(root / "backbone-original")
    store = make_store(root, synthetic_task, original)
    fake_sweep(store, "sweep", 75.0)
    uri = store["uri"]
    assert register_main(["--mlflow-uri", uri, "--sweep", "sweep"]) == 0
    assert register_main(["--mlflow-uri", uri, "--sweep", "sweep", "--name", BUNDLED, "--bundle-backbone"]) == 0
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    frame = pd.DataFrame({"sentence": TEXTS})
    before = load(f"models:/{NAME}@champion").predict(frame)
    assert len(before) == len(TEXTS) and set(before) == {"negative", "positive"}  # the input matters
    inputs = root / "inputs.csv"
    frame.to_csv(inputs, index=False)
    new = root / "models" / "backbone-moved"
    new.parent.mkdir(exist_ok=True)
    shutil.move(original, new)  # the recorded folder is gone
    return {"uri": uri, "root": root, "original": original, "new": new, "before": before, "frame": frame,
            "inputs": inputs}


def predict_cli(moved, *args, model=f"models:/{NAME}@champion"):
    out = moved["root"] / f"out-{abs(hash(args))}.jsonl"
    code = predict_main(["--model", model, "--mlflow-uri", moved["uri"], "--input", str(moved["inputs"]),
                         "--output", str(out), *args])
    return code, ([json.loads(line)["prediction"] for line in out.read_text().splitlines()] if code == 0 else None)


def test_moved_backbone_fails_clearly_then_loads_from_its_new_folder(moved, capsys, monkeypatch):
    original, new = str(moved["original"]), str(moved["new"])
    with pytest.raises(BackboneError) as err:
        load(f"models:/{NAME}@champion")
    message = str(err.value)
    assert f"recorded backbone {original!r}" in message and "no folder" in message
    assert "model_config={'backbone': FOLDER}" in message and "predict.py --backbone FOLDER" in message
    assert "MLFLOW_PYFUNC_INFERENCE_CONFIG" in message and "--bundle-backbone" in message

    assert load(f"models:/{NAME}@champion", backbone=new).predict(moved["frame"]) == moved["before"]
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", json.dumps({"backbone": new}))  # mlflow models serve's way
    assert load(f"models:/{NAME}@champion").predict(moved["frame"]) == moved["before"]
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG")

    capsys.readouterr()
    assert predict_cli(moved)[0] == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("error: backbone:") and original in err_text and "--backbone" in err_text
    assert predict_cli(moved, "--backbone", new) == (0, moved["before"])
    assert predict_cli(moved, "--option", f"backbone={new}") == (0, moved["before"])

    missing = str(moved["root"] / "nowhere")  # a wrong override is named as the option, next to the recorded one
    with pytest.raises(BackboneError, match=re.escape(f"load option backbone='{missing}'") + ".*"
                       + re.escape(f"recorded backbone: '{original}'")):
        load(f"models:/{NAME}@champion", backbone=missing)


@pytest.mark.parametrize("change", ["weights", "config"])
def test_another_backbone_is_refused_naming_both(moved, tmp_path, capsys, change):
    other = tmp_path / f"other-{change}"
    if change == "weights":  # same config and shapes (header hash equal), other values
        model = tiny_llama(hidden_size=32, seed=1)
    else:  # same sizes and architecture, another config (and init)
        model = tiny_llama(hidden_size=32, init_std=0.1)
    model.save_pretrained(other)
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(other)
    key = "weights_sample_sha256" if change == "weights" else "config_sha256"
    with pytest.raises(BackboneError) as err:
        load(f"models:/{NAME}@champion", backbone=str(other))
    message = str(err.value)
    assert f"{str(other)!r} is not the backbone this adapter was trained on" in message
    assert f"recorded: {str(moved['original'])!r}" in message and f"{key}: recorded '" in message
    assert "weights_sha256:" not in message  # the header hash cannot tell same-shape weights apart
    capsys.readouterr()
    assert predict_cli(moved, "--backbone", str(other))[0] == 2
    assert "is not the backbone this adapter was trained on" in capsys.readouterr().err


def test_folded_is_honoured_and_off_by_default(moved):
    new = str(moved["new"])
    plain = load(f"models:/{NAME}@champion", backbone=new).unwrap_python_model()
    folded = load(f"models:/{NAME}@champion", backbone=new, folded=True).unwrap_python_model()
    assert type(plain.model) is AdeptModel and plain.config.folded is False
    assert type(folded.model) is FoldedAdeptModel and folded.config.folded is True
    backbone_table = plain.model.base_model.get_input_embeddings().weight
    folded_table = folded.model.base_model.get_input_embeddings().weight
    on_disk = AutoModelForCausalLM.from_pretrained(new).get_input_embeddings().weight
    assert torch.equal(backbone_table, on_disk)  # unfolded: the backbone's own table E
    assert not torch.allclose(folded_table, on_disk, atol=1e-4)  # folded: E' = E + FFN(E)
    assert folded.predict(None, moved["frame"]) == moved["before"]  # eval-mode exact


def test_only_load_options_can_be_changed(moved, capsys):
    uri, new = f"models:/{NAME}@champion", str(moved["new"])
    capsys.readouterr()
    assert predict_cli(moved, "--backbone", new, "--option", "bogus=1")[0] == 2
    err = capsys.readouterr().err
    assert "unknown load option(s) ['bogus']" in err
    assert "['backbone', 'batch_size', 'device', 'folded', 'max_new_tokens']" in err
    assert predict_cli(moved, "--backbone", new, "--option", "folded=maybe")[0] == 2
    assert "load option folded='maybe' must be bool" in capsys.readouterr().err
    assert predict_cli(moved, "--backbone", new, "--option", "folded")[0] == 2
    assert "--option 'folded': not of the form key=value" in capsys.readouterr().err

    for options, match in (({"task": "x"}, r"\['task'\] describe how the adapter was trained"),
                           ({"backbone_fingerprint": None}, r"\['backbone_fingerprint'\]"),
                           ({"label_strings": ["no", "yes"]}, r"\['label_strings'\]"),
                           ({"folded": "yes"}, "load option folded='yes' must be bool"),
                           ({"batch_size": 0.5}, "load option batch_size=0.5 must be int")):
        with pytest.raises(ValueError, match=match):
            load(uri, backbone=new, **options)

    # MLflow drops keys the model was not logged with before our code runs: a warning, and the model loads
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addHandler(handler)
    try:
        model = load(uri, backbone=new, bogus=1)
    finally:
        logger.removeHandler(handler)
    assert any("bogus were ignored" in r.getMessage() for r in records)
    assert model.predict(moved["frame"]) == moved["before"]


def test_bundled_backbone_needs_no_original(moved):
    assert not moved["original"].exists()
    model = load(f"models:/{BUNDLED}@champion")  # no override: the copy inside the model
    assert model.predict(moved["frame"]) == moved["before"]
    used = Path(model.unwrap_python_model().backbone)
    assert used.name == "backbone-original" and used.parent.name == "artifacts" and used.is_dir()

    sizes = {}
    for name in (NAME, BUNDLED):
        local = mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(moved["root"] / name))
        sizes[name] = tree_bytes(Path(local))
    backbone = tree_bytes(moved["new"])
    print(f"\nmodel sizes: plain {sizes[NAME]} B, bundled {sizes[BUNDLED]} B, backbone folder {backbone} B")
    assert sizes[BUNDLED] - sizes[NAME] == pytest.approx(backbone, rel=0.01)
