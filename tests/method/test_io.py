import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_llama, tiny_t5
from wrapped import BACKBONES, METHOD_CONFIGS, inputs, make_model

from adept import AdeptModel
from adept.io import (
    CONFIG_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    WEIGHTS_NAME,
    find_adapter_files,
    read_adapter_state_dict,
)

MATRIX = [(b, m) for b in BACKBONES for m in METHOD_CONFIGS]


@pytest.mark.parametrize(("backbone", "method"), MATRIX)
def test_round_trip_gives_identical_logits(backbone, method, tok, tmp_path):
    model = make_model(backbone, method, tok)
    model.save_pretrained(tmp_path)
    again = AdeptModel.from_pretrained(BACKBONES[backbone](), tmp_path).eval()
    b = inputs(tok, backbone)
    with torch.no_grad():
        assert torch.equal(model(**b).logits, again(**b).logits)
    assert again.config == model.config


def test_files_hold_only_adapter_tensors_and_provenance(tok, tmp_path):
    model = make_model("t5", "adept", tok)
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "prompt.weight": (4, 32), "ffn.w1": (32, 3), "ffn.b1": (3,), "ffn.w2": (3, 32), "ffn.b2": (32,),
    }
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["adept_config"]["method"] == "adept" and meta["adept_config"]["ffn_hidden_size"] == 3
    assert meta["backbone"] == {"name_or_path": None, "revision": None, "model_type": "t5", "hidden_size": 32,
                                "vocab_size": 37, "is_encoder_decoder": True}
    assert meta["dtype"] == "float32" and meta["num_trainable_params"] == 4 * 32 + 2 * 32 * 3 + 3 + 32
    assert meta["library_version"] and meta["format"] == "adept-ray" and meta["format_version"] == 2
    assert "peft_type" not in meta  # nothing that PEFT or transformers' PEFT integration would take for its own
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files left


@pytest.mark.parametrize(
    ("other_backbone", "message"),
    [
        (lambda: tiny_t5(d_model=16), "hidden_size=32"),
        (lambda: tiny_t5(vocab_size=50), "vocab_size=37"),
        (lambda: tiny_llama(), "model_type='t5'"),
    ],
)
def test_mismatched_backbone_is_refused(other_backbone, message, tok, tmp_path):
    make_model("t5", "adept", tok).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        AdeptModel.from_pretrained(other_backbone(), tmp_path)


