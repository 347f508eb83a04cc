"""PEFT export (issue 13): `<path>/base` + `<path>/adapter` load with plain transformers + peft and give ADePT's logits."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_llama, tiny_t5
from wrapped import BACKBONES, inputs, make_model

from adept import AdeptModel
from adept.io import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, find_adapter_files
from adept.peft_export import EXPORT_INFO_NAME

peft = pytest.importorskip("peft")
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM  # noqa: E402

pytestmark = [
    pytest.mark.serving,
    # peft 0.21 calls a transformers 5 API that transformers deprecated; nothing of ours
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]
TOL = 1e-5


def _auto(backbone):
    return AutoModelForSeq2SeqLM if backbone == "t5" else AutoModelForCausalLM


def _peft_model(backbone, export):
    base = _auto(backbone).from_pretrained(export.base)
    return peft.PeftModel.from_pretrained(base, export.adapter).eval()


def _max_diff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("backbone", ["llama", "llama_tied", "t5"])
@pytest.mark.parametrize("method", ["adept", "prompt"])
def test_peft_gives_the_logits_of_the_adept_model(backbone, method, tok, tmp_path):
    model = make_model(backbone, method, tok)
    export = model.export_peft(tmp_path, save_base=True)
    peft_model = _peft_model(backbone, export)
    assert type(peft_model).__name__ == ("PeftModelForSeq2SeqLM" if backbone == "t5" else "PeftModelForCausalLM")
    b = inputs(tok, backbone)  # causal: left-padded, so the extended attention mask matters
    with torch.no_grad():
        ours = model(**b, use_cache=False).logits
        theirs = peft_model(**b, use_cache=False).logits
        # and back into adept: the PEFT adapter loads as prompt tuning on the exported base
        again = AdeptModel.from_pretrained(_auto(backbone).from_pretrained(export.base), export.adapter).eval()
        round_trip = again(**b, use_cache=False).logits
    if backbone != "t5":
        assert theirs.shape[1] == 4 + b["input_ids"].shape[1]  # logits for the prompt positions too, like ours
    assert _max_diff(ours, theirs) <= TOL
    assert _max_diff(ours, round_trip) <= TOL
    assert again.config.method == "prompt"
    if method == "adept":  # the folded base carries the offset: without it the logits differ
        plain = peft.PeftModel.from_pretrained(BACKBONES[backbone](), export.adapter).eval()
        with torch.no_grad():
            assert _max_diff(ours, plain(**b, use_cache=False).logits) > 1e-3


def test_labels_and_loss_match(tok, tmp_path):
    model = make_model("llama", "adept", tok)
    peft_model = _peft_model("llama", model.export_peft(tmp_path))
    b = inputs(tok, "llama")
    labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    with torch.no_grad():
        assert abs(model(**b, labels=labels).loss.item() - peft_model(**b, labels=labels).loss.item()) <= TOL


@pytest.mark.parametrize("backbone", ["llama", "t5"])
def test_greedy_generation_matches_without_kv_cache(backbone, tok, tmp_path):
    """PEFT generates uncached here: its cached prompt-tuning generation (peft 0.21.2, transformers 5.24) drifts from
    PEFT's own forward even without adept. Causal inputs are unpadded: PEFT drops the position_ids that generate
    derives from a left-padded mask, the backbone's generate (ours) keeps them. Ours uses its cache."""
    model = make_model(backbone, "adept", tok)
    peft_model = _peft_model(backbone, model.export_peft(tmp_path))
    for m in (model.base_model, peft_model.base_model):
        m.generation_config.eos_token_id = None
    kwargs = dict(max_new_tokens=6, do_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if backbone == "t5":
            b = inputs(tok, backbone)
            b.pop("decoder_input_ids")
            kwargs.update(output_scores=True, return_dict_in_generate=True)
            ours, theirs = model.generate(**b, **kwargs), peft_model.generate(**b, **kwargs, use_cache=False)
            assert torch.equal(ours.sequences, theirs.sequences)
            assert max(_max_diff(a, c) for a, c in zip(ours.scores, theirs.scores, strict=True)) <= TOL
        else:
            b = inputs(tok, backbone, texts=("bad film plot acting", "good movie great acting"))  # no padding
            ours, theirs = model.generate(**b, **kwargs), peft_model.generate(**b, **kwargs, use_cache=False)
            assert torch.equal(ours, theirs)
            assert len(set(ours[:, -6:].flatten().tolist())) > 1  # non-trivial generations


def test_adapter_files_are_what_peft_writes_for_prompt_tuning(tok, tmp_path):
    model = make_model("t5", "adept", tok)
    export = model.export_peft(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "adept_export.json", "base"]
    assert (export.base, export.adapter) == (tmp_path / "base", tmp_path / "adapter")
    meta = json.loads((export.adapter / PEFT_CONFIG_NAME).read_text())
    assert meta["peft_type"] == "PROMPT_TUNING" and meta["task_type"] == "SEQ_2_SEQ_LM"
    assert (meta["num_virtual_tokens"], meta["token_dim"], meta["num_transformer_submodules"]) == (4, 32, 1)
    assert meta["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    tensors = load_file(str(export.adapter / PEFT_WEIGHTS_NAME))
    assert list(tensors) == ["prompt_embeddings"] and torch.equal(tensors["prompt_embeddings"], model.prompt.weight)
    config = peft.PeftConfig.from_pretrained(str(export.adapter))
    assert type(config).__name__ == "PromptTuningConfig" and config.num_transformer_submodules == 1
    info = json.loads((tmp_path / EXPORT_INFO_NAME).read_text())
    assert (info["method"], info["base"], info["adapter"], info["folded"]) == ("adept", "base", "adapter", True)
    assert find_adapter_files(export.adapter).layout == "peft"


def test_auto_peft_model_finds_the_exported_base(tok, tmp_path):
    model = make_model("llama_tied", "adept", tok)
    export = model.export_peft(tmp_path / "export", tokenizer=tok)
    assert (export.base / "tokenizer.json").is_file()
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(str(export.adapter)).eval()
    b = inputs(tok, "llama")
    with torch.no_grad():
        assert _max_diff(model(**b, use_cache=False).logits, auto(**b, use_cache=False).logits) <= TOL


def test_folded_model_exports_the_same(tok, tmp_path):
    model = make_model("t5", "adept", tok)
    a = model.export_peft(tmp_path / "a")
    f = model.fold().export_peft(tmp_path / "f")
    assert torch.equal(load_file(str(a.adapter / PEFT_WEIGHTS_NAME))["prompt_embeddings"],
                       load_file(str(f.adapter / PEFT_WEIGHTS_NAME))["prompt_embeddings"])
    ta, tf = load_file(str(a.base / "model.safetensors")), load_file(str(f.base / "model.safetensors"))
    assert ta.keys() == tf.keys() and all(torch.equal(ta[k], tf[k]) for k in ta)


def test_prompt_tuning_exports_an_adapter_for_the_original_backbone(tok, tmp_path):
    model = make_model("llama", "prompt", tok)
    model.config.base_model_name_or_path, model.config.revision = "org/tiny-llama", "abc123"
    export = model.export_peft(tmp_path)
    assert export.base is None and not (tmp_path / "base").exists()
    meta = json.loads((export.adapter / PEFT_CONFIG_NAME).read_text())
    assert (meta["base_model_name_or_path"], meta["revision"]) == ("org/tiny-llama", "abc123")
    peft_model = peft.PeftModel.from_pretrained(BACKBONES["llama"](), export.adapter).eval()
    b = inputs(tok, "llama")
    with torch.no_grad():
        assert _max_diff(model(**b).logits, peft_model(**b).logits) <= TOL


def test_what_cannot_be_exported_is_refused_with_the_reason(tok, tmp_path):
    with pytest.raises(ValueError, match="DePT cannot be exported.*per-position"):
        make_model("llama", "dept", tok).export_peft(tmp_path)
    with pytest.raises(ValueError, match="needs its base"):
        make_model("llama", "adept", tok).export_peft(tmp_path, save_base=False)
    with pytest.raises(ValueError, match="num_virtual_tokens=0"):
        make_model("llama", "adept", tok, num_virtual_tokens=0).export_peft(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------- PEFT's own prompt-tuning adapters load into adept
@pytest.mark.parametrize("backbone", ["llama", "t5"])
def test_adapters_trained_with_peft_load_with_the_same_logits(backbone, tok, tmp_path):
    """Seq2seq: PEFT's default num_transformer_submodules=2 stores 2·m rows and prepends the first m to the encoder."""
    make_base = {"llama": tiny_llama, "t5": tiny_t5}[backbone]
    task = peft.TaskType.SEQ_2_SEQ_LM if backbone == "t5" else peft.TaskType.CAUSAL_LM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = peft.get_peft_model(make_base(), peft.PromptTuningConfig(task_type=task, num_virtual_tokens=4))
    trained.save_pretrained(tmp_path)
    rows = load_file(str(tmp_path / PEFT_WEIGHTS_NAME))["prompt_embeddings"].shape[0]
    assert rows == (8 if backbone == "t5" else 4)
    # distinct rows, so that taking the wrong half would show
    save_file({"prompt_embeddings": torch.randn(rows, 32, generator=torch.Generator().manual_seed(3))},
              str(tmp_path / PEFT_WEIGHTS_NAME))
    theirs_model = peft.PeftModel.from_pretrained(make_base(), tmp_path).eval()
    ours_model = AdeptModel.from_pretrained(make_base(), tmp_path).eval()
    assert ours_model.config.method == "prompt" and ours_model.num_virtual_tokens == 4
    b = inputs(tok, backbone)
    with torch.no_grad():
        assert _max_diff(ours_model(**b).logits, theirs_model(**b).logits) <= TOL
