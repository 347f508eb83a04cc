"""A `random:*` backbone's serving fingerprint records what draws its weights (issue 21, item 4).

Such a folder holds no weights: `load_backbone` draws them from config.json, the seed in the folder's marker
(`adept_backbone.json` -> `random_init.seed`; no environment variable or option sets it, the alias's
`RandomAlias.seed` is written there when the cache folder is made) and `build_random_model`'s code
(`INIT_SCHEME`). The alias resolved by name is always the same (its marker's `spec` hashes the seed: a cache
made with another seed is refused), but a folder passed as `backbone` - a copied cache, an edited marker, a
cache left by a version with other seeds - is read as it is. Its fingerprint used to be `"random-init"` for
every seed, so an adapter trained on one seed's weights served on another's; now the seed and the scheme are
recorded and another seed is refused like another real backbone.

The fast tests build the fingerprint and the pyfunc's `ServingConfig` in-process; one slow test registers a
model trained on `random:llama-tiny` and loads it on another seed's copy through MLflow and jobs/predict.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from adept import AdeptConfig, get_adept_model
from pipeline.core.backbone_info import LEGACY_RANDOM, check_fingerprint, fingerprint
from pipeline.core.backbones import MARKER, BackboneError, load_backbone, random_models, resolve_backbone
from pipeline.serving.config import ServingConfig

pytestmark = [pytest.mark.serving, pytest.mark.faults]

ALIAS = "random:llama-tiny"
TEXTS = ["good great movie", "awful bad plot", "the film a acting"]


def reseeded(folder: Path, copy: Path, seed: int) -> Path:
    """A copy of a random alias's cache folder whose marker holds `seed`: weights drawn from another seed."""
    shutil.copytree(folder, copy)
    marker = json.loads((copy / MARKER).read_text())
    marker["random_init"]["seed"] = seed
    (copy / MARKER).write_text(json.dumps(marker))
    return copy


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """The alias's cache folder (seed 0, private cache) and two copies elsewhere: seed 0 and seed 1."""
    monkeypatch.setenv("ADEPT_CACHE_DIR", str(tmp_path / "cache"))
    cached = Path(resolve_backbone(ALIAS))
    return {"cached": cached, "same": reseeded(cached, tmp_path / "copy-seed0", 0),
            "other": reseeded(cached, tmp_path / "copy-seed1", 1)}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_backbone(str(folder))[0].state_dict()


def test_another_seed_is_another_fingerprint(folders, monkeypatch):
    cached, same, other = (fingerprint(str(folders[k])) for k in ("cached", "same", "other"))
    assert cached["random_seed"] == 0 and cached["random_init_scheme"] == random_models.INIT_SCHEME
    assert re.fullmatch(r"[0-9a-f]{64}", cached["weights_sha256"]) and "weights_sample_sha256" not in cached
    assert same == cached  # where the folder lies does not matter, what draws the weights does
    assert other["random_seed"] == 1 and other["weights_sha256"] != cached["weights_sha256"]
    assert other["config_sha256"] == cached["config_sha256"]  # the config alone cannot tell them apart

    base = weights(folders["cached"])  # and the difference is real: other seed, other weights
    assert all(torch.equal(base[k], v) for k, v in weights(folders["same"]).items())
    assert not torch.equal(base["model.embed_tokens.weight"], weights(folders["other"])["model.embed_tokens.weight"])

    monkeypatch.setattr(random_models, "INIT_SCHEME", "build_random_model/2")  # the draw code counts too
    redrawn = fingerprint(str(folders["same"]))
    assert redrawn["weights_sha256"] != cached["weights_sha256"]
    with pytest.raises(BackboneError, match="random_init_scheme: recorded 'build_random_model/1', given "
                                            "'build_random_model/2'; weights_sha256: "):
        check_fingerprint(cached, redrawn, ALIAS, str(folders["same"]))


def test_check_refuses_another_seed_naming_both(folders):
    recorded, other = fingerprint(str(folders["cached"])), fingerprint(str(folders["other"]))
    check_fingerprint(recorded, fingerprint(str(folders["same"])), ALIAS, str(folders["same"]))
    with pytest.raises(BackboneError) as err:
        check_fingerprint(recorded, other, ALIAS, str(folders["other"]))
    message = str(err.value)
    assert f"{str(folders['other'])!r} is not the backbone this adapter was trained on (recorded: {ALIAS!r})" in message
    assert "random_seed: recorded 0, given 1" in message and "random_init_scheme" not in message
    assert (f"weights_sha256: recorded '{recorded['weights_sha256'][:12]}...', "
            f"given '{other['weights_sha256'][:12]}...'") in message
    assert "config_sha256" not in message and "seed in its adept_backbone.json" in message


