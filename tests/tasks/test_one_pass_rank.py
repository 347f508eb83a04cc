"""One-pass rank classification (`score_candidates`) equals the row-per-label reference
(`score_candidates_reference`): causal and seq2seq, single- and multi-token labels, sources of different
lengths in one batch, bare backbones and ADePT / DePT (fixed length s) / PT / folded ADePT wrappers."""

import pytest
import torch
from tiny import tiny_llama, tiny_t5, tiny_tokenizer

from adept import AdeptConfig, get_adept_model
from pipeline.core.data import TokenizeConfig
from pipeline.core.evaluation import EvalConfig, predict_rank, score_candidates, score_candidates_reference

pytestmark = pytest.mark.speed

# 2 to 9 words: with batch_size 3 every chunk pads its prompts, and the last chunk is ragged.
SOURCES = ["good movie", "bad film plot acting the a an movie", "great", "awful plot , the acting is bad",
           "yes", "the film is not good or bad"]
LABELS = {
    "single": ["positive", "negative"],  # one token each (+ EOS for causal add_eos: 2 scored tokens)
    "multi": ["yes", "no true", "a bad movie film"],  # 1, 2 and 4 tokens
}
S = 24  # DePT's fixed length: the longest prompt + label row is 8 + 1 (":") + 4 + 1 (EOS) = 14 <= 24
WRAPPERS = ["bare", "adept", "dept", "prompt", "folded"]
TOLERANCE = 1e-4  # on summed log-likelihoods; measured ≤ 6e-6 in fp32


