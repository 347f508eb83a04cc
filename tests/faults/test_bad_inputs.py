"""Hostile and careless inputs get `error: <field>: <what>; <fix>` with exit status 2, before Ray starts and
without writing anything; the cases that used to be silently wrong are refused."""

import json
import shutil
import time

import pytest
import ray
import torch
import yaml
from tiny import tiny_llama, tiny_t5, tiny_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from adept import AdeptConfig, get_adept_model
from jobs.predict import main as predict_main
from jobs.train_adept import main as train_main
from jobs.tune_adept import main as tune_main

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("no_ray")]


@pytest.fixture
def base_args(synthetic_task, tiny_backbone, tmp_path):
    return ["--task", str(synthetic_task), "--backbone", str(tiny_backbone), "--storage-path", str(tmp_path / "runs"),
            "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"]


def refused(capsys, rc, *fragments):
    err = capsys.readouterr().err
    assert rc == 2 and any(line.startswith("error: ") for line in err.splitlines()), err
    for fragment in fragments:
        assert fragment in err, err
    assert not ray.is_initialized()
    return err


@pytest.mark.parametrize(("extra", "field", "fix"), [
    (["--set", "label_strings=[a"], "--set label_strings: invalid YAML at line 1", "fix the syntax"),
    (["--r", "8", "--set", "prompt_lr=[0.1,0.2]"], "prompt_lr=[0.1, 0.2] has the wrong type: expected float",
     "fix it in the config file or --set"),
    (["--r", "8", "--name", "yes", "--set", "name=yes"], "name: given twice, as --name and as --set name=...",
     "keep one"),
    (["--r", "8", "--set", "name=yes"], "name=True has the wrong type", "fix it in the config file or --set"),
    (["--r", "8", "--set", "prompt_lr=.inf"], "prompt_lr=inf", "must be a finite number > 0"),
    (["--r", "8", "--set", "learning_rate=0.3"], "unknown config key(s) ['learning_rate']",
     "the keys are the fields of pipeline/core/config.py:TrainConfig"),
    (["--r", "8", "--prompt-lr", "0.1", "--set", "prompt_lr=0.2"], "prompt_lr: given twice", "keep one"),
    (["--r", "8", "--m", "300"], "num_virtual_tokens: m=300 + max input", "max_position_embeddings); lower "
     "num_virtual_tokens or max_source_length / max_target_length"),  # 300 + 272 > 512
    (["--r", "8", "--mlflow-uri", "sqlite:////nonexistent-adept/dir/m.db"],
     "mlflow_uri='sqlite:////nonexistent-adept/dir/m.db': the folder '/nonexistent-adept/dir' does not exist",
     "create it first or point the URI at an existing folder"),
])
def test_train_job_refuses(extra, field, fix, base_args, capsys, tmp_path):
    err = refused(capsys, train_main([*base_args, *extra]))
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: {field}"), err  # the field first: `<field>: <what>; <fix>`
    assert fix in errors[0], err
    assert "None" not in errors[0], err  # no "did you mean None" or an unset value shown as the problem
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not __import__("pathlib").Path("/nonexistent-adept").exists()


def test_names_that_look_like_numbers_are_names(base_args):
    from jobs.train_adept import load_config, parse_args

    assert load_config(parse_args([*base_args, "--r", "8", "--name", "123"])).name == "123"


def test_broken_yaml_files_name_the_file_and_line(base_args, tmp_path, capsys, synthetic_task):
    config = tmp_path / "c.yaml"
    config.write_text("method: adept\nr: [19\n")
    refused(capsys, train_main(["--config", str(config)]), "c.yaml", "invalid YAML at line")
    task = tmp_path / "task.yaml"
    task.write_text(synthetic_task.read_text() + "\nverbalizer: {0: [\n")
    refused(capsys, train_main([*base_args[2:], "--task", str(task), "--backbone", base_args[3], "--r", "8"]),
            "task.yaml", "invalid YAML")


def test_damaged_backbones_are_found_before_ray(base_args, tiny_backbone, tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_backbone, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    t0 = time.monotonic()
    refused(capsys, train_main([*base_args[:2], "--backbone", str(corrupt), *base_args[4:], "--r", "8"]),
            "model.safetensors", "corrupt")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_backbone, no_tokenizer)
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    refused(capsys, train_main([*base_args[:2], "--backbone", str(no_tokenizer), *base_args[4:], "--r", "8"]),
            "tokenizer")
    assert time.monotonic() - t0 < 60  # seconds on the driver, not a worker's traceback a minute later


