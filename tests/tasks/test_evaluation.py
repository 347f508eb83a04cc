"""Greedy-generation and rank-classification evaluation on tiny models and on stub models whose
log-likelihoods are known in closed form."""

import math
from types import SimpleNamespace

import datasets
import pytest
import torch
from pipeline_testutil import word_tokenizer
from tiny import tiny_llama, tiny_t5

from pipeline.core.data import TokenizeConfig
from pipeline.core.evaluation import EvalConfig, evaluate, predict_generate, predict_rank, score_candidates
from pipeline.core.tasks import get_task

# <pad>=0 </s>=1 <unk>=2 <s>=3 sentence:=4 good=5 movie=6 =>=7 positive=8 negative=9 bad=10 plot=11
WORDS = ["sentence: good movie => positive negative bad plot"]
V = 12
SOURCES = ["sentence: good movie", "sentence: bad plot plot bad", "sentence: movie"]
CAUSAL = TokenizeConfig(backbone="causal", max_source_length=16, max_target_length=4, separator="=>")
SEQ2SEQ = TokenizeConfig(backbone="seq2seq", max_source_length=16, max_target_length=4)


class StubLM(torch.nn.Module):
    """Logits independent of the input: token 8 ("positive") gets 2.0, every other token 0.

    ``generate`` appends ``new_tokens`` (causal: after the prompt, like HF) and records its kwargs.
    """

    def __init__(self, new_tokens=(8, 1, 0), causal=True):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new_tokens, self.causal, self.calls = list(new_tokens), causal, []

    def forward(self, input_ids, attention_mask=None, labels=None):
        length = input_ids.shape[1] if self.causal else labels.shape[1]
        logits = torch.zeros(input_ids.shape[0], length, V)
        logits[..., 8] = 2.0
        return SimpleNamespace(logits=logits)

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.calls.append({"shape": tuple(input_ids.shape), "max_new_tokens": max_new_tokens, **kwargs})
        new = torch.tensor(self.new_tokens).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new], 1) if self.causal else torch.cat([torch.zeros_like(new[:, :1]), new], 1)


def test_rank_scores_match_closed_form():
    lse = math.log(math.exp(2.0) + V - 1)
    for causal, cfg in ((True, CAUSAL), (False, SEQ2SEQ)):
        layout = "llama" if causal else "t5"
        scores = score_candidates(StubLM(causal=causal), word_tokenizer(WORDS, layout), SOURCES, ["positive", "negative"], EvalConfig(tokenize=cfg, batch_size=4))
        # both candidates end with </s>: positive = (2 - lse) + (0 - lse), negative = 2 · (0 - lse)
        expected = torch.tensor([[2 - 2 * lse, -2 * lse]] * 3)
        torch.testing.assert_close(scores, expected)


def manual_causal_scores(model, tok, sources, candidates, offset=0):
    """One unpadded sequence at a time; logits[:, offset:] drops soft-prompt positions."""
    out = torch.zeros(len(sources), len(candidates))
    for i, s in enumerate(sources):
        prompt = tok(s + " =>")["input_ids"]
        for j, c in enumerate(candidates):
            target = tok(c, add_special_tokens=False)["input_ids"] + [1]
            ids = torch.tensor([prompt + target])
            logp = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, offset:].log_softmax(-1)
            out[i, j] = sum(logp[len(prompt) + k - 1, t] for k, t in enumerate(target))
    return out


@torch.no_grad()
def test_causal_rank_batched_equals_unbatched_on_tiny_llama():
    tok, model = word_tokenizer(WORDS, "llama"), tiny_llama(vocab_size=V, seed=1)
    cands = ["positive", "negative", "bad plot"]  # different lengths → padded rows
    batched = score_candidates(model, tok, SOURCES, cands, EvalConfig(tokenize=CAUSAL, batch_size=4))
    torch.testing.assert_close(batched, manual_causal_scores(model, tok, SOURCES, cands), rtol=1e-4, atol=1e-4)
    preds = predict_rank(model, tok, SOURCES, cands, EvalConfig(tokenize=CAUSAL, batch_size=2))
    assert preds == [cands[i] for i in batched.argmax(-1).tolist()]