def model_for(backbone: str, wrapper: str):
    base = tiny_llama(seed=4) if backbone == "causal" else tiny_t5(seed=4)
    if wrapper == "bare":
        return base
    method = {"adept": dict(method="adept", ffn_hidden_size=3), "folded": dict(method="adept", ffn_hidden_size=3),
              "dept": dict(method="dept", rank=2, max_length=S), "prompt": dict(method="prompt")}[wrapper]
    model = get_adept_model(base, AdeptConfig(num_virtual_tokens=4, prompt_init="sample_vocab", **method))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero offsets (they start at 0), so a missing offset shows
        for name, p in model.adapter_named_parameters():
            if not name.startswith("prompt."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.eval()
    return model.fold() if wrapper == "folded" else model


def eval_config(backbone: str, wrapper: str, add_eos: bool = True, batch_size: int = 3) -> EvalConfig:
    tokenize = TokenizeConfig(backbone=backbone, max_source_length=16, max_target_length=6, separator=":",
                              add_eos=add_eos)
    return EvalConfig(tokenize=tokenize, eval_mode="rank", batch_size=batch_size,
                      pad_to_length=S if wrapper == "dept" else None)


def assert_one_pass_equals_reference(model, labels, config):
    tok = tiny_tokenizer()
    reference = score_candidates_reference(model, tok, SOURCES, labels, config)
    one_pass = score_candidates(model, tok, SOURCES, labels, config, one_pass=True)
    assert one_pass.shape == (len(SOURCES), len(labels))
    assert (one_pass - reference).abs().max().item() <= TOLERANCE
    assert torch.equal(score_candidates(model, tok, SOURCES, labels, config), one_pass)  # the default path
    return reference


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("add_eos", [True, False])
@torch.no_grad()
def test_causal_one_pass_equals_reference(wrapper, labels, add_eos):
    model = model_for("causal", wrapper)
    assert_one_pass_equals_reference(model, LABELS[labels], eval_config("causal", wrapper, add_eos))


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
@torch.no_grad()
def test_seq2seq_one_pass_equals_reference(wrapper, labels):
    model = model_for("seq2seq", wrapper)
    assert_one_pass_equals_reference(model, LABELS[labels], eval_config("seq2seq", wrapper))


@torch.no_grad()
def test_the_adapter_matters_so_the_equality_is_not_vacuous():
    cfg = eval_config("causal", "bare")
    tok = tiny_tokenizer()
    bare = score_candidates(model_for("causal", "bare"), tok, SOURCES, LABELS["multi"], cfg)
    for wrapper in ("adept", "dept"):
        wrapped = score_candidates(model_for("causal", wrapper), tok, SOURCES, LABELS["multi"], eval_config("causal", wrapper))
        assert (wrapped - bare).abs().max() > 0.1


class _Counter:
    """Counts the backbone's forward calls and the token positions they run."""

    def __init__(self, backbone):
        self.calls, self.positions = 0, 0
        backbone.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if x is None:  # seq2seq decoder call: count the decoder positions
            x = kwargs["labels"]
        self.calls += 1
        self.positions += x.shape[0] * x.shape[1]


@pytest.mark.parametrize("backbone", ["causal", "seq2seq"])
@torch.no_grad()
def test_each_source_runs_once(backbone):
    model = model_for(backbone, "adept")
    config = eval_config(backbone, "adept", batch_size=len(SOURCES))
    n, k, m, longest_source = len(SOURCES), len(LABELS["multi"]), 4, max(len(s.split()) for s in SOURCES)
    counter = _Counter(model.base_model)
    if backbone == "causal":  # the prompts (+ ":") once, then n × k continuations: longest label + EOS, minus 1
        score_candidates(model, tiny_tokenizer(), SOURCES, LABELS["multi"], config)
        assert (counter.calls, counter.positions) == (2, n * (m + longest_source + 1) + n * k * 4)
    else:  # the encoder once on the n sources, then one decoder call on n × k label rows (4 tokens, no </s> here)
        encoder = _Counter(model.base_model.get_encoder())
        score_candidates(model, tiny_tokenizer(), SOURCES, LABELS["multi"], config)
        assert (encoder.calls, encoder.positions) == (1, n * (m + longest_source))
        assert (counter.calls, counter.positions) == (1, n * k * 4)


@pytest.mark.parametrize("backbone", ["causal", "seq2seq"])
@torch.no_grad()
def test_many_labels_run_in_groups_of_bounded_rows(backbone):
    """batch_size 2: at most 4 × 2 label rows a forward, so 9 labels take 3 groups (a 26-label STS-B would take 7)."""
    labels = ["yes", "no true", "a bad movie film", "good", "not bad", "great film", "0", "1 2", "positive"]
    wrapper = "dept" if backbone == "causal" else "adept"
    model, config = model_for(backbone, wrapper), eval_config(backbone, wrapper, batch_size=2)
    reference = score_candidates_reference(model, tiny_tokenizer(), SOURCES, labels, config)
    rows = []
    model.base_model.register_forward_pre_hook(
        lambda mod, args, kwargs: rows.append(next(v.shape[0] for v in kwargs.values() if torch.is_tensor(v))),
        with_kwargs=True)
    one_pass = score_candidates(model, tiny_tokenizer(), SOURCES, labels, config)
    assert (one_pass - reference).abs().max().item() <= TOLERANCE
    groups = [8, 8, 2]  # 9 labels (all >= 2 tokens) in groups of 4, 4 and 1, × 2 sources
    assert rows == ([2] + groups if backbone == "causal" else groups) * 3  # 3 chunks of 2 sources


@torch.no_grad()
def test_single_token_labels_without_eos_need_no_continuation():
    model = model_for("causal", "bare")
    counter = _Counter(model)
    config = eval_config("causal", "bare", add_eos=False, batch_size=4)
    score_candidates(model, tiny_tokenizer(), SOURCES, LABELS["single"], config)
    assert counter.calls == 2  # 6 sources in chunks of 4: one prompt forward per chunk, nothing else


@torch.no_grad()
def test_an_empty_label_scores_zero_in_both_paths():
    model = model_for("causal", "adept")
    scores = assert_one_pass_equals_reference(model, ["", "positive"], eval_config("causal", "adept", add_eos=False))
    assert torch.equal(scores[:, 0], torch.zeros(len(SOURCES)))


@torch.no_grad()
def test_predict_rank_agrees_with_the_reference_argmax():
    model, config, tok = model_for("causal", "dept"), eval_config("causal", "dept"), tiny_tokenizer()
    best = score_candidates_reference(model, tok, SOURCES, LABELS["multi"], config).argmax(-1)
    assert predict_rank(model, tok, SOURCES, LABELS["multi"], config) == [LABELS["multi"][i] for i in best.tolist()]


@torch.no_grad()
def test_rows_longer_than_the_dept_length_fail_like_the_reference():
    model, tok = model_for("causal", "dept"), tiny_tokenizer()
    config = EvalConfig(tokenize=eval_config("causal", "dept").tokenize, eval_mode="rank", pad_to_length=10)
    for one_pass in (False, True):
        with pytest.raises(ValueError, match=r"a sequence has \d+ tokens but pad_to_length=10"):
            score_candidates(model, tok, SOURCES, LABELS["multi"], config, one_pass=one_pass)
    unpadded = eval_config("causal", "bare")  # no pad_to_length: the DePT wrapper's own s still binds
    model = get_adept_model(tiny_llama(), AdeptConfig(method="dept", num_virtual_tokens=2, rank=2, max_length=12,
                                                      prompt_init="sample_vocab"))
    for one_pass in (False, True):
        with pytest.raises(ValueError, match=r"DePT input length \d+ exceeds max_length=12"):
            score_candidates(model.eval(), tok, SOURCES, LABELS["multi"], unpadded, one_pass=one_pass)


class _NotAHuggingFaceModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = tiny_llama(seed=4)

    def forward(self, input_ids, attention_mask, labels=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


@torch.no_grad()
def test_other_models_take_the_reference_path():
    model, config, tok = _NotAHuggingFaceModel(), eval_config("causal", "bare"), tiny_tokenizer()
    torch.testing.assert_close(score_candidates(model, tok, SOURCES, LABELS["multi"], config),
                               score_candidates_reference(model, tok, SOURCES, LABELS["multi"], config), rtol=0, atol=0)
    with pytest.raises(ValueError, match="one_pass=True needs an adept model"):
        score_candidates(model, tok, SOURCES, LABELS["multi"], config, one_pass=True)
    with pytest.raises(ValueError, match="one_pass=True needs an adept model"):  # a seq2seq config for a causal model
        score_candidates(tiny_llama(), tok, SOURCES, LABELS["multi"], eval_config("seq2seq", "bare"), one_pass=True)
