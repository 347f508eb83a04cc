import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
from wrapped import inputs, make_model

from adept import AdeptModel, FoldedAdeptModel, PromptedModel
from adept.fold import folded_embedding_table

BACKBONES = ["t5", "llama", "llama_tied"]


def _generate(model, b):
    b = {k: v for k, v in b.items() if k != "decoder_input_ids"}
    return model.generate(**b, max_new_tokens=5, do_sample=False, output_scores=True,
                          return_dict_in_generate=True) if model.is_encoder_decoder else \
        model.generate(**b, max_new_tokens=5, do_sample=False)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_folded_model_equals_on_the_fly_model(backbone, tok):
    model = make_model(backbone, "adept", tok)
    folded = model.fold()
    b = inputs(tok, backbone)
    with torch.no_grad():
        expected, got = model(**b).logits, folded(**b).logits
    assert (expected - got).abs().max() <= 1e-5
    if backbone == "t5":
        g1, g2 = _generate(model, b), _generate(folded, b)
        assert torch.equal(g1.sequences, g2.sequences)
        for s1, s2 in zip(g1.scores, g2.scores, strict=True):
            assert (s1 - s2).abs().max() <= 1e-5
    else:
        model.base_model.generation_config.eos_token_id = None
        folded.base_model.generation_config.eos_token_id = None
        g1, g2 = _generate(model, b), _generate(folded, b)
        assert torch.equal(g1, g2)
        assert len(set(g1[:, -5:].flatten().tolist())) > 1  # non-trivial generations


def test_fold_leaves_the_output_side_and_the_original_alone(tok):
    model = make_model("llama_tied", "adept", tok)
    table = model.base_model.get_input_embeddings().weight.detach().clone()
    folded = model.fold()
    assert torch.equal(model.base_model.get_input_embeddings().weight, table)  # original untouched
    assert torch.equal(folded.base_model.get_output_embeddings().weight, table)  # head keeps E
    assert not torch.equal(folded.base_model.get_input_embeddings().weight, table)  # input gets E'
    t5_model = make_model("t5", "adept", tok)
    e = t5_model.base_model.shared.weight.detach().clone()
    t5 = t5_model.fold().base_model
    assert torch.equal(t5_model.base_model.shared.weight, e)  # original untouched
    # E' for the encoder (and `shared`, what get_input_embeddings() returns); E for the decoder and the head
    assert t5.get_input_embeddings() is t5.shared is t5.encoder.embed_tokens
    assert torch.equal(t5.shared.weight, folded_embedding_table(t5_model))
    assert torch.equal(t5.decoder.embed_tokens.weight, e) and torch.equal(t5.lm_head.weight, e)
    assert t5.lm_head.weight is not t5.decoder.embed_tokens.weight  # own tensors: both are saved


def test_folded_table_is_e_plus_ffn_of_e(tok):
    model = make_model("llama", "adept", tok)
    e = model.base_model.get_input_embeddings().weight
    f = model.ffn
    torch.testing.assert_close(folded_embedding_table(model), e + torch.relu(e @ f.w1 + f.b1) @ f.w2 + f.b2)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_folded_export_round_trip(backbone, tok, tmp_path):
    model = make_model(backbone, "adept", tok)
    folded = model.fold()
    folded.save_pretrained(tmp_path)
    again = FoldedAdeptModel.load(tmp_path)
    b = inputs(tok, backbone)
    with torch.no_grad():
        assert (model(**b).logits - again(**b).logits).abs().max() <= 1e-5
        # the adept-ray 0.1 name still works
        assert torch.equal(again(**b).logits, FoldedAdeptModel.from_pretrained(tmp_path)(**b).logits)


def test_causal_export_is_a_plain_hf_folder_with_e_prime(tok, tmp_path):
    model = make_model("llama_tied", "adept", tok)
    model.fold().save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(plain.get_input_embeddings().weight, folded_embedding_table(model))
    torch.testing.assert_close(plain.get_output_embeddings().weight, model.base_model.get_input_embeddings().weight)


@pytest.mark.parametrize("method", ["dept", "prompt"])
def test_only_adept_folds(method, tok):
    with pytest.raises(ValueError, match="only ADePT can be folded"):
        make_model("t5", method, tok).fold()


@pytest.mark.serving
def test_seq2seq_export_is_a_plain_hf_folder_too(tok, tmp_path):
    """transformers 5 keeps checkpoint tables that differ apart, although T5 always declares them tied."""
    model = make_model("t5", "adept", tok)
    model.fold().save_pretrained(tmp_path)
    plain = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    e, e_prime = model.base_model.shared.weight, folded_embedding_table(model)
    torch.testing.assert_close(plain.encoder.embed_tokens.weight, e_prime, rtol=0, atol=0)
    torch.testing.assert_close(plain.shared.weight, e_prime, rtol=0, atol=0)
    torch.testing.assert_close(plain.decoder.embed_tokens.weight, e, rtol=0, atol=0)
    torch.testing.assert_close(plain.lm_head.weight, e, rtol=0, atol=0)


@pytest.mark.serving
def test_folded_and_on_the_fly_models_are_siblings(tok):
    model = make_model("llama", "adept", tok)
    folded = model.fold()
    assert isinstance(model, PromptedModel) and isinstance(folded, PromptedModel)
    assert not isinstance(folded, AdeptModel)  # no ffn / position_offset / training helpers to inherit by accident
    assert folded.fold() is folded
    assert not any(p.requires_grad for p in folded.parameters())
    assert (folded.hidden_size, folded.vocab_size, folded.num_virtual_tokens) == (32, 37, 4)
    assert torch.equal(folded.prompt.weight, model.prompt.weight)


@pytest.mark.serving
def test_importing_the_config_does_not_import_torch():
    code = ("import sys; import adept.config; from adept.config import METHODS, PROMPT_INITS; import adept; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from adept import AdeptModel, FoldedAdeptModel, get_adept_model; assert 'torch' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
