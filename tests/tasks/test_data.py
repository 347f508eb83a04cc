"""Tokenisation and collators with a word-level tokenizer, so every id is known by hand.

Vocabulary: <pad>=0 </s>=1 <unk>=2 <s>=3 sentence:=4 good=5 movie=6 =>=7 positive=8 negative=9.
"""

import logging

import datasets
import pytest
import torch
from pipeline_testutil import word_tokenizer

from pipeline.core.data import (
    CausalCollator,
    Encoder,
    Seq2SeqCollator,
    TokenizeConfig,
    fixed_length,
    make_collator,
    pad_token_id,
    special_token_layout,
    tokenize_dataset,
)

WORDS = ["sentence: good movie => positive negative"]
ROWS = datasets.Dataset.from_list([
    {"source": "sentence: good movie", "target": "positive"},
    {"source": "sentence: good movie good", "target": "positive negative positive"},
])


def test_special_token_layouts():
    assert special_token_layout(word_tokenizer(WORDS, "t5")) == ([], [1])
    assert special_token_layout(word_tokenizer(WORDS, "llama")) == ([3], [])
    assert special_token_layout(word_tokenizer(WORDS, "none")) == ([], [])


def test_seq2seq_tokenisation_and_truncation_report():
    cfg = TokenizeConfig(backbone="seq2seq", max_source_length=4, max_target_length=3)
    out, report = tokenize_dataset(ROWS, word_tokenizer(WORDS, "t5"), cfg, "train")
    assert out["input_ids"] == [[4, 5, 6, 1], [4, 5, 6, 1]]  # 2nd source cut, </s> kept
    assert out["labels"] == [[8, 1], [8, 9, 1]]  # 2nd target cut to 3 incl. </s>
    assert (report.total, report.source_truncated, report.target_truncated) == (2, 1, 1)
    assert (report.longest_source, report.longest_target) == (5, 4)
    assert report.message() == "train: 1/2 sources truncated (longest 5 tokens), 1/2 targets truncated (longest 4 tokens)"
    assert out.column_names == ["source", "target", "input_ids", "labels"]


def test_causal_tokenisation_masks_the_prompt():
    cfg = TokenizeConfig(backbone="causal", max_source_length=5, max_target_length=3, separator="=>")
    out, report = tokenize_dataset(ROWS, word_tokenizer(WORDS, "llama"), cfg)
    # prompt = <s> + source (budget 5 - 1 - 1 = 3 tokens) + "=>"; target + </s>
    assert out["input_ids"] == [[3, 4, 5, 6, 7, 8, 1], [3, 4, 5, 6, 7, 8, 9, 1]]
    assert out["labels"] == [[-100] * 5 + [8, 1], [-100] * 5 + [8, 9, 1]]
    assert (report.source_truncated, report.target_truncated) == (1, 1)
    assert fixed_length(cfg) == 8 and fixed_length(TokenizeConfig(backbone="seq2seq", max_source_length=5)) == 5


def test_causal_prompt_is_identical_for_training_and_evaluation():
    cfg = TokenizeConfig(backbone="causal", max_source_length=8, separator="=>")
    enc = Encoder(word_tokenizer(WORDS, "llama"), cfg)
    prompts, _ = enc.sources(["sentence: good movie"])
    full = enc.encode(["sentence: good movie"], ["negative"])
    assert full["input_ids"][0][: len(prompts[0])] == prompts[0] == [3, 4, 5, 6, 7]