def test_legacy_record_accepts_a_random_folder_but_not_real_weights(folders):
    """Records made before this fix hold "random-init" and no seed: nothing to compare with another random
    folder (every alias had seed 0 then), but real weights of the same config still differ."""
    legacy = {k: v for k, v in fingerprint(str(folders["cached"])).items() if not k.startswith("random_")}
    legacy.update(weights_sha256=LEGACY_RANDOM, weights_sample_sha256=LEGACY_RANDOM)
    check_fingerprint(legacy, fingerprint(str(folders["other"])), ALIAS, str(folders["other"]))
    real = {**legacy, "weights_sha256": "a" * 64, "weights_sample_sha256": "b" * 64}
    with pytest.raises(BackboneError, match="weights_sha256: recorded 'random-init', given 'aaaaaaaaaaaa...'"):
        check_fingerprint(legacy, real, ALIAS, "/real/weights")


def serving_config(fp: dict) -> ServingConfig:
    """What the registry logs for a custom sentiment task trained on the alias (built directly: no MLflow)."""
    return ServingConfig(backbone=ALIAS, task="synthetic-sentiment", task_type="classification", eval_mode="rank",
                         label_strings=["negative", "positive"], input_columns=[["sentence", "sentence"]],
                         custom_format=True, max_source_length=32, max_target_length=4, max_new_tokens=4,
                         batch_size=4, backbone_fingerprint={**fp, "ref": ALIAS}, device="cpu")


def adapter_on(folder: Path, out: Path) -> Path:
    base, tok, _ = load_backbone(str(folder))
    torch.manual_seed(0)
    model = get_adept_model(base, AdeptConfig(method="adept", num_virtual_tokens=4, ffn_hidden_size=8), tok)
    model.save_pretrained(out)
    return out


def test_pyfunc_refuses_another_seed_and_serves_the_same_one(folders, tmp_path):
    from pipeline.serving.pyfunc import AdeptPyfunc

    adapter = adapter_on(folders["cached"], tmp_path / "adapter")
    config = serving_config(fingerprint(str(folders["cached"])))
    frame = pd.DataFrame({"sentence": TEXTS})
    expected = AdeptPyfunc().load(config, adapter).predict(None, frame)
    assert len(expected) == len(TEXTS)

    with pytest.raises(BackboneError) as err:
        AdeptPyfunc().load(config.with_options({"backbone": str(folders["other"])}), adapter)
    message = str(err.value)
    assert f"{str(folders['other'])!r} is not the backbone" in message and f"(recorded: {ALIAS!r})" in message
    assert "random_seed: recorded 0, given 1; weights_sha256: recorded '" in message

    same = AdeptPyfunc().load(config.with_options({"backbone": str(folders["same"])}), adapter)
    assert same.predict(None, frame) == expected


@pytest.mark.slow  # registers through MLflow (sqlite) and loads the pyfunc: ~20-40 s on 2 busy cores
def test_registered_model_refuses_another_seed(folders, tmp_path, synthetic_task, capsys):
    import mlflow
    from registry_helpers import fake_sweep

    from jobs.predict import main as predict_main
    from jobs.register_best import main as register_main
    from pipeline.core.config import TrainConfig
    from pipeline.driver.launch import prepare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = TrainConfig(task=str(synthetic_task), backbone=ALIAS, num_virtual_tokens=4, r=8, max_source_length=32,
                      max_target_length=4, storage_path=str(tmp_path / "runs"), mlflow_uri=uri)
    store = {"uri": uri, "root": tmp_path, "adapter": adapter_on(folders["cached"], tmp_path / "adapter"),
             "run": prepare(cfg)}
    fake_sweep(store, "sweep", 75.0)
    assert register_main(["--mlflow-uri", uri, "--sweep", "sweep"]) == 0
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = "adept-synthetic-sentiment"
    logged = mlflow.pyfunc.load_model(f"models:/{name}@champion")  # the alias by name, as recorded
    recorded = logged.model_config["backbone_fingerprint"]
    assert recorded["random_seed"] == 0 and recorded["weights_sha256"] != LEGACY_RANDOM

    with pytest.raises(BackboneError, match="random_seed: recorded 0, given 1"):
        mlflow.pyfunc.load_model(f"models:/{name}@champion", model_config={"backbone": str(folders["other"])})

    inputs = tmp_path / "in.csv"
    pd.DataFrame({"sentence": TEXTS}).to_csv(inputs, index=False)
    args = ["--model", f"models:/{name}@champion", "--mlflow-uri", uri, "--input", str(inputs)]
    capsys.readouterr()
    assert predict_main([*args, "--backbone", str(folders["other"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: backbone:") and "random_seed: recorded 0, given 1" in err
    assert predict_main([*args, "--backbone", str(folders["same"]), "--output", str(tmp_path / "out.csv")]) == 0
