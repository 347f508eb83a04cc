"""`AdeptModel.forward(loss_only=True)`: the causal LM head only at labelled positions gives the same loss and
the same adapter gradients as the full forward; other backbones fall back; the training engines use it."""

import pytest
import torch
from tiny import tiny_llama, tiny_t5, tiny_tokenizer
from transformers import Gemma2Config, Gemma2ForCausalLM, get_linear_schedule_with_warmup

from adept import AdeptConfig, get_adept_model
from adept.model import IGNORE_INDEX, labelled_head_supported
from pipeline.core.config import TrainConfig
from pipeline.worker.engine import DDPTrainEngine

pytestmark = pytest.mark.speed

METHODS = {
    "adept": dict(method="adept", ffn_hidden_size=3, ffn_dropout=0.1),  # dropout on: the test runs in train mode
    "dept": dict(method="dept", rank=2, max_length=16),
    "prompt": dict(method="prompt"),
}
PROMPTS = ["good movie :", "the film is not good or bad , the acting is awful :", "great plot :"]
TARGETS = ["positive", "negative", "yes no true"]


def causal_batch(pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded prompt + target + EOS rows of different lengths; labels -100 on prompt and padding."""
    tok = tiny_tokenizer()
    rows, labels = [], []
    for prompt, target in zip(PROMPTS, TARGETS, strict=True):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(p + t)
        labels.append([IGNORE_INDEX] * len(p) + t)
    length = pad_to or max(map(len, rows))
    pad = [length - len(r) for r in rows]
    return {
        "input_ids": torch.tensor([r + [0] * n for r, n in zip(rows, pad, strict=True)]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * n for r, n in zip(rows, pad, strict=True)]),
        "labels": torch.tensor([r + [IGNORE_INDEX] * n for r, n in zip(labels, pad, strict=True)]),
    }


def wrapped(backbone, method: str):
    model = get_adept_model(backbone, AdeptConfig(num_virtual_tokens=4, prompt_init="sample_vocab", **METHODS[method]))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.adapter_named_parameters():
            if not name.startswith("prompt."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.train()


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # the same dropout mask in both paths
    out = model(**batch, **kwargs)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.adapter_named_parameters()}


def assert_same(model, batch, **kwargs):
    full, full_grads = loss_and_grads(model, batch, **kwargs)
    fast, fast_grads = loss_and_grads(model, batch, loss_only=True, **kwargs)
    assert fast.logits is None and full.logits is not None
    assert abs(fast.loss.item() - full.loss.item()) <= 1e-5
    assert full_grads.keys() == fast_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return full.loss


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_loss_and_adapter_gradients_match_the_full_forward(method, tie):
    model = wrapped(tiny_llama(tie=tie), method)
    batch = causal_batch(pad_to=16 if method == "dept" else None)  # DePT: every input padded to s
    rows = []
    model.base_model.get_output_embeddings().register_forward_hook(lambda mod, args, out: rows.append(args[0].shape))
    assert_same(model, batch)
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    full_positions = batch["input_ids"].numel() + 4 * len(PROMPTS)
    assert rows == [(len(PROMPTS), full_positions // len(PROMPTS), 32), (labelled, 32)]  # full, then labelled only


def test_num_items_in_batch_is_honoured():
    model, batch = wrapped(tiny_llama(), "adept").eval(), causal_batch()
    summed = assert_same(model, batch, num_items_in_batch=torch.tensor(5))  # sum / 5 in both paths
    labelled = int((batch["labels"] != IGNORE_INDEX).sum())
    mean = model(**batch, loss_only=True).loss
    assert summed.item() == pytest.approx(mean.item() * labelled / 5, rel=1e-5)


def test_final_logit_softcapping_is_kept():
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=3.0,
                       pad_token_id=0, eos_token_id=1, bos_token_id=2, initializer_range=0.2)
    backbone = Gemma2ForCausalLM(cfg).eval()
    assert labelled_head_supported(backbone)
    assert_same(wrapped(backbone, "adept"), causal_batch())


def test_custom_loss_functions_and_seq2seq_take_the_full_path():
    backbone = tiny_llama()
    backbone.loss_function = lambda logits, labels, vocab_size, **kw: logits.float().logsumexp(-1).mean()
    assert not labelled_head_supported(backbone)
    assert_same(wrapped(backbone, "prompt"), causal_batch())

    t5 = wrapped(tiny_t5(), "adept")
    assert not labelled_head_supported(t5.base_model)
    batch = causal_batch()
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
             "labels": torch.tensor([[5, 6, 1], [7, 1, IGNORE_INDEX], [8, 9, 1]])}
    assert_same(t5, batch)


def test_loss_only_needs_labels():
    model, batch = wrapped(tiny_llama(), "adept"), causal_batch()
    batch.pop("labels")
    with pytest.raises(ValueError, match="loss_only=True\\) needs labels"):
        model(**batch, loss_only=True)


def test_the_ddp_engine_trains_with_loss_only():
    cfg = TrainConfig(r=3, num_virtual_tokens=2, grad_accum=1, batch_size=3, warmup_steps=0, max_steps=2,
                      eval_steps=2, deepspeed=False)
    model = get_adept_model(tiny_llama(), AdeptConfig(num_virtual_tokens=2, ffn_hidden_size=3, prompt_init="sample_vocab"))
    optimizer = torch.optim.AdamW(model.parameter_groups(0.3, 0.01))
    engine = DDPTrainEngine(cfg, model, optimizer, get_linear_schedule_with_warmup(optimizer, 0, 2),
                            torch.device("cpu"), world=1)
    seen = []
    forward = model.forward
    model.forward = lambda **kw: seen.append(kw.get("loss_only")) or forward(**kw)
    loss, stepped = engine.train_micro_batch(causal_batch())
    assert seen == [True] and stepped and loss > 0
