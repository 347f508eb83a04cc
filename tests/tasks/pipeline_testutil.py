"""Helpers shared by the pipeline tests (importable because pytest puts this folder on sys.path)."""

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "</s>", "<unk>", "<s>"]  # ids 0, 1, 2, 3


def word_tokenizer(texts, layout: str = "none") -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over every word in ``texts``; ids follow first appearance from 4.

    layout: "t5" appends </s> to each sequence, "llama" prepends <s>, "none" adds nothing.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for text in texts:
        for word in text.split():
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if layout == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    elif layout == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )
