"""Registry semantics (a worse sweep never moves @champion, --force does, versions are never lost), the
pyfunc model's predict and the predict CLI. MLflow on sqlite; the runs look like a sweep's (no Ray)."""

import json

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from registry_helpers import fake_sweep, make_store

from jobs.predict import main as predict_main
from jobs.register_best import main as register_main

pytestmark = pytest.mark.slow  # logs and loads pyfunc models (~5 s each)

NAME = "adept-synthetic-sentiment"


@pytest.fixture(scope="module")
def store(tmp_path_factory, synthetic_task, tiny_backbone):
    return make_store(tmp_path_factory.mktemp("registry"), synthetic_task, tiny_backbone)


def register(store, *args):
    return register_main(["--mlflow-uri", store["uri"], *args])


def state(store):
    client = MlflowClient(store["uri"], registry_uri=store["uri"])
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    return versions, str(client.get_model_version_by_alias(NAME, "champion").version)


def test_champion_moves_only_on_a_better_score_or_force(store, capsys):
    good = fake_sweep(store, "good", 80.0)
    worse = fake_sweep(store, "worse", 60.0)
    assert register(store, "--sweep", "good") == 0
    versions, champion = state(store)
    assert list(versions) == ["1"] and champion == "1"
    tags = versions["1"].tags
    assert tags["score"] == "80" and tags["metric"] == "val/accuracy" and tags["task"] == "synthetic-sentiment"
    assert tags["method"] == "adept" and tags["backbone"] == str(store["run"].config.backbone)
    assert tags["source_run_id"] == good

    assert register(store, "--sweep", "worse") == 0  # a worse sweep: a new version, the champion stays
    assert "does not beat" in capsys.readouterr().out
    versions, champion = state(store)
    assert sorted(versions) == ["1", "2"] and champion == "1"

    assert register(store, "--sweep", "worse", "--force") == 0  # forced: same version 2, now champion
    versions, champion = state(store)
    assert sorted(versions) == ["1", "2"] and champion == "2" and versions["2"].tags["source_run_id"] == worse

    assert register(store, "--run-id", good) == 0  # already registered: no new version; 80 beats 60
    out = capsys.readouterr().out
    assert "already registered as version 1" in out
    versions, champion = state(store)
    assert sorted(versions) == ["1", "2"] and champion == "1"


def test_unknown_sweep_or_run_fails_cleanly(store, capsys):
    assert register(store, "--sweep", "nope") == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err
    assert register(store, "--run-id", "0" * 32) == 2


def test_champion_predicts_with_and_without_folding(store, tmp_path):
    if not MlflowClient(store["uri"]).search_registered_models():
        fake_sweep(store, "only", 70.0)
        assert register(store, "--sweep", "only") == 0
    mlflow.set_registry_uri(store["uri"])
    mlflow.set_tracking_uri(store["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    texts = ["good great movie", "awful bad plot", "the film a acting"]
    predictions = model.predict(pd.DataFrame({"sentence": texts}))
    assert len(predictions) == 3 and set(predictions) <= {"negative", "positive"}
    assert model.predict(pd.DataFrame({"source": [f"sentence: {t}" for t in texts]})) == predictions
    with pytest.raises(Exception, match="sentence"):
        model.predict(pd.DataFrame({"text": texts}))

    inputs = tmp_path / "in.csv"
    pd.DataFrame({"sentence": texts}).to_csv(inputs, index=False)
    for folded in ([], ["--folded"]):
        out = tmp_path / f"out{len(folded)}.jsonl"
        assert predict_main(["--model", f"models:/{NAME}@champion", "--mlflow-uri", store["uri"], "--input",
                             str(inputs), "--output", str(out), *folded]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["prediction"] for r in rows] == predictions and rows[0]["sentence"] == texts[0]
    out = tmp_path / "adapter.csv"  # an adapter folder directly, backbone from its adept_config.json
    assert predict_main(["--model", str(store["adapter"]), "--task", str(store["run"].config.task),
                         "--max-source-length", "32", "--max-target-length", "4", "--input", str(inputs),
                         "--output", str(out)]) == 0
    assert list(pd.read_csv(out)["prediction"]) == predictions


def test_csv_with_unquoted_commas_is_refused(tmp_path):
    from jobs.predict import read_inputs

    bad = tmp_path / "bad.csv"
    bad.write_text("text\nA gripping, funny film.\nDull, long, badly acted.\n")
    with pytest.raises(ValueError, match="quote text that contains commas"):
        read_inputs(bad)  # rows with a different number of fields
    bad.write_text("text\nA gripping, funny film.\nDull and badly acted, sadly.\n")
    with pytest.raises(ValueError, match="more fields than the header"):
        read_inputs(bad)  # every row one field too many: pandas would silently make the first an index
    good = tmp_path / "good.csv"
    good.write_text('text\n"A gripping, funny film."\n"Dull, long, badly acted."\n')
    assert read_inputs(good)["text"].tolist() == ["A gripping, funny film.", "Dull, long, badly acted."]