class SoftPromptWrapper(torch.nn.Module):
    """Like the ADePT wrapper: m trainable vectors before the token embeddings → logits (B, m + L, V)."""

    def __init__(self, base, m=3):
        super().__init__()
        self.base, self.m = base, m
        self.prompt = torch.nn.Parameter(torch.randn(m, base.config.hidden_size, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, attention_mask, labels=None):
        embeds = self.base.get_input_embeddings()(input_ids)
        embeds = torch.cat([self.prompt.expand(len(input_ids), -1, -1), embeds], 1)
        mask = torch.cat([torch.ones(len(input_ids), self.m, dtype=attention_mask.dtype), attention_mask], 1)
        return self.base(inputs_embeds=embeds, attention_mask=mask)


@torch.no_grad()
def test_rank_uses_the_last_L_logits_with_a_soft_prompt_wrapper():
    tok, base = word_tokenizer(WORDS, "llama"), tiny_llama(vocab_size=V, seed=1)
    wrapped = SoftPromptWrapper(base)
    cands = ["positive", "negative"]
    scores = score_candidates(wrapped, tok, SOURCES, cands, EvalConfig(tokenize=CAUSAL, batch_size=3))
    torch.testing.assert_close(scores, manual_causal_scores(wrapped, tok, SOURCES, cands, offset=3), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(scores, manual_causal_scores(base, tok, SOURCES, cands), atol=1e-3)  # the prompt matters


@torch.no_grad()
def test_seq2seq_rank_batched_equals_unbatched_on_tiny_t5():
    tok, model = word_tokenizer(WORDS, "t5"), tiny_t5(vocab_size=V, seed=2)
    cands = ["positive", "bad plot"]
    batched = score_candidates(model, tok, SOURCES, cands, EvalConfig(tokenize=SEQ2SEQ, batch_size=3))
    for i, s in enumerate(SOURCES):
        for j, c in enumerate(cands):
            ids, labels = torch.tensor([tok(s)["input_ids"]]), torch.tensor([tok(c)["input_ids"]])
            logp = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).logits[0].log_softmax(-1)
            assert batched[i, j].item() == pytest.approx(logp.gather(-1, labels[0, :, None]).sum().item(), abs=1e-4)


@torch.no_grad()
def test_batched_left_padded_generation_equals_one_by_one():
    tok = word_tokenizer(WORDS, "llama")
    model = tiny_llama(vocab_size=V, seed=3)
    cfg = EvalConfig(tokenize=CAUSAL, batch_size=3, stop_at=None)
    batched = predict_generate(model, tok, SOURCES, cfg, max_new_tokens=4)
    single = [predict_generate(model, tok, [s], cfg, max_new_tokens=4)[0] for s in SOURCES]
    assert batched == single and any(batched)
    t5_tok, t5 = word_tokenizer(WORDS, "t5"), tiny_t5(vocab_size=V, seed=3)
    cfg = EvalConfig(tokenize=SEQ2SEQ, batch_size=3)
    assert predict_generate(t5, t5_tok, SOURCES, cfg, 4) == [predict_generate(t5, t5_tok, [s], cfg, 4)[0] for s in SOURCES]


def test_generate_decoding_stop_at_and_kwargs():
    stub = StubLM(new_tokens=(8, 7, 9))  # "positive => negative"
    cfg = EvalConfig(tokenize=CAUSAL, stop_at="=>", pad_to_length=8)
    assert predict_generate(stub, word_tokenizer(WORDS, "llama"), SOURCES[:2], cfg, 3) == ["positive", "positive"]
    assert stub.calls[0] == {"shape": (2, 8), "max_new_tokens": 3, "do_sample": False, "num_beams": 1, "pad_token_id": 0}
    seq2seq = StubLM(new_tokens=(9, 1, 0), causal=False)
    assert predict_generate(seq2seq, word_tokenizer(WORDS, "t5"), SOURCES, EvalConfig(tokenize=SEQ2SEQ), 3) == ["negative"] * 3


def movie_rows():
    return datasets.Dataset.from_list([{"source": s, "target": t, "answers": [t], "group": -1}
                                       for s, t in zip(SOURCES + ["sentence: bad"], ["positive", "negative", "positive", "negative"], strict=True)])


@pytest.mark.parametrize("mode", ["rank", "generate"])
def test_evaluate_end_to_end_with_known_metrics(mode):
    stub = StubLM(new_tokens=(8, 1, 0))  # always "positive", in both modes
    stub.train()
    result = evaluate(stub, word_tokenizer(WORDS, "llama"), get_task("movie-sentiment"), movie_rows(), EvalConfig(tokenize=CAUSAL, eval_mode=mode))
    # refs + - + -, predictions all +: accuracy 2/4; F1: TP 2, FP 2 → 2/3
    assert result.metrics == pytest.approx({"accuracy": 50.0, "f1": 200 / 3})
    assert result.score == 50.0 and result.predictions == ["positive"] * 4
    assert result.table()["reference"] == ["positive", "negative", "positive", "negative"]
    assert stub.training  # mode restored
    if mode == "generate":
        assert stub.calls[0]["max_new_tokens"] == 20  # the task default (reference: max_length 20)


def test_evaluate_generation_task_uses_all_gold_answers():
    stub = StubLM(new_tokens=(9, 1, 0), causal=False)  # "negative"
    rows = datasets.Dataset.from_list([{"source": "sentence: movie", "target": "good", "answers": ["good", "negative"], "group": -1}])
    result = evaluate(stub, word_tokenizer(WORDS, "t5"), get_task("nq"), rows, EvalConfig(tokenize=SEQ2SEQ, max_new_tokens=5))
    assert result.metrics == {"squad_em": 100.0, "squad_f1": 100.0} and result.table()["reference"] == ["good | negative"]
    with pytest.raises(ValueError, match="eval_mode='rank' needs label strings, but task 'nq' \\(generation\\) has none"):
        evaluate(stub, word_tokenizer(WORDS, "t5"), get_task("nq"), rows, EvalConfig(tokenize=SEQ2SEQ, eval_mode="rank"))


def test_eval_config_errors():
    with pytest.raises(ValueError, match="eval_mode='beam'"):
        EvalConfig(tokenize=CAUSAL, eval_mode="beam")
    with pytest.raises(ValueError, match="batch_size=0"):
        EvalConfig(tokenize=CAUSAL, batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        EvalConfig(tokenize=CAUSAL, max_new_tokens=0)