def test_a_prompt_longer_than_memory_allows_is_refused(tmp_path, synthetic_task, capsys):
    t5 = tmp_path / "t5"
    tiny_t5().save_pretrained(t5)
    tok = tiny_tokenizer()
    tok.save_pretrained(t5)
    args = ["--task", str(synthetic_task), "--backbone", str(t5), "--storage-path", str(tmp_path / "runs"),
            "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", "--r", "8", "--m", "20000"]
    refused(capsys, train_main(args), "num_virtual_tokens", "GiB of activations")


def test_a_sweep_range_beyond_the_backbone_is_refused(base_args, tmp_path, capsys, synthetic_task, tiny_backbone):
    config = {"task": str(synthetic_task), "backbone": str(tiny_backbone), "r": 8, "max_steps": 20, "eval_steps": 10,
              "storage_path": str(tmp_path / "runs"), "mlflow_uri": f"sqlite:///{tmp_path / 'm.db'}",
              "sweep": {"space": {"m": {"randint": [1, 100000]}}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    refused(capsys, tune_main(["--config", str(path)]), "num_virtual_tokens=100000", "max_position_embeddings")


@pytest.mark.parametrize("problem", ["single-class", "empty-texts"])
def test_train_splits_nothing_can_be_learned_from(problem, tmp_path, tiny_backbone, capsys):
    rows = "sentence,label\n" + "".join(f"{'good movie' if problem == 'single-class' else ''},1\n" for _ in range(20))
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.csv").write_text(rows.replace(",1\n", ",0\n") if split != "train" else rows)
    spec = {"name": "bad", "train": "train.csv", "validation": "validation.csv", "test": "test.csv",
            "input_columns": ["sentence"], "label_column": "label", "verbalizer": {0: "negative", 1: "positive"}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(spec))
    args = ["--task", str(tmp_path / "task.yaml"), "--backbone", str(tiny_backbone), "--r", "8",
            "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    refused(capsys, train_main(args), "train file", "two classes" if problem == "single-class" else "empty")


def adapter_folder(tmp_path, tiny_backbone):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "adapter"
    model = get_adept_model(AutoModelForCausalLM.from_pretrained(tiny_backbone),
                            AdeptConfig(num_virtual_tokens=2, ffn_hidden_size=3), tiny_tokenizer())
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("damage", ["no-backbone", "list", "official-without-m"])
def test_damaged_adapter_configs(damage, tmp_path, tiny_backbone, synthetic_task, capsys):
    folder = adapter_folder(tmp_path, tiny_backbone)
    config = folder / "adept_config.json"
    meta = json.loads(config.read_text())
    if damage == "no-backbone":
        del meta["backbone"]
        config.write_text(json.dumps(meta))
        expected = "backbone"
    elif damage == "list":
        config.write_text(json.dumps([meta]))
        expected = "not a JSON object"
    else:
        config.unlink()
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING_LORAX", "r": 3}))
        expected = "num_virtual_tokens"
    inputs = tmp_path / "in.csv"
    inputs.write_text("sentence\ngood movie\n")
    refused(capsys, predict_main(["--model", str(folder), "--task", str(synthetic_task), "--backbone",
                                  str(tiny_backbone), "--input", str(inputs)]), expected)


def test_predict_fails_fast_on_an_unreachable_tracking_server(tmp_path, capsys):
    inputs = tmp_path / "in.csv"
    inputs.write_text("sentence\ngood movie\n")
    t0 = time.monotonic()
    refused(capsys, predict_main(["--model", "models:/adept-x@champion", "--mlflow-uri", "http://127.0.0.1:9",
                                  "--input", str(inputs)]), "mlflow_uri", "not reachable")
    assert time.monotonic() - t0 < 30


def test_the_model_refuses_what_it_would_silently_get_wrong():
    tok = tiny_tokenizer()
    model = get_adept_model(tiny_llama(), AdeptConfig(num_virtual_tokens=2, ffn_hidden_size=3), tok)
    batch = tok(["good movie", "bad"], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for bad_mask in (mask[:, :-1], mask[0], mask[:1]):  # one token short, 1-D, wrong batch
        with pytest.raises(ValueError, match="attention_mask has shape"):
            model(input_ids=ids, attention_mask=bad_mask)
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        AdeptConfig(num_virtual_tokens=True, ffn_hidden_size=3)
    big_vocab = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, pad_token="<pad>", eos_token="</s>")
    big_vocab.add_tokens([f"new{i}" for i in range(100)])
    small = LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(ValueError, match="outside the backbone's vocabulary"):
        get_adept_model(small, AdeptConfig(num_virtual_tokens=2, ffn_hidden_size=3,
                                           prompt_init_text="new5 new99 good"), big_vocab)
    assert torch.isfinite(model(input_ids=ids, attention_mask=mask).logits).all()