def test_missing_and_corrupt_files_are_refused(tok, tmp_path):
    base = BACKBONES["t5"]()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AdeptModel.from_pretrained(base, tmp_path / "nowhere")
    make_model("t5", "adept", tok).save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        AdeptModel.from_pretrained(base, tmp_path)

    tensors = load_file(_saved(good, tmp_path))
    del tensors["ffn.b2"]
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=r"missing tensors \['ffn.b2'\]"):
        AdeptModel.from_pretrained(base, tmp_path)

    tensors["ffn.b2"] = torch.zeros(7)
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match="'ffn.b2' has shape"):
        AdeptModel.from_pretrained(base, tmp_path)

    weights.unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        AdeptModel.from_pretrained(base, tmp_path)

    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AdeptModel.from_pretrained(base, tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        AdeptModel.from_pretrained(base, tmp_path)


def _saved(blob: bytes, tmp_path):
    path = tmp_path / "copy.safetensors"
    path.write_bytes(blob)
    return str(path)


def _official_folder(path, m=4, d=32, r=3, seed=0):
    """An adapter folder as the official ADePT code writes it (vendored PEFT, torch.save)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "prompt_embeddings": torch.randn(m, d, generator=gen),
        "prompt_encoder.lora_embedding_A": torch.randn(d, r, generator=gen),
        "prompt_encoder.lora_embedding_a": torch.randn(r, generator=gen),
        "prompt_encoder.lora_embedding_B": torch.randn(r, d, generator=gen),
        "prompt_encoder.lora_embedding_b": torch.randn(d, generator=gen),
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "PROMPT_TUNING_LORAX", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": m, "token_dim": d,
        "r": r, "lora_alpha": 8, "num_transformer_submodules": 1, "base_model_name_or_path": "t5-base",
    }))
    torch.save(tensors, path / "adapter_model.bin")
    return tensors


def test_official_adept_checkpoint_computes_the_official_formula(tmp_path):
    t = _official_folder(tmp_path)
    base = BACKBONES["t5"]()
    model = AdeptModel.from_pretrained(base, tmp_path).eval()
    assert model.config.method == "adept" and model.config.ffn_hidden_size == 3
    ids = torch.tensor([[5, 9, 1]])
    e = base.get_input_embeddings().weight[ids]
    # official peft_model.py: E + relu(E @ A + a) @ B + b, then [prompt; E']
    official = torch.cat([
        t["prompt_embeddings"][None],
        e + torch.relu(e @ t["prompt_encoder.lora_embedding_A"] + t["prompt_encoder.lora_embedding_a"])
        @ t["prompt_encoder.lora_embedding_B"] + t["prompt_encoder.lora_embedding_b"],
    ], dim=1)
    with torch.no_grad():
        ours, _ = model._prompted_inputs(ids, None)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-6)


def test_official_bin_with_arbitrary_objects_is_not_unpickled(tmp_path):
    _official_folder(tmp_path)
    torch.save({"prompt_embeddings": torch.zeros(4, 32), "payload": _Evil()}, tmp_path / "adapter_model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        AdeptModel.from_pretrained(BACKBONES["t5"](), tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_unknown_adapter_format_is_refused(tmp_path):
    (tmp_path / PEFT_CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="peft_type='LORA'"):
        AdeptModel.from_pretrained(BACKBONES["t5"](), tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format='something-else'"):
        AdeptModel.from_pretrained(BACKBONES["t5"](), tmp_path)


# ---------------------------------------------------------------- file names no other library claims (issue 13)
def _legacy_folder(model, path):
    """An adapter folder as adept-ray 0.1 wrote it: PEFT's file names and peft_type "ADEPT"."""
    model.save_pretrained(path)
    meta = json.loads((path / CONFIG_NAME).read_text())
    meta = {"format": meta.pop("format"), "library_version": "0.1.0", "peft_type": "ADEPT",
            **{k: v for k, v in meta.items() if k != "format_version"}}
    (path / PEFT_CONFIG_NAME).write_text(json.dumps(meta))
    (path / WEIGHTS_NAME).rename(path / PEFT_WEIGHTS_NAME)
    (path / CONFIG_NAME).unlink()


@pytest.mark.serving
@pytest.mark.parametrize("backbone", ["t5", "llama"])
def test_adapter_folders_of_adept_ray_0_1_still_load(backbone, tok, tmp_path):
    model = make_model(backbone, "adept", tok)
    _legacy_folder(model, tmp_path)
    files = find_adapter_files(tmp_path)
    assert (files.layout, files.config.name, files.weights.name) == ("adept-legacy", PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME)
    again = AdeptModel.from_pretrained(BACKBONES[backbone](), tmp_path).eval()
    b = inputs(tok, backbone)
    with torch.no_grad():
        assert torch.equal(model(**b).logits, again(**b).logits)
    # saving into the old folder replaces the old files, so nothing there looks like a PEFT adapter any more
    again.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


@pytest.mark.serving
def test_find_adapter_files_knows_all_three_layouts(tok, tmp_path):
    model = make_model("t5", "adept", tok)
    model.config.base_model_name_or_path = "some/t5"
    model.save_pretrained(tmp_path / "ours")
    _legacy_folder(model, tmp_path / "legacy")
    _official_folder(tmp_path / "official")
    found = {name: find_adapter_files(tmp_path / name) for name in ("ours", "legacy", "official")}
    assert {n: f.layout for n, f in found.items()} == {"ours": "adept", "legacy": "adept-legacy", "official": "peft"}
    assert {n: f.weights.name for n, f in found.items()} == {
        "ours": WEIGHTS_NAME, "legacy": PEFT_WEIGHTS_NAME, "official": "adapter_model.bin"}
    assert {n: f.backbone for n, f in found.items()} == {"ours": "some/t5", "legacy": "some/t5", "official": "t5-base"}
    # the tensors under our names, whatever the layout
    ours = read_adapter_state_dict(tmp_path / "ours")
    assert ours.keys() == read_adapter_state_dict(tmp_path / "legacy").keys() == read_adapter_state_dict(
        tmp_path / "official").keys() == {"prompt.weight", "ffn.w1", "ffn.b1", "ffn.w2", "ffn.b2"}
    assert all(torch.equal(ours[n], p) for n, p in model.adapter_named_parameters())

    (tmp_path / "empty").mkdir()
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / PEFT_CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    for name in ("empty", "lora", "nowhere"):  # no adapter in any layout: refused, also by from_pretrained
        with pytest.raises((OSError, ValueError)):
            find_adapter_files(tmp_path / name)
        with pytest.raises((OSError, ValueError)):
            AdeptModel.from_pretrained(tiny_t5(), tmp_path / name)
    with pytest.raises(FileNotFoundError, match=f"neither '{CONFIG_NAME}'.*nor '{PEFT_CONFIG_NAME}'"):
        find_adapter_files(tmp_path / "empty")


@pytest.mark.serving
@pytest.mark.parametrize("backbone", ["llama", "t5"])
def test_transformers_and_peft_do_not_take_the_folder_for_a_peft_adapter(backbone, tok, tmp_path):
    """With peft installed, an adapter folder fails to load as a model exactly as an empty folder does."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if backbone == "t5" else AutoModelForCausalLM
    model = make_model(backbone, "adept", tok)
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "empty").mkdir()

    def failure(load, folder):
        with pytest.raises(Exception) as info:  # noqa: PT011 - the type is what is compared
            load(str(tmp_path / folder))
        assert not isinstance(info.value, KeyError), info.value
        return type(info.value), str(info.value).replace(str(tmp_path / folder), "<dir>")

    assert failure(auto.from_pretrained, "adapter") == failure(auto.from_pretrained, "empty")
    base = BACKBONES[backbone]()
    assert failure(lambda p: peft.PeftModel.from_pretrained(base, p), "adapter") == failure(
        lambda p: peft.PeftModel.from_pretrained(base, p), "empty")