def test_seq2seq_collator_dynamic_and_fixed_padding():
    feats = [{"input_ids": [4, 5, 1], "labels": [8, 1], "source": "ignored"}, {"input_ids": [4, 1], "labels": [9, 8, 1]}]
    batch = Seq2SeqCollator(pad_token_id=0)(feats)
    assert batch["input_ids"].tolist() == [[4, 5, 1], [4, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[8, 1, -100], [9, 8, 1]]
    fixed = Seq2SeqCollator(pad_token_id=0, pad_to_length=5)(feats)  # DePT: always s
    assert fixed["input_ids"].shape == (2, 5) and fixed["attention_mask"].sum().item() == 5
    assert fixed["labels"].shape == (2, 3)  # targets stay dynamic
    with pytest.raises(ValueError, match="a sequence has 3 tokens but pad_to_length=2"):
        Seq2SeqCollator(pad_token_id=0, pad_to_length=2)(feats)


def test_causal_collator_right_and_left_padding():
    feats = [{"input_ids": [3, 4, 8], "labels": [-100, -100, 8]}, {"input_ids": [3, 9], "labels": [-100, 9]}]
    right = CausalCollator(pad_token_id=0)(feats)
    assert right["input_ids"].tolist() == [[3, 4, 8], [3, 9, 0]]
    assert right["labels"].tolist() == [[-100, -100, 8], [-100, 9, -100]]
    left = CausalCollator(pad_token_id=0, padding_side="left", pad_to_length=4)(feats)
    assert left["input_ids"].tolist() == [[0, 3, 4, 8], [0, 0, 3, 9]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    assert left["labels"].tolist() == [[-100, -100, -100, 8], [-100, -100, -100, 9]]
    assert left["input_ids"].dtype == torch.long


def test_make_collator_and_pad_token_errors():
    tok = word_tokenizer(WORDS, "llama")
    causal = make_collator(tok, TokenizeConfig(backbone="causal"))
    seq2seq = make_collator(tok, TokenizeConfig(backbone="seq2seq"), pad_to_length=8)
    assert causal == CausalCollator(pad_token_id=0, padding_side="right", pad_to_length=None)  # type and fields
    assert seq2seq == Seq2SeqCollator(pad_token_id=0, pad_to_length=8)
    feats = [{"input_ids": [3, 4, 8], "labels": [-100, -100, 8]}, {"input_ids": [3, 9], "labels": [-100, 9]}]
    assert causal(feats)["input_ids"].tolist() == [[3, 4, 8], [3, 9, 0]]
    assert causal(feats)["labels"].tolist() == [[-100, -100, 8], [-100, 9, -100]]
    assert seq2seq(feats)["input_ids"].tolist() == [[3, 4, 8, 0, 0, 0, 0, 0], [3, 9, 0, 0, 0, 0, 0, 0]]
    assert seq2seq(feats)["labels"].tolist() == [[-100, -100, 8], [-100, 9, -100]]  # targets stay dynamic
    tok.pad_token = "</s>"  # the tokenizer's own pad id (1 here) is what the collator pads with
    left = make_collator(tok, TokenizeConfig(backbone="causal"), padding_side="left")
    assert left == CausalCollator(pad_token_id=1, padding_side="left")
    assert left(feats)["input_ids"].tolist() == [[3, 4, 8], [1, 3, 9]]
    assert left(feats)["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    tok.pad_token = None
    with pytest.raises(ValueError, match="tokenizer has no pad token; set one first, e.g. tokenizer.pad_token = tokenizer.eos_token"):
        pad_token_id(tok)


def test_config_errors():
    with pytest.raises(ValueError, match="backbone='decoder'"):
        TokenizeConfig(backbone="decoder")
    with pytest.raises(ValueError, match="max_source_length=1"):
        TokenizeConfig(backbone="seq2seq", max_source_length=1)
    with pytest.raises(ValueError, match="leaves no room for source tokens"):
        Encoder(word_tokenizer(WORDS, "llama"), TokenizeConfig(backbone="causal", max_source_length=2, separator="=>"))


def test_empty_separator_is_reported(caplog, monkeypatch):
    monkeypatch.setattr("pipeline.core.data._WARNED", set())  # said once per process: an earlier test may have said it
    with caplog.at_level(logging.WARNING, logger="pipeline.core.data"):
        Encoder(word_tokenizer(WORDS, "llama"), TokenizeConfig(backbone="causal", separator="\n"))
    assert "tokenises to no tokens" in caplog.text
